"""Training loop: AdamW + warmup/cosine, bf16 autocast on CPU, layer dropout and
early-exit loss (recipe.py), wall-clock budget, resumable checkpoints, and a
Hugging Face style output directory.

Schedules and budget. With `steps`, training progress is t / T and every
schedule (cosine LR, the exp layer-dropout curriculum S(t), the gradual
early-exit curriculum) is the paper's function of the step: fully
deterministic. With only `minutes`, progress is the fraction of the wall-clock
budget spent (kept across --resume): the schedules are the same functions of
progress, evaluated on a virtual axis of PROGRESS_STEPS steps, and training
stops when the budget is spent. We chose this over fixing T from the first
steps' pace because the machine is shared: a T estimated under load would end
the run early when the load drops (or stop before the LR has decayed when it
rises), while progress-by-time always ends the cosine exactly at the budget.
The price is that a --minutes run is not bit-reproducible (how many steps fit
depends on the machine); use --steps for that. The rotational curriculum
always uses the real step.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from ..vocab import save_frequencies
from ..model import LlamaConfig, LlamaForCausalLM
from . import data, recipe

__all__ = ["TrainConfig", "train", "save_pretrained", "init_weights", "WarmupCosine", "CHECKPOINT_MOMENTS"]

CHECKPOINT_MOMENTS = ("fp32", "bf16")  # dtypes of Adam's moments in a checkpoint

# --threads beyond this only oversubscribes the CPUs (and each thread's buffers cost memory).
MAX_THREADS = 4 * (os.cpu_count() or 1)


@dataclass
class TrainConfig:
    corpus: str = field(default_factory=data.default_corpus)
    out: str = "runs/model"
    checkpoint_dir: str | None = None  # default: <out>/checkpoint
    log_csv: str | None = None  # default: <checkpoint_dir>/train_log.csv
    tokenizer: str | None = None  # reuse a tokenizer.json instead of training one
    # model
    layers: int = 8
    hidden: int = 256
    intermediate: int = 768
    heads: int = 8
    kv_heads: int = 2
    vocab_size: int = 4096
    seq_len: int = 512
    # optimisation
    batch_size: int = 4
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    warmup_steps: int = 50
    grad_clip: float = 1.0
    # LayerSkip recipe
    layerskip: bool = True
    p_max: float = 0.2
    dropout_schedule: str = "exp"
    e_scale: float = 1.0
    exit_weighting: str = "paper"
    exit_distill: float = 0.0
    draft_exit: int | None = None
    draft_exit_scale: float | None = None
    curriculum: str = "rotational"
    rotation: int = 2
    # budget and bookkeeping
    minutes: float | None = 50.0
    steps: int | None = None
    stop_at_step: int | None = None
    threads: int | None = None
    seed: int = 0
    resume: bool = False
    save_every_min: float = 5.0
    # "bf16": Adam's moments are saved in bf16 (8 bytes a parameter instead of 12, so a
    # 10 M-parameter checkpoint stays under git hosts' 100 MB file limit and can be
    # committed); resuming casts them back, so the run is no longer bit-reproducible.
    checkpoint_moments: str = "fp32"
    eval_every: int = 100
    eval_batches: int = 2
    autocast: bool = True
    progress: bool = True

    def __post_init__(self):
        self.checkpoint_dir = self.checkpoint_dir or os.path.join(self.out, "checkpoint")
        self.log_csv = self.log_csv or os.path.join(self.checkpoint_dir, "train_log.csv")

    def validate(self) -> None:
        """Raise ValueError naming the bad option; called before any work."""
        ints = {
            "layers": (self.layers, 2), "hidden": (self.hidden, 2), "intermediate": (self.intermediate, 1),
            "heads": (self.heads, 1), "kv_heads": (self.kv_heads, 1), "seq_len": (self.seq_len, 2),
            "batch_size": (self.batch_size, 1), "rotation": (self.rotation, 1),
            "warmup_steps": (self.warmup_steps, 0),
            "eval_every": (self.eval_every, 1), "eval_batches": (self.eval_batches, 1),
        }
        for name, (value, low) in ints.items():
            if not isinstance(value, int) or value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        if self.vocab_size < 257:
            raise ValueError(f"--vocab-size must be >= 257 (256 bytes + eos), got {self.vocab_size}")
        if self.hidden % self.heads:
            raise ValueError(f"--hidden ({self.hidden}) must be a multiple of --heads ({self.heads})")
        if (self.hidden // self.heads) % 2:
            raise ValueError(f"head dim --hidden/--heads = {self.hidden // self.heads} must be even (RoPE)")
        if self.heads % self.kv_heads:
            raise ValueError(f"--heads ({self.heads}) must be a multiple of --kv-heads ({self.kv_heads})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.checkpoint_moments not in CHECKPOINT_MOMENTS:
            raise ValueError(f"--checkpoint-moments must be one of {CHECKPOINT_MOMENTS}, got {self.checkpoint_moments!r}")
        if not 0.0 <= self.p_max < 1.0:
            raise ValueError(f"--p-max must be in [0, 1), got {self.p_max}")
        if not (self.e_scale >= 0 and math.isfinite(self.e_scale)):
            raise ValueError(f"--e-scale must be >= 0, got {self.e_scale}")
        if self.exit_weighting not in recipe.EXIT_WEIGHTINGS:
            raise ValueError(f"--exit-weighting must be one of {recipe.EXIT_WEIGHTINGS}, got {self.exit_weighting!r}")
        if not 0.0 <= self.exit_distill <= 1.0:
            raise ValueError(f"--exit-distill must be in [0, 1], got {self.exit_distill}")
        if self.draft_exit is not None and not (isinstance(self.draft_exit, int) and 1 <= self.draft_exit < self.layers):
            raise ValueError(f"--draft-exit must be an integer in [1, {self.layers - 1}], got {self.draft_exit!r}")
        if self.draft_exit_scale is not None and not (self.draft_exit_scale >= 0 and math.isfinite(self.draft_exit_scale)):
            raise ValueError(f"--draft-exit-scale must be a finite number >= 0, got {self.draft_exit_scale}")
        if self.curriculum not in recipe.CURRICULA:
            raise ValueError(f"--curriculum must be one of {recipe.CURRICULA}, got {self.curriculum!r}")
        if self.dropout_schedule not in recipe.DROPOUT_SCHEDULES:
            raise ValueError(
                f"--dropout-schedule must be one of {recipe.DROPOUT_SCHEDULES}, got {self.dropout_schedule!r}"
            )
        if self.steps is None and self.minutes is None:
            raise ValueError("give --minutes or --steps")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"--steps must be an integer >= 1, got {self.steps!r}")
        if self.minutes is not None and not (self.minutes > 0 and math.isfinite(self.minutes)):
            raise ValueError(f"--minutes must be > 0, got {self.minutes}")
        if self.stop_at_step is not None and (not isinstance(self.stop_at_step, int) or self.stop_at_step < 1):
            raise ValueError(f"--stop-at-step must be an integer >= 1, got {self.stop_at_step!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or not 1 <= self.threads <= MAX_THREADS):
            raise ValueError(f"--threads must be an integer in [1, {MAX_THREADS}] (4 x this machine's "
                             f"{os.cpu_count()} CPUs), got {self.threads!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63 - 1:
            raise ValueError(f"--seed must be an integer in [0, 2^63 - 1), got {self.seed!r}")

    def model_config(self, bos: int, eos: int) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=self.layers, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
            max_position_embeddings=self.seq_len, rms_norm_eps=1e-5, rope_theta=10000.0,
            tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos,
        )

    def recipe_dict(self) -> dict:
        """The hyper-parameters stored under "layerskip" in config.json."""
        keys = ("layerskip", "p_max", "dropout_schedule", "e_scale", "exit_weighting", "exit_distill", "draft_exit",
                "draft_exit_scale", "curriculum", "rotation", "lr",
                "min_lr_ratio", "weight_decay", "warmup_steps", "grad_clip", "batch_size", "seq_len", "seed",
                "minutes")
        d = {k: getattr(self, k) for k in keys}
        if not self.layerskip:
            d.update(p_max=0.0, curriculum="last-layer-only", exit_distill=0.0, draft_exit=None,
                     draft_exit_scale=None)
        return d


# --------------------------------------------------------------------------- helpers


PROGRESS_STEPS = 10_000


class WarmupCosine:
    """LR multiplier: linear warmup over `warmup` steps, then cosine from 1 down
    to `floor`, at step `total` or, when total is None, when `progress` (the
    budget fraction the trainer sets before each step) reaches 1. A plain
    object (not a closure) so LambdaLR saves and restores its attributes."""

    def __init__(self, warmup: int, total: int | None, floor: float):
        self.warmup, self.total, self.floor = warmup, total, floor
        self.progress = 0.0
        self.warmup_progress = None  # progress when warmup ended (time mode)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.total is not None:
            frac = (step - self.warmup) / max(self.total - self.warmup, 1)
        else:
            if self.warmup_progress is None:
                self.warmup_progress = self.progress
            w = self.warmup_progress
            frac = (self.progress - w) / max(1.0 - w, 1e-9)
        frac = min(max(frac, 0.0), 1.0)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * frac))


def init_weights(model: LlamaForCausalLM, std: float = 0.02) -> None:
    """GPT-2 style init: N(0, std), residual-output projections scaled by
    1/sqrt(2L) so the residual stream does not grow with depth; norms at 1.
    (nn.Embedding's default N(0, 1) would give huge logits through the tied head.)"""
    L = model.num_layers
    for name, p in model.named_parameters():
        if p.dim() == 1:
            nn.init.ones_(p)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            nn.init.normal_(p, 0.0, std / math.sqrt(2 * L))
        else:
            nn.init.normal_(p, 0.0, std)


def save_pretrained(model: LlamaForCausalLM, tokenizer, out_dir: str, extra: dict | None = None) -> None:
    """Hugging Face style directory: config.json, model.safetensors (bf16, tied
    weight once), tokenizer.json, tokenizer_config.json, generation_config.json."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    cfg = model.config
    d = cfg.to_dict()
    d["torch_dtype"] = "bfloat16"
    d["dtype"] = "bfloat16"
    if extra:
        d.update(extra)
    tensors = {}
    for name, t in model.state_dict().items():
        if cfg.tie_word_embeddings and name == "lm_head.weight":
            continue
        tensors[name] = t.detach().to(torch.bfloat16).contiguous()
    # Write to temporary names and rename: a run killed mid-save leaves the last good model.
    tmp = os.path.join(out_dir, ".model.safetensors.tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # safetensors writes 0600; a shipped model must be readable by all
    os.replace(tmp, os.path.join(out_dir, "model.safetensors"))
    _write_json(os.path.join(out_dir, "config.json"), d)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    eos = data.EOS_TOKEN
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": eos, "eos_token": eos,
        "unk_token": None, "pad_token": None, "model_max_length": cfg.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
    })
    _write_json(os.path.join(out_dir, "generation_config.json"), {
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "do_sample": False,
    })


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _check_writable(path: str, what: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"{what} {path!r} cannot be created: {e.strerror}") from None
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path!r} is not a writable directory")


def _param_groups(model: nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------- data


def prepare_data(cfg: TrainConfig, log=print):
    """(tokenizer, train tokens, held-out tokens). Raises before any training on bad corpora."""
    rels = data.list_corpus_files(cfg.corpus)
    train_rels, held_rels = data.split_files(rels)
    if not train_rels:
        raise ValueError(f"corpus {cfg.corpus}: every .py file fell in the held-out split; add more files")
    train_texts = data.read_texts(cfg.corpus, train_rels)
    if cfg.tokenizer:
        tok = data.load_tokenizer(cfg.tokenizer)
        if tok.get_vocab_size() != cfg.vocab_size:
            raise ValueError(f"--tokenizer has {tok.get_vocab_size()} tokens but --vocab-size is {cfg.vocab_size}")
    else:
        tok = data.train_tokenizer(train_texts, cfg.vocab_size)
        if tok.get_vocab_size() != cfg.vocab_size:
            # A tiny corpus runs out of merges; the model must match the real vocabulary.
            log(f"tokenizer: corpus only supports {tok.get_vocab_size()} tokens (asked {cfg.vocab_size})")
            cfg.vocab_size = tok.get_vocab_size()
    train_ids = data.encode_files(tok, train_texts)
    # A tiny corpus may have no held-out file: validate on the training stream then.
    held_ids = data.encode_files(tok, data.read_texts(cfg.corpus, held_rels)) if held_rels else train_ids
    log(f"corpus {cfg.corpus}: {len(train_rels)} train / {len(held_rels)} held-out files, "
        f"{train_ids.numel():,} / {held_ids.numel():,} tokens, vocab {tok.get_vocab_size()}")
    return tok, train_ids, held_ids


# --------------------------------------------------------------------------- training


def _rng_state(gens: dict) -> dict:
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        **{k: g.get_state() for k, g in gens.items()},
    }


def _set_rng_state(state: dict, gens: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    for k, g in gens.items():
        g.set_state(state[k])


@torch.no_grad()
def _validate(model, cfg, stream, n_batches):
    """Per-layer held-out CE on fixed batches (the same ones every time)."""
    gen = torch.Generator().manual_seed(1234)
    sums = torch.zeros(model.num_layers, dtype=torch.float64)
    for _ in range(n_batches):
        batch = stream.batch(cfg.batch_size, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast):
            hidden = model.forward_train(batch[:, :-1], return_hidden=True)
            for l, h in enumerate(hidden):
                logits = model.exit_head(h).float()
                sums[l] += torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)).item()
    return (sums / n_batches).tolist()


def _optimizer_state(opt: torch.optim.Optimizer, moments: str) -> dict:
    """opt.state_dict(), with Adam's moments cast to bf16 when `moments` is "bf16".
    Optimizer.load_state_dict casts floating-point state back to the parameter's dtype."""
    sd = opt.state_dict()
    if moments == "bf16":
        sd["state"] = {i: {k: v.to(torch.bfloat16) if k in ("exp_avg", "exp_avg_sq") else v for k, v in st.items()}
                       for i, st in sd["state"].items()}
    return sd


def train(cfg: TrainConfig, log=print, should_stop=None) -> dict:
    """Train per `cfg`; returns a summary dict. Writes the model to cfg.out.

    should_stop: optional callable, asked before every step; when it returns True the
    run ends there as if its budget were spent (checkpoint and model written, no extra
    evaluation row), so `--resume` continues exactly where it stopped. The CLI wires
    SIGTERM/SIGINT to it.
    """
    cfg.validate()
    data.list_corpus_files(cfg.corpus)  # a missing or empty corpus fails before anything is created
    _check_writable(cfg.out, "output directory")
    _check_writable(cfg.checkpoint_dir, "checkpoint directory")
    _check_writable(os.path.dirname(os.path.abspath(cfg.log_csv)), "log directory")
    ckpt_path = os.path.join(cfg.checkpoint_dir, "checkpoint.pt")
    state = None
    if cfg.resume:
        if not os.path.isfile(ckpt_path):
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        try:
            state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            saved = state["train_config"]
            missing = [k for k in ("layers", "hidden", "intermediate", "heads", "kv_heads", "seq_len", "layerskip",
                                   "vocab_size") if k not in saved]
            if missing:
                raise KeyError(f"train_config lacks {missing}")
        except Exception as e:  # a truncated, foreign or corrupt file: pickle, zip or key errors
            raise ValueError(f"--resume: {ckpt_path} is not a readable training checkpoint "
                             f"({type(e).__name__}: {e})") from None
        # The model and recipe must match the checkpoint; budget/bookkeeping may change.
        for k in ("layers", "hidden", "intermediate", "heads", "kv_heads", "seq_len", "layerskip"):
            if saved[k] != getattr(cfg, k):
                raise ValueError(f"--resume: checkpoint has {k}={saved[k]!r}, command line says {getattr(cfg, k)!r}")
        cfg.vocab_size = saved["vocab_size"]
        if cfg.tokenizer is None:
            cfg.tokenizer = os.path.join(cfg.checkpoint_dir, "tokenizer.json")

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tok, train_ids, held_ids = prepare_data(cfg, log)
    # Recorded with the model for a reduced draft vocabulary (generation.draft_vocab).
    token_counts = torch.bincount(train_ids.long(), minlength=tok.get_vocab_size())
    tok.save(os.path.join(cfg.checkpoint_dir, "tokenizer.json"))
    stream = data.TokenStream(train_ids, cfg.seq_len)
    held_stream = data.TokenStream(held_ids, cfg.seq_len) if held_ids.numel() >= cfg.seq_len + 2 else stream

    eos = tok.token_to_id(data.EOS_TOKEN)
    model = LlamaForCausalLM(cfg.model_config(eos, eos))
    init_weights(model)
    model.train()
    L = cfg.layers
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    lr_fn = WarmupCosine(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_fn)
    gens = {"data": torch.Generator().manual_seed(cfg.seed), "dropout": torch.Generator().manual_seed(cfg.seed + 1)}
    step, elapsed_before, total_steps = 0, 0.0, cfg.steps
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        lr_fn = sched.lr_lambdas[0]
        _set_rng_state(state["rng"], gens)
        step, elapsed_before, total_steps = state["step"], state["elapsed_s"], state["total_steps"]
        if cfg.steps is not None and cfg.steps != total_steps:
            # An explicit --steps on resume extends (or shortens) the run; the cosine follows it.
            total_steps = lr_fn.total = cfg.steps
        log(f"resumed from {ckpt_path} at step {step} ({elapsed_before / 60:.1f} min already spent)")

    scales = recipe.exit_scales(L, cfg.e_scale, cfg.exit_weighting)
    last_only = torch.zeros(L, dtype=torch.bool)
    last_only[-1] = True
    budget_s = cfg.minutes * 60 if cfg.minutes is not None else math.inf
    tokens_per_step = cfg.batch_size * cfg.seq_len

    fields = ["step", "tokens", "lr", "wall_s", "loss"] + [f"loss_l{l}" for l in range(L)] + \
        [f"val_loss_l{l}" for l in range(L)] + ["kept_layers"]
    new_csv = not (cfg.resume and os.path.isfile(cfg.log_csv))
    csv_file = open(cfg.log_csv, "w" if new_csv else "a", newline="")
    writer = csv.DictWriter(csv_file, fieldnames=fields)
    if new_csv:
        writer.writeheader()

    def checkpoint():
        extra = {"layerskip": {**cfg.recipe_dict(), "steps": step, "total_steps": total_steps,
                               "tokens": step * tokens_per_step}}
        save_pretrained(model, tok, cfg.out, extra)
        save_frequencies(cfg.out, token_counts)
        torch.save({
            "model": model.state_dict(), "optimizer": _optimizer_state(opt, cfg.checkpoint_moments), "scheduler": sched.state_dict(),
            "step": step, "total_steps": total_steps, "elapsed_s": elapsed_before + (time.time() - t0),
            "rng": _rng_state(gens), "train_config": asdict(cfg),
        }, ckpt_path + ".tmp")
        os.replace(ckpt_path + ".tmp", ckpt_path)
        csv_file.flush()

    pbar = None
    if cfg.progress:
        from tqdm import tqdm

        pbar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, mininterval=5.0)
    t0 = time.time()
    last_save = t0
    losses_ema = None
    stopped_early = False
    while True:
        elapsed = elapsed_before + (time.time() - t0)
        if total_steps is not None and step >= total_steps:
            break
        if cfg.stop_at_step is not None and step >= cfg.stop_at_step:
            log(f"stopping at step {step} (--stop-at-step); the schedules still end at step {total_steps}")
            break
        if should_stop is not None and should_stop():
            stopped_early = True
            log(f"stop requested at step {step}: writing the checkpoint; --resume continues from it")
            break
        if elapsed >= budget_s:
            log(f"wall-clock budget of {cfg.minutes} min reached at step {step}")
            break
        batch = stream.batch(cfg.batch_size, gens["data"])  # [B, T+1]
        inputs, targets = batch[:, :-1], batch[:, 1:]
        if total_steps is not None:
            t_sched, T_sched = step, total_steps
        else:  # time mode: progress in [0, 1] on a virtual step axis
            t_sched, T_sched = int(min(elapsed / budget_s, 1.0) * (PROGRESS_STEPS - 1)), PROGRESS_STEPS
        if cfg.layerskip and cfg.p_max > 0:
            rates = recipe.dropout_rates(L, t_sched, T_sched, cfg.p_max, cfg.dropout_schedule)
            keep = recipe.sample_layer_keep(rates, cfg.batch_size, gens["dropout"])
        else:
            keep = None
        if cfg.layerskip:
            # The rotation follows the real step; the gradual curriculum follows progress.
            mask = recipe.curriculum_mask(L, step if cfg.curriculum == "rotational" else t_sched, T_sched,
                                          cfg.curriculum, cfg.rotation)
        else:
            mask = last_only
        if cfg.layerskip and cfg.draft_exit is not None:
            # default scale: as much as the last layer's
            step_scales, mask = recipe.add_draft_exit(
                scales, mask, cfg.draft_exit,
                float(scales[-1]) if cfg.draft_exit_scale is None else cfg.draft_exit_scale)
        else:
            step_scales = scales
        weights = recipe.loss_weights(step_scales, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast):
            hidden = model.forward_train(inputs, return_hidden=True, layer_keep=keep)
            loss, per_layer = recipe.early_exit_loss(model, hidden, targets, weights,
                                                     cfg.exit_distill if cfg.layerskip else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        lr_now = opt.param_groups[0]["lr"]
        opt.step()
        if total_steps is None:
            lr_fn.progress = min((elapsed_before + time.time() - t0) / budget_s, 1.0)
        sched.step()
        step += 1

        loss_v = loss.item()
        if not math.isfinite(loss_v):
            raise FloatingPointError(f"loss became {loss_v} at step {step}; lower --lr")
        losses_ema = loss_v if losses_ema is None else 0.98 * losses_ema + 0.02 * loss_v
        row = {"step": step, "tokens": step * tokens_per_step, "lr": f"{lr_now:.6g}",
               "wall_s": f"{elapsed_before + time.time() - t0:.1f}", "loss": f"{loss_v:.5f}",
               "kept_layers": f"{keep.float().sum(0).mean().item():.3f}" if keep is not None else L}
        for l, v in per_layer.items():
            row[f"loss_l{l}"] = f"{v.item():.5f}"
        if step % cfg.eval_every == 0 or step == total_steps:
            model.eval()
            for l, v in enumerate(_validate(model, cfg, held_stream, cfg.eval_batches)):
                row[f"val_loss_l{l}"] = f"{v:.5f}"
            model.train()
            log(f"step {step}: train {losses_ema:.3f}  held-out CE by exit layer: "
                + " ".join(row[f"val_loss_l{l}"][:5] for l in range(L)))
        writer.writerow(row)
        if row.get("val_loss_l0"):
            csv_file.flush()
        if pbar is not None:
            pbar.update(1)
            pbar.set_postfix(loss=f"{losses_ema:.3f}", lr=f"{lr_now:.2e}", refresh=False)
        if time.time() - last_save >= cfg.save_every_min * 60:
            checkpoint()
            last_save = time.time()

    if pbar is not None:
        pbar.close()
    if step % cfg.eval_every and not stopped_early:  # the curve ends with the final model's held-out loss
        model.eval()
        val = _validate(model, cfg, held_stream, cfg.eval_batches)
        writer.writerow({"step": step, "tokens": step * tokens_per_step,
                         "wall_s": f"{elapsed_before + time.time() - t0:.1f}",
                         **{f"val_loss_l{l}": f"{v:.5f}" for l, v in enumerate(val)}})
        log("final held-out CE by exit layer: " + " ".join(f"{v:.3f}" for v in val))
    checkpoint()
    csv_file.close()
    elapsed = elapsed_before + (time.time() - t0)
    summary = {"steps": step, "total_steps": total_steps, "tokens": step * tokens_per_step,
               "minutes": elapsed / 60, "final_loss_ema": losses_ema, "out": cfg.out}
    log("done: " + json.dumps(summary))
    return summary
