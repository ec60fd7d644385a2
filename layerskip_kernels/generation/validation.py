"""Validation: the primitives and every setting's one check, run once before
the model or any buffer is touched.

Every bad value ends in one ValueError that names the argument and what was
expected. Integer arguments accept Python ints and integer scalars of numpy and
torch (0-dim integer tensors), never bools or floats. The same checkers serve
the CLI with its flag names and the model directory's recorded defaults with
their file and key. Each setting is checked here and nowhere else; the modules
that use a setting (processors, draft_head, draft_vocab, token_healing, policy,
config) import its check from here. This module imports nothing of generation/
but steps (for the cache shape), so anything may import it.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass

import torch

from ..cache import MAX_CACHE_LEN, StaticKVCache, check_fits
from ..ops.checks import SEED_RANGE
from .steps import cache_shape

__all__ = [
    "MAX_SPECULATIONS",
    "MIN_TEMPERATURE",
    "SEED_RANGE",
    "SPECULATION_MODES",
    "DRAFT_QUANTIZATIONS",
    "GenerateArgs",
    "as_int",
    "check_bool",
    "check_int",
    "check_seed",
    "check_temperature",
    "check_top_k",
    "check_top_p",
    "check_repetition_penalty",
    "check_decoding_aids",
    "check_draft_quantization",
    "check_draft_vocab",
    "check_first_token_ids",
    "check_prompt",
    "check_engine_args",
    "check_speculation",
    "check_drafting",
    "validate_generate_args",
]

# Cache slots of one engine (a bound far above any batch that fits in memory).
MAX_BATCH_SIZE = 2**16
# The verify step runs S = k+1 queries per row; the kernels are tuned for S <= 16.
MAX_SPECULATIONS = 15
# Below this, logits / temperature overflows float32 for ordinary logits and the
# softmax turns into NaN; the distribution is greedy to float32 precision anyway.
MIN_TEMPERATURE = 1e-5
# Drafting modes of generate(speculation=...) (generation.policy implements them).
SPECULATION_MODES = ("static", "adaptive")
# The draft head's weight formats (generation.draft_head).
DRAFT_QUANTIZATIONS = (None, "int8")
# repetition_penalty multiplies or divides logits: within these bounds a logit
# of any float16 model (|x| < 600) stays finite and the softmax defined.
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 1e-2, 1e2
# SEED_RANGE: one seed range for every backend and the CLI (the native ops take
# int64), defined with the ops' boundary checks and re-exported here.

_NOT_INT = object()


def as_int(value):
    """`value` as a Python int if it is an integer scalar (not a bool), else _NOT_INT."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return _NOT_INT
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.dtype == torch.bool or value.dtype.is_floating_point or value.is_complex():
            return _NOT_INT
        return int(value)
    try:
        return operator.index(value)
    except TypeError:
        return _NOT_INT


def _as_real(value):
    """`value` as a finite float if it is a real scalar (not a bool), else None."""
    if isinstance(value, bool) or type(value).__name__ == "bool_" or not isinstance(value, numbers.Real):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def check_int(name: str, value, lo: int | None = None, hi: int | None = None, hint: str = "") -> int:
    """`value` as an int in [lo, hi] (either bound optional), else a ValueError naming `name`."""
    v = as_int(value)
    if v is _NOT_INT or (lo is not None and v < lo) or (hi is not None and v > hi):
        if lo is not None and hi is not None:
            want = f"an int in [{lo}, {hi}]"
        elif lo is not None:
            want = f"an int >= {lo}"
        else:
            want = "an int"
        raise ValueError(f"{name} must be {want}{hint}, got {value!r}")
    return v


def check_temperature(value, name: str = "temperature") -> float:
    t = _as_real(value)
    if t is None or t < MIN_TEMPERATURE:
        raise ValueError(f"{name} must be a finite number >= {MIN_TEMPERATURE}, got {value!r}")
    return t


def check_top_k(value, name: str = "top_k") -> int:
    return check_int(name, value, 0, hint=" (0 disables it)")


def check_top_p(value, name: str = "top_p") -> float:
    p = _as_real(value)
    if p is None or not 0 < p <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    # The nucleus is cut in float32, where a smaller value is 0 and keeps nothing.
    if float(torch.tensor(p, dtype=torch.float32)) == 0:
        raise ValueError(f"{name} must be a number in (0, 1] that is not 0 in float32, got {value!r}")
    return p


def check_seed(value, name: str = "seed") -> int:
    s = as_int(value)
    if s is _NOT_INT or not SEED_RANGE[0] <= s < SEED_RANGE[1]:
        raise ValueError(f"{name} must be an int in [-2^63, 2^63), got {value!r}")
    return s


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def check_repetition_penalty(value, name: str = "repetition_penalty") -> float:
    """value as a float, else a ValueError naming `name` unless value is a
    number in [MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY]."""
    try:
        p = _as_real(value)
    except OverflowError:  # an int beyond float's range
        p = None
    if p is None or not MIN_REPETITION_PENALTY <= p <= MAX_REPETITION_PENALTY:
        raise ValueError(f"{name} must be a finite number in [{MIN_REPETITION_PENALTY}, {MAX_REPETITION_PENALTY}] "
                         f"(1.0 disables it), got {value!r}")
    return p


def check_no_repeat_ngram_size(value, name: str = "no_repeat_ngram_size") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 (0 disables it), got {value!r}")
    return value


def check_decoding_aids(repetition_penalty, no_repeat_ngram_size) -> None:
    check_repetition_penalty(repetition_penalty)
    check_no_repeat_ngram_size(no_repeat_ngram_size)


def check_draft_quantization(quantization, name: str = "draft_quantization") -> str | None:
    """None or "int8"; ValueError naming `name` otherwise."""
    if quantization not in DRAFT_QUANTIZATIONS or not (quantization is None or isinstance(quantization, str)):
        raise ValueError(f"{name} must be one of {DRAFT_QUANTIZATIONS}, got {quantization!r}")
    return quantization


def check_draft_vocab(draft_vocab, vocab_size: int) -> torch.Tensor | None:
    """None, or the subset as a sorted int64 CPU tensor; ValueError naming
    `draft_vocab` for anything but distinct token ids in [0, vocab_size)."""
    if draft_vocab is None:
        return None
    try:
        ids = torch.as_tensor(draft_vocab)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"draft_vocab must be None or a 1-D sequence of token ids, got {type(draft_vocab).__name__}")
    if ids.dim() != 1 or ids.numel() == 0 or ids.dtype.is_floating_point or ids.dtype.is_complex \
            or ids.dtype == torch.bool:
        raise ValueError(f"draft_vocab must be a non-empty 1-D sequence of integer token ids, got {ids.dtype} "
                         f"{tuple(ids.shape)}")
    if ids.device.type == "meta":
        raise ValueError("draft_vocab must hold token ids (a tensor with data), got a tensor on the meta device")
    ids = ids.detach().to("cpu", torch.int64)
    if bool((ids < 0).any()) or bool((ids >= vocab_size).any()):
        raise ValueError(f"draft_vocab ids must be in [0, {vocab_size}), got min {int(ids.min())} max {int(ids.max())}")
    ids = torch.sort(ids).values
    if bool((ids[1:] == ids[:-1]).any()):
        raise ValueError("draft_vocab ids must be distinct")
    return ids


def check_first_token_ids(first_token_ids, batch_size: int, vocab_size: int) -> None:
    """first_token_ids: None, or one entry per row: None or a non-empty list of ids in [0, V)."""
    if first_token_ids is None:
        return
    if not isinstance(first_token_ids, (list, tuple)) or len(first_token_ids) != batch_size:
        raise ValueError(f"first_token_ids must be a list with one entry per prompt ({batch_size}), "
                         f"got {type(first_token_ids).__name__}")
    for b, allowed in enumerate(first_token_ids):
        if allowed is None:
            continue
        if not isinstance(allowed, (list, tuple)) or not allowed:
            raise ValueError(f"first_token_ids[{b}] must be None or a non-empty list of token ids, got {allowed!r}")
        bad = [t for t in allowed if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"first_token_ids[{b}] holds {bad[0]!r}, not a token id in [0, vocab_size={vocab_size})")


def check_prompt(prompt, vocab_size: int, name: str = "prompt") -> list[int]:
    """One prompt (a sequence of token ids, or a 1-D integer tensor) as a new
    list of ints in [0, vocab_size); ValueError naming `name` otherwise."""
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() != 1 or prompt.dtype.is_floating_point or prompt.is_complex() or prompt.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-D integer tensor or a list of token ids, got {prompt.dtype} "
                             f"{tuple(prompt.shape)}")
        prompt = prompt.tolist()
    if isinstance(prompt, (str, bytes)) or not isinstance(prompt, (list, tuple)):
        raise ValueError(f"{name} must be a list of token ids, got {type(prompt).__name__}")
    row = []
    for t in prompt:
        v = as_int(t)
        if v is _NOT_INT:
            raise ValueError(f"{name} holds {t!r}, not an integer token id")
        if not 0 <= v < vocab_size:
            raise ValueError(f"{name} holds token id {v} outside [0, vocab_size={vocab_size})")
        row.append(v)
    if not row:
        raise ValueError(f"{name} is empty")
    return row


def check_engine_args(model, max_batch_size, seed) -> tuple[int, int | None]:
    """Engine's own arguments (its decoding settings are SpeculationConfig's):
    (max_batch_size, seed) normalised."""
    cfg = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or not all(hasattr(cfg, a) for a in ("vocab_size", "num_hidden_layers")) \
            or not isinstance(getattr(model, "lm_head", None), torch.nn.Module):
        raise ValueError(f"model must be a layerskip_kernels.LlamaForCausalLM, got {type(model).__name__}")
    return check_int("max_batch_size", max_batch_size, 1, MAX_BATCH_SIZE), None if seed is None else check_seed(seed)


def check_drafting(exit_layer, num_speculations, num_layers: int) -> tuple[int | None, int]:
    """(exit_layer, k): E in [1, L-1] and k in [1, MAX_SPECULATIONS], or (None, k
    as given, 0 if not an int) without drafting."""
    if exit_layer is not None:
        L = num_layers
        exit_layer = check_int("exit_layer", exit_layer, 1, L - 1, f" for a {L}-layer model")
        return exit_layer, check_int("num_speculations", num_speculations, 1, MAX_SPECULATIONS)
    k = as_int(num_speculations)  # unused without drafting
    return None, 0 if k is _NOT_INT else k


def check_speculation(speculation, name: str = "speculation"):
    """A mode name of SPECULATION_MODES or a drafting policy object (plan, reset_row, observe)."""
    if isinstance(speculation, str):
        if speculation not in SPECULATION_MODES:
            raise ValueError(f"{name} must be one of {SPECULATION_MODES} or a drafting policy, got {speculation!r}")
    elif not all(callable(getattr(speculation, f, None)) for f in ("plan", "reset_row", "observe")):
        raise ValueError(f"{name} must be one of {SPECULATION_MODES} or an object with plan, reset_row and "
                         f"observe (generation.policy), got {speculation!r}")
    return speculation


# --------------------------------------------------------------------------- generate()


@dataclass
class GenerateArgs:
    """generate()'s arguments after checking, as plain Python values."""

    prompts: list[list[int]]
    max_new_tokens: int
    exit_layer: int | None
    num_speculations: int
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    eos_ids: list[int]
    seed: int | None


def _prompts(input_ids, attention_mask, V: int) -> list[list[int]]:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an int64 or int32 tensor, got {input_ids.dtype}")
        rows = input_ids.tolist()
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor):
                raise ValueError(f"attention_mask must be a torch.Tensor of 0/1 with input_ids' shape "
                                 f"{tuple(input_ids.shape)}, got {type(attention_mask).__name__}")
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, "
                                 f"got {tuple(attention_mask.shape)}")
            if attention_mask.dtype.is_floating_point or attention_mask.is_complex():
                raise ValueError(f"attention_mask must be a bool or integer tensor of 0/1, got {attention_mask.dtype}")
            masks = attention_mask.tolist()
            if any(m not in (0, 1) for mr in masks for m in mr):
                raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
            rows = [[t for t, m in zip(r, mr) if m] for r, mr in zip(rows, masks)]
            for b, r in enumerate(rows):
                if not r:
                    raise ValueError(f"attention_mask marks no token of row {b}: prompt {b} is empty")
    else:
        if attention_mask is not None:
            raise ValueError("attention_mask is only accepted with a padded input_ids tensor")
        if not isinstance(input_ids, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in input_ids):
            raise ValueError("input_ids must be a LongTensor [B, T] or a list of lists of token ids")
        rows = [check_prompt(r, V, f"input_ids: prompt {b}") for b, r in enumerate(input_ids)]
    if not rows:
        raise ValueError("input_ids holds no prompt")
    for b, p in enumerate(rows):
        if len(p) == 0:
            raise ValueError(f"input_ids: prompt {b} is empty")
        bad = next((t for t in p if not 0 <= t < V), None)
        if bad is not None:
            raise ValueError(f"input_ids: prompt {b} holds token id {bad} outside [0, vocab_size={V})")
    return rows


def _eos_ids(value, V: int) -> list[int]:
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    elif isinstance(value, torch.Tensor) and value.dim() == 1:
        items = list(value)
    else:
        items = [value]
    ids = [as_int(t) for t in items]
    if any(t is _NOT_INT or not 0 <= t < V for t in ids):
        raise ValueError(f"eos_token_id must be None, a token id or a list of token ids in [0, vocab_size={V}), "
                         f"got {value!r}")
    return ids


def validate_generate_args(model, input_ids, attention_mask, *, max_new_tokens, exit_layer, num_speculations,
                           do_sample, temperature, top_k, top_p, eos_token_id, seed, streamer,
                           max_cache_len, max_batch_size=None, compile=False,
                           speculation="static") -> GenerateArgs:
    """Check every argument of generate() and the memory the call needs; return them normalised."""
    cfg = model.config
    L, V = cfg.num_hidden_layers, cfg.vocab_size
    prompts = _prompts(input_ids, attention_mask, V)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, 1)
    exit_layer, num_speculations = check_drafting(exit_layer, num_speculations, L)
    do_sample = check_bool("do_sample", do_sample)
    if do_sample:
        temperature = check_temperature(temperature)
        top_k = check_top_k(top_k)
        top_k = 0 if top_k >= V else top_k  # keeping every token is no top-k (and fits int64 downstream)
        top_p = check_top_p(top_p)
    eos = cfg.eos_token_id if eos_token_id is None else eos_token_id
    eos_ids = [] if eos is None else _eos_ids(eos, V)
    seed = None if seed is None else check_seed(seed)
    if streamer is not None and not callable(streamer):
        raise ValueError(f"streamer must be None or a callable streamer(row, tokens), got {streamer!r}")
    if max_cache_len is None:
        max_cache_len = cfg.max_position_embeddings
    else:
        max_cache_len = check_int("max_cache_len", max_cache_len, 1, MAX_CACHE_LEN, " (positions are int32)")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > max_cache_len:
        raise ValueError(
            f"prompt length {longest} + max_new_tokens {max_new_tokens} exceeds the cache size "
            f"max_cache_len={max_cache_len}"
        )
    if max_batch_size is not None:
        max_batch_size = check_int("max_batch_size", max_batch_size, 1)
    # The cache holds max_batch_size rows (continuous batching), not every prompt.
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be a bool, got {compile!r}")
    check_speculation(speculation)
    rows = len(prompts) if max_batch_size is None else min(len(prompts), max_batch_size)
    _check_memory(model, rows, longest, max_new_tokens, num_speculations if exit_layer else 0, do_sample, compile)
    return GenerateArgs(prompts, max_new_tokens, exit_layer, num_speculations, do_sample, temperature, top_k, top_p,
                        eos_ids, seed)


def _check_memory(model, B: int, longest: int, max_new_tokens: int, k: int, do_sample: bool,
                  compile: bool = False) -> None:
    """The buffers one call allocates up front must fit the model's device."""
    cfg = model.config
    p = model.lm_head.weight
    # The engine's cache length: prompt + new tokens + k+1 positions of draft slack.
    T_max = longest + max_new_tokens + k + 1
    B, T_max = cache_shape(B, T_max, compile)  # what the engine allocates
    if T_max > MAX_CACHE_LEN:
        raise ValueError(f"prompt length {longest} + max_new_tokens {max_new_tokens} needs {T_max} cache "
                         f"positions, more than {MAX_CACHE_LEN} (positions are int32)")
    nbytes = StaticKVCache.nbytes(L := cfg.num_hidden_layers, B, cfg.num_key_value_heads, T_max, cfg.head_dim,
                                  p.dtype)
    nbytes += T_max * cfg.head_dim * 4  # fp32 RoPE cos + sin, [T_max, D/2] each
    if k and do_sample:
        nbytes += B * k * cfg.vocab_size * 4  # fp32 draft distributions
    check_fits(nbytes, p.device, f"generate(max_new_tokens={max_new_tokens}) for {B} prompt(s) of up to {longest} "
                                 f"tokens on a {L}-layer model (KV cache of {T_max} positions)")
