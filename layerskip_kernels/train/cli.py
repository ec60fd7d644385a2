"""`layerskip train`: train a Llama with the LayerSkip recipe on Python sources.

    layerskip train --out runs/my-model --minutes 10 --threads 1
    layerskip train --out runs/baseline --minutes 10 --no-layerskip
"""

from __future__ import annotations

import argparse
import signal
import sys

from .data import default_corpus
from .recipe import CURRICULA, DROPOUT_SCHEDULES, EXIT_WEIGHTINGS
from .trainer import CHECKPOINT_MOMENTS, TrainConfig

__all__ = ["add_arguments", "run", "config_from_args", "main"]

_D = TrainConfig.__dataclass_fields__


def _default(name):
    f = _D[name]
    return f.default


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = p.add_argument_group("data and output")
    g.add_argument("--corpus", default=None, help=f"directory of .py files (default: this Python's stdlib, {default_corpus()})")
    g.add_argument("--out", required=True, help="output model directory (Hugging Face style)")
    g.add_argument("--checkpoint-dir", default=None, help="resumable checkpoint + tokenizer (default: OUT/checkpoint)")
    g.add_argument("--log-csv", default=None, help="training curve CSV (default: CHECKPOINT_DIR/train_log.csv)")
    g.add_argument("--tokenizer", default=None, help="reuse this tokenizer.json instead of training one")
    g = p.add_argument_group("model")
    for name, help_ in (("layers", "decoder layers"), ("hidden", "hidden size"), ("intermediate", "MLP size"),
                        ("heads", "attention heads"), ("kv-heads", "key/value heads (GQA)"),
                        ("vocab-size", "BPE vocabulary size"), ("seq-len", "training sequence length")):
        g.add_argument(f"--{name}", type=int, default=_default(name.replace("-", "_")),
                       help=f"{help_} (default: %(default)s)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=_default("batch_size"), help="sequences per step (default: %(default)s)")
    g.add_argument("--lr", type=float, default=_default("lr"), help="peak AdamW learning rate (default: %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=_default("warmup_steps"), help="linear warmup (default: %(default)s)")
    g = p.add_argument_group("LayerSkip recipe")
    g.add_argument("--p-max", type=float, default=_default("p_max"), help="max layer dropout rate, [0, 1) (default: %(default)s)")
    g.add_argument("--dropout-schedule", choices=DROPOUT_SCHEDULES, default=_default("dropout_schedule"),
                   help="S(t): constant or exponential curriculum (default: %(default)s)")
    g.add_argument("--e-scale", type=float, default=_default("e_scale"), help="early-exit loss scale e_scale >= 0 (default: %(default)s)")
    g.add_argument("--exit-weighting", choices=EXIT_WEIGHTINGS, default=_default("exit_weighting"),
                   help="early-exit loss weights by depth: paper (grows as l(l+1)/2) or flat (every exit e_scale, "
                        "the last L-1) (default: %(default)s)")
    g.add_argument("--exit-distill", type=float, default=_default("exit_distill"),
                   help="share of each early exit's loss taken from the last layer's distribution instead of the "
                        "data (self-distillation, trains exits to agree with the last layer), [0, 1] "
                        "(default: %(default)s)")
    g.add_argument("--draft-exit", type=int, default=None,
                   help="supervise the exit after this layer (the draft's E) at every step, whatever the "
                        "curriculum (default: off)")
    g.add_argument("--draft-exit-scale", type=float, default=None,
                   help="its early-exit scale (default: the last layer's)")
    g.add_argument("--curriculum", choices=CURRICULA, default=_default("curriculum"),
                   help="early-exit loss curriculum (default: %(default)s)")
    g.add_argument("--rotation", type=int, default=_default("rotation"), help="R of the rotational curriculum (default: %(default)s)")
    g.add_argument("--no-layerskip", action="store_true",
                   help="baseline: no layer dropout, loss on the last layer only")
    g = p.add_argument_group("budget")
    g.add_argument("--minutes", type=float, default=_default("minutes"),
                   help="wall-clock budget; sets the number of steps from the measured step time (default: %(default)s)")
    g.add_argument("--steps", type=int, default=None, help="exact number of steps (overrides the estimate from --minutes)")
    g.add_argument("--stop-at-step", type=int, default=None,
                   help="save and stop once this step is reached, schedules unchanged (A/B continuations of a checkpoint)")
    g.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    g.add_argument("--seed", type=int, default=_default("seed"), help="(default: %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue from CHECKPOINT_DIR/checkpoint.pt")
    g.add_argument("--eval-every", type=int, default=_default("eval_every"), help="held-out eval period in steps (default: %(default)s)")
    g.add_argument("--save-every-min", type=float, default=_default("save_every_min"),
                   help="checkpoint period in minutes (default: %(default)s)")
    g.add_argument("--checkpoint-moments", choices=CHECKPOINT_MOMENTS, default=_default("checkpoint_moments"),
                   help="dtype of Adam's moments in the checkpoint; bf16 makes it 2/3 the size, small enough to "
                        "commit, at the price of a resume that is no longer bit-exact (default: %(default)s)")
    g.add_argument("--no-autocast", action="store_true", help="train in fp32 instead of bf16 autocast")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def config_from_args(args) -> TrainConfig:
    kw = dict(
        out=args.out, checkpoint_dir=args.checkpoint_dir, log_csv=args.log_csv, tokenizer=args.tokenizer,
        layers=args.layers, hidden=args.hidden, intermediate=args.intermediate, heads=args.heads,
        kv_heads=args.kv_heads, vocab_size=args.vocab_size, seq_len=args.seq_len, batch_size=args.batch_size,
        lr=args.lr, warmup_steps=args.warmup_steps, layerskip=not args.no_layerskip,
        p_max=0.0 if args.no_layerskip else args.p_max, dropout_schedule=args.dropout_schedule,
        e_scale=args.e_scale, exit_weighting=args.exit_weighting,
        exit_distill=args.exit_distill,
        draft_exit=args.draft_exit, draft_exit_scale=args.draft_exit_scale, curriculum=args.curriculum,
        rotation=args.rotation, minutes=args.minutes,
        steps=args.steps, stop_at_step=args.stop_at_step, threads=args.threads, seed=args.seed, resume=args.resume, eval_every=args.eval_every,
        save_every_min=args.save_every_min, checkpoint_moments=args.checkpoint_moments, autocast=not args.no_autocast, progress=not args.no_progress,
    )
    if args.corpus is not None:
        kw["corpus"] = args.corpus
    return TrainConfig(**kw)


def _stop_on_signals():
    """SIGTERM or SIGINT ends the run after the current step, with a checkpoint (a
    session's end or Ctrl-C loses no work); a second one stops at once."""
    requested = []

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)
        print(f"layerskip train: {signal.Signals(signum).name}: stopping after this step "
              "(send it again to stop at once, without a checkpoint)", flush=True)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return lambda: bool(requested)


def run(args) -> int:
    from .trainer import train

    cfg = config_from_args(args)
    try:
        cfg.validate()
    except ValueError as e:
        print(f"layerskip train: error: {e}", file=sys.stderr)
        return 2
    from .memory import keep_freed_memory

    if keep_freed_memory():
        print("memory: glibc keeps freed tensors for reuse (no mmap per big tensor, no heap trimming)", flush=True)
    try:
        train(cfg, log=lambda msg: print(msg, flush=True), should_stop=_stop_on_signals())
    except (ValueError, FileNotFoundError, PermissionError) as e:
        print(f"layerskip train: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    p = add_arguments(argparse.ArgumentParser(prog="layerskip train", description=__doc__,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
