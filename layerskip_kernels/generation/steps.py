"""The model passes of one decode iteration, as functions of static-shape tensors.

These are the units that `torch.compile(fullgraph=True)` traces and, on a GPU,
captures as CUDA graphs. Each takes the model, the exit layer E (a Python int:
one graph per value) and tensors whose shapes depend only on the slot count,
the cache length and k; positions are int32 tensors, never Python ints, so a
graph is reused at every position and whatever rows are active.

  autoregressive(model, tokens, cache)            tokens [n]        -> logits [n, V]
  draft(model, E, tokens, cache, pos)             tokens [n]        -> (hidden [n, H], logits [n, V])
  draft_reduced(model, E, tokens, cache, pos, ids, weight)
                                                  tokens [n]        -> (hidden [n, H], logits [n, V])
  early(model, E, tokens, cache, pos)             tokens [n]        -> hidden [n, H]
  draft_greedy(model, E, k, tokens, cache, pos)   tokens [n]        -> (hidden [n, k+1, H], drafts [n, k])
  verify(model, E, hidden, cache, base)           hidden [n, S, H]  -> logits [n, S, V]

`draft_greedy` is k draft steps with the argmax taken inside, then `early` of
the last draft: the whole drafting phase of an iteration in one graph, for
when no step needs the host (greedy, no decoding aids, the full draft head, a
fixed k). `draft_reduced` scores only the tokens `ids` (int64 [N]) with `weight` (the
LM head's rows ids, [N, H]) and gives every other token logit -inf
(generation.draft_vocab). `draft`, `draft_reduced` and `early` write layers [0, E) of K/V at `pos`; `verify` writes layers
[E, L) at base .. base+S-1; `autoregressive` writes every layer at
cache.seqlens. None of them advances a length: the engine decides what is kept.

`StepFunctions(compile=...)` hands the engine either these functions (eager) or
their compiled versions. Compiled functions are shared by every engine of the
process: dynamo compiles one graph per (model, E, dtype, shape bucket) and
guards on those, so a later `generate` call with the same bucket reuses it.
The attention and acceptance ops stay opaque to inductor (they are our
kernels); it fuses the norms, SiLU*mul, residual adds and casts around them.
"""

from __future__ import annotations

import logging
import sys
import time

import torch

__all__ = ["autoregressive", "draft", "draft_reduced", "draft_greedy", "early", "verify", "StepFunctions", "bucket", "cache_shape", "compile_stats"]


def autoregressive(model, tokens: torch.Tensor, cache) -> torch.Tensor:
    h = model.forward_layers(model.embed(tokens[:, None]), 0, model.num_layers, cache)
    return model.exit_head(h)[:, 0]


def draft(model, E: int, tokens: torch.Tensor, cache, pos: torch.Tensor):
    h = model.forward_layers(model.embed(tokens[:, None]), 0, E, cache, pos)
    return h[:, 0], model.exit_head(h)[:, 0]


def draft_reduced(model, E: int, tokens: torch.Tensor, cache, pos: torch.Tensor, ids: torch.Tensor,
                  weight: torch.Tensor):
    h = model.forward_layers(model.embed(tokens[:, None]), 0, E, cache, pos)[:, 0]
    sub = torch.nn.functional.linear(model.model.norm(h), weight)  # [n, N]
    logits = sub.new_full((sub.shape[0], model.config.vocab_size), float("-inf"))
    return h, logits.index_copy(1, ids, sub)


def draft_greedy(model, E: int, k: int, tokens: torch.Tensor, cache, pos: torch.Tensor):
    hidden, drafts = [], []
    tok = tokens
    for i in range(k):
        h, logits = draft(model, E, tok, cache, pos + i)
        tok = logits.argmax(-1)  # the greedy choice (ties: lowest id)
        hidden.append(h)
        drafts.append(tok)
    hidden.append(early(model, E, tok, cache, pos + k))
    return torch.stack(hidden, 1), torch.stack(drafts, 1)


def early(model, E: int, tokens: torch.Tensor, cache, pos: torch.Tensor) -> torch.Tensor:
    return model.forward_layers(model.embed(tokens[:, None]), 0, E, cache, pos)[:, 0]


def verify(model, E: int, hidden: torch.Tensor, cache, base: torch.Tensor) -> torch.Tensor:
    return model.exit_head(model.forward_layers(hidden, E, model.num_layers, cache, base))


_EAGER = dict(autoregressive=autoregressive, draft=draft, draft_reduced=draft_reduced, draft_greedy=draft_greedy,
              early=early, verify=verify)
_compiled: dict[str, object] = {}

# Seconds spent in the first call of each graph, per step name (tracing +
# inductor codegen, or loading them from the on-disk cache; later calls only run).
compile_stats: dict[str, float] = {}

# Graphs per step function: models x exit layers x dtypes x shape buckets. The
# default (8) would fall back to eager silently after that many.
_RECOMPILE_LIMIT = 64


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum): slot counts and cache lengths
    are rounded up to it so that different batch sizes and prompt lengths share
    compiled graphs."""
    n = max(n, minimum)
    return 1 << (n - 1).bit_length()


def cache_shape(n_slots: int, max_len: int, compile: bool) -> tuple[int, int]:
    """(slots, cache length) the engine allocates: as asked, or rounded up to the
    shape buckets when its steps are compiled (the extra slots idle at position 0)."""
    return (bucket(n_slots), bucket(max_len, 256)) if compile else (n_slots, max_len)


def _quiet_cpp_extension_import() -> None:
    """Inductor's C++ path imports torch.utils.cpp_extension, which warns "No CUDA
    runtime is found" on a GPU-less machine with a CUDA build of torch; that is
    noise for a CPU compile, so that one import runs with its logger silenced."""
    if "torch.utils.cpp_extension" in sys.modules:
        return
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension  # noqa: F401
    finally:
        log.setLevel(level)


def _compiled_fn(name: str, device: torch.device):
    key = f"{name}:{device.type}"
    fn = _compiled.get(key)
    if fn is None:
        if device.type == "cpu":
            _quiet_cpp_extension_import()
        cfg = torch._dynamo.config
        cfg.recompile_limit = max(cfg.recompile_limit, _RECOMPILE_LIMIT)
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4 * _RECOMPILE_LIMIT)
        # CUDA: graph-captured ("reduce-overhead": one replay per step, no
        # per-kernel launch from Python). CPU: inductor's C++ wrapper removes
        # the Python launcher between its kernels.
        opts = dict(mode="reduce-overhead") if device.type == "cuda" else dict(options={"cpp_wrapper": True})
        fn = torch.compile(_EAGER[name], fullgraph=True, dynamic=False, **opts)
        _compiled[key] = fn
    return fn


class StepFunctions:
    """The step functions, eager or compiled (see the module docstring)."""

    def __init__(self, compile: bool, device):
        self.compile = compile
        self.device = torch.device(device)
        self.compile_s = 0.0  # seconds of this object's first calls of each graph (see _timed)
        for name, fn in _EAGER.items():
            setattr(self, name, self._timed(name, _compiled_fn(name, self.device)) if compile else fn)

    def _timed(self, name: str, fn):
        def call(*args):
            key = (name,) + tuple(_signature(a) for a in args)
            if key in _warm:
                return fn(*args)
            # First call of this graph in this process: tracing and codegen (or
            # loading them from inductor's on-disk caches) and the first run,
            # which loads the compiled module. Counted as one-time cost.
            t0 = time.perf_counter()
            out = fn(*args)
            dt = time.perf_counter() - t0
            _warm.add(key)
            self.compile_s += dt
            compile_stats[name] = compile_stats.get(name, 0.0) + dt
            return out

        return call


# Graphs already run once in this process (see StepFunctions._timed).
_warm: set = set()


def _signature(arg):
    """What a compiled step's graph depends on, for one argument."""
    if isinstance(arg, torch.Tensor):
        return (tuple(arg.shape), arg.dtype, arg.device)
    if isinstance(arg, torch.nn.Module):
        return id(arg)
    if hasattr(arg, "k") and hasattr(arg, "seqlens"):  # StaticKVCache
        return (tuple(arg.k.shape), arg.k.dtype, arg.k.device)
    return arg
