"""The model passes of one decode iteration, as functions of static-shape tensors.

These are the units that `torch.compile(fullgraph=True)` traces and, on a GPU,
captures as CUDA graphs. Each takes the model, the exit layer E (a Python int:
one graph per value) and tensors whose shapes depend only on the slot count,
the cache length and k; positions are int32 tensors, never Python ints, so a
graph is reused at every position and whatever rows are active.

  autoregressive(model, tokens, cache)                  tokens [n]        -> logits [n, V]
  draft(model, E, tokens, cache, pos, head)             tokens [n]        -> (hidden [n, H], logits [n, V])
  early(model, E, tokens, cache, pos)                   tokens [n]        -> hidden [n, H]
  draft_greedy(model, E, k, tokens, cache, pos, head)   tokens [n]        -> (hidden [n, k+1, H], drafts [n, k])
  verify(model, E, hidden, cache, base)                 hidden [n, S, H]  -> logits [n, S, V]
  greedy_token(model, tokens, cache, aids, history)     tokens [n]        -> next tokens [n]
  verify_accept(model, E, hidden, cache, base, drafts, draft_lens)
                                                        hidden [n, k+1, H] -> (accepted [n, k+2], next [n])
  speculate_greedy(model, E, k, tokens, cache, base, head, aids, history)
                                                        tokens [n]        -> (accepted [n, k+2], next [n])

`head` is None (the model's final norm and LM head) or a
generation.draft_head.DraftHead (a vocabulary subset, int8 rows, or both).
`draft_greedy` is k draft steps with the argmax taken inside, then `early` of
the last draft: the whole drafting phase of an iteration in one graph, for
when no step needs the host (greedy, no decoding aids, a fixed k). `draft`
and `early` write layers [0, E) of K/V at `pos`; `verify` writes layers
[E, L) at base .. base+S-1; `autoregressive` writes every layer at
cache.seqlens. None of them advances a length: the engine decides what is kept.
`greedy_token` is `autoregressive` with the argmax, and `verify_accept` is
`verify` with greedy acceptance (ops.verify_greedy): each row of `accepted` is
the accepted count, then the tokens to append (-1 padded), and `next` the last
of them, so the iteration's one host read is one tensor. The engine uses them
when no logits go through the host (greedy, no decoding aids).
`speculate_greedy` is a whole greedy iteration, `draft_greedy` then
`verify_accept`: one graph, one call (a compiled call has a fixed cost of
tens of microseconds on a CPU; on a GPU, one graph replay per iteration).
`aids` is None or a generation.sampling.DecodingAids (a constant of the
graph: one per setting) over `history` (int64 [n, T_max], every row's tokens
by position): then every row of logits goes through the aids against its own
context before the argmax, and the drafts are written into `history`
(generation.sampling.GrowingContext); still one graph per iteration.

`StepFunctions(compile=...)` hands the engine either these functions (eager) or
their compiled versions. Compiled functions are shared by every engine of the
process: dynamo compiles one graph per (model, E, dtype, shape bucket), so a
later `generate` call with the same bucket reuses it (on CPU without dynamo's
per-call checks of every model attribute: see _compiled_fn).
The attention and acceptance ops stay opaque to inductor (they are our
kernels); it fuses the norms, SiLU*mul, residual adds and casts around them.
"""

from __future__ import annotations

import logging
import sys
import time
import types
import weakref

import torch

from .. import ops
from .sampling import GrowingContext, NoContext

_NO_CONTEXT = NoContext()

__all__ = ["autoregressive", "draft", "draft_greedy", "early", "verify", "greedy_token", "verify_accept",
           "speculate_greedy", "packed", "StepFunctions", "bucket", "cache_shape", "compile_stats"]


def autoregressive(model, tokens: torch.Tensor, cache) -> torch.Tensor:
    h = model.forward_layers(model.embed(tokens[:, None]), 0, model.num_layers, cache)
    return model.exit_head(h)[:, 0]


def draft(model, E: int, tokens: torch.Tensor, cache, pos: torch.Tensor, head=None):
    h = model.forward_layers(model.embed(tokens[:, None]), 0, E, cache, pos)[:, 0]
    return h, (model.exit_head(h) if head is None else head.logits(model, h))


def draft_greedy(model, E: int, k: int, tokens: torch.Tensor, cache, pos: torch.Tensor, head=None,
                 context=_NO_CONTEXT):
    hidden, drafts = [], []
    tok = tokens
    for i in range(k):
        h, logits = draft(model, E, tok, cache, pos + i, head)
        tok = context.draft(logits).argmax(-1)  # the greedy choice (ties: lowest id)
        context.append(tok)
        hidden.append(h)
        drafts.append(tok)
    hidden.append(early(model, E, tok, cache, pos + k))
    return torch.stack(hidden, 1), torch.stack(drafts, 1)


def early(model, E: int, tokens: torch.Tensor, cache, pos: torch.Tensor) -> torch.Tensor:
    return model.forward_layers(model.embed(tokens[:, None]), 0, E, cache, pos)[:, 0]


def verify(model, E: int, hidden: torch.Tensor, cache, base: torch.Tensor) -> torch.Tensor:
    return model.exit_head(model.forward_layers(hidden, E, model.num_layers, cache, base))


def greedy_token(model, tokens: torch.Tensor, cache, aids=None, history=None) -> torch.Tensor:
    logits = autoregressive(model, tokens, cache)
    if aids is not None:  # a constant of the trace
        logits = GrowingContext(aids, history, cache.seqlens, logits.shape[-1]).draft(logits)
    return logits.argmax(-1)  # ties: lowest id


def verify_accept(model, E: int, hidden: torch.Tensor, cache, base: torch.Tensor, drafts: torch.Tensor,
                  draft_lens: torch.Tensor | None = None):
    return packed(*ops.verify_greedy(drafts, verify(model, E, hidden, cache, base), draft_lens=draft_lens))


def packed(num_accepted: torch.Tensor, out_tokens: torch.Tensor):
    """An acceptance op's result as (accepted [n, k+2]: count, then tokens; next token [n])."""
    n = num_accepted.long()[:, None]
    return torch.cat([n, out_tokens], dim=1), out_tokens.gather(1, n)[:, 0]


def speculate_greedy(model, E: int, k: int, tokens: torch.Tensor, cache, base: torch.Tensor, head=None,
                     aids=None, history=None):
    if aids is None:  # a constant of the trace
        hidden, drafts = draft_greedy(model, E, k, tokens, cache, base, head)
        return verify_accept(model, E, hidden, cache, base, drafts)
    context = GrowingContext(aids, history, base, model.config.vocab_size)
    hidden, drafts = draft_greedy(model, E, k, tokens, cache, base, head, context)
    return packed(*ops.verify_greedy(drafts, context.verify(verify(model, E, hidden, cache, base))))


_EAGER = dict(autoregressive=autoregressive, draft=draft, draft_greedy=draft_greedy, early=early, verify=verify,
              greedy_token=greedy_token, verify_accept=verify_accept, speculate_greedy=speculate_greedy)
_compiled: dict[tuple, object] = {}  # (id(model), device type) -> _ModelGraphs

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


def _prepare_compiler(device: torch.device) -> None:
    """One-time setup before compiling: dynamo's recompile limits, and on CPU
    the (slow, noisy) import inductor's C++ path makes."""
    if device.type == "cpu":
        _quiet_cpp_extension_import()
    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, _RECOMPILE_LIMIT)
    cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4 * _RECOMPILE_LIMIT)


class _ModelGraphs:
    """The compiled step functions of one model in one state (see _compiled_fn)."""

    def __init__(self, model, state):
        self.model = weakref.ref(model)
        self.state = state
        self.fns: dict[str, object] = {}


def _model_state(model) -> tuple:
    """What a graph specializes on that lives inside the model: its dtype and
    device, and the RoPE tables' length (they only grow, in model.rope)."""
    w = model.lm_head.weight
    rope = model._rope
    return (w.dtype, w.device, None if rope is None else tuple(rope[0].shape))


def _fresh_copy(fn):
    """fn with a code object of its own: dynamo keeps its graphs (and their
    guards) on the code object, so each copy has its own set."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _compiled_fn(name: str, model, device: torch.device):
    """The compiled step `name` for this model (in its current state) on `device`.

    Dynamo's guards on nn.Modules (every parameter, buffer and attribute of the
    model: ~600 checks) cost 60-200 us per call on this CPU, a tenth of a
    compiled decode step. On CPU they are dropped
    (torch.compiler.skip_guard_on_all_nn_modules_unsafe), which is safe because
    each model gets its own copy of the step function (so its own graphs), held
    by a weak reference (an id reused by a later model does not match), and a
    new copy when `_model_state` changes. Parameters are graph inputs read at
    every call: new weights of the same shapes need no recompilation. The
    remaining guards (tensor arguments, the cache, E, k) stay.
    """
    slot_key = (id(model), device.type)
    slot = _compiled.get(slot_key)
    state = _model_state(model)
    if slot is None or slot.model() is not model or slot.state != state:
        for key in [k for k, v in _compiled.items() if v.model() is None]:
            del _compiled[key]  # graphs of models that no longer exist
        slot = _compiled[slot_key] = _ModelGraphs(model, state)
    fn = slot.fns.get(name)
    if fn is None:  # the compiler's one-time setup ran when StepFunctions was built
        # CUDA: graph-captured ("reduce-overhead": one replay per step, no
        # per-kernel launch from Python; its guards are kept: not measured on a
        # GPU yet). CPU: inductor's C++ wrapper removes the Python launcher
        # between its kernels, and the module guards go (docstring).
        if device.type == "cuda":
            opts = dict(mode="reduce-overhead")
        else:
            opts = dict(options={"cpp_wrapper": True,
                                 "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})
        fn = slot.fns[name] = torch.compile(_fresh_copy(_EAGER[name]), fullgraph=True, dynamic=False, **opts)
    return fn


class StepFunctions:
    """The step functions, eager or compiled (see the module docstring).

    Compiled on a GPU they are CUDA graphs ("reduce-overhead"), which sets two
    rules for their callers (DESIGN.md, "Graph-safe state"):

    - a step's output is overwritten by a later replay: what the loop keeps
      across calls is copied into a buffer of its own (the engine's `pending`);
    - tensors a graph reads or writes that are not the model's parameters (the
      cache, RoPE tables, draft head copies, the token history of the decoding
      aids, the pending tokens) are passed to `mark_static` once when they are
      allocated: a replay then reads them where they are, instead of copying
      each into the graph's own input buffer (262 MB per draft step for an int8
      head of Llama-3's vocabulary), and a step that writes one in place
      (cache, history) is captured at all (cudagraph trees run a step that
      mutates a non-static input without its graph).
    """

    def __init__(self, compile: bool, device):
        self.compile = compile
        self.device = torch.device(device)
        self.compile_s = 0.0  # seconds of this object's one-time calls of each graph (see _timed)
        self.graphs = compile and self.device.type == "cuda"  # the compiled steps are CUDA graphs
        if compile:
            _prepare_compiler(self.device)  # here, before an engine starts its clock
        for name, fn in _EAGER.items():
            setattr(self, name, self._timed(name) if compile else fn)

    def mark_static(self, *tensors) -> None:
        """Tensors that captured graphs read at a fixed address (class docstring);
        a no-op unless the steps are CUDA graphs. A new tensor marked later (the
        next run's cache) makes the graphs re-record, not recompile."""
        if not self.graphs:
            return
        for t in tensors:
            if t is not None:
                torch._dynamo.mark_static_address(t, guard=False)

    def _timed(self, name: str):
        one_time = _ONE_TIME_CALLS.get(self.device.type, 1)

        def call(model, *args):
            t0 = time.perf_counter()
            fn = _compiled_fn(name, model, self.device)
            key = (name, id(fn)) + tuple(_signature(a) for a in args)
            seen = _warm.get(key, 0)
            where = key + tuple(_addresses(a) for a in args) if self.graphs else None
            if seen >= one_time and (where is None or where in _captured):
                return fn(model, *args)
            # A one-time call of this graph: tracing and codegen (or loading them
            # from inductor's on-disk caches) and the run that loads the compiled
            # module; on a GPU also the CUDA graph's warm-up and capture, and its
            # capture again for new static inputs (_ONE_TIME_CALLS).
            out = fn(model, *args)
            dt = time.perf_counter() - t0
            _warm[key] = min(seen + 1, one_time)
            if where is not None:
                _captured.add(where)
            self.compile_s += dt
            compile_stats[name] = compile_stats.get(name, 0.0) + dt
            return out

        return call


# Calls of one graph (per shapes) counted as one-time cost, per device type.
# CPU: the first (compilation). CUDA, with cudagraph trees: the first compiles
# it and runs it without capture (warm-up), the second captures it; then the
# first call with a new address of a static input (the next run's cache or
# draft head: StepFunctions.mark_static) captures it again (_captured). Their
# tokens still count (the iteration ran), their time does not.
_ONE_TIME_CALLS = {"cpu": 1, "cuda": 2}

# Calls of each graph so far in this process, per shapes (see StepFunctions._timed).
_warm: dict = {}
# CUDA graphs captured so far: (graph, shapes, static input addresses).
_captured: set = set()


def _addresses(arg) -> tuple:
    """Where an argument's static tensors live: a CUDA graph is captured for them."""
    if isinstance(arg, torch.Tensor):
        return (arg.data_ptr(),) if getattr(arg, "_dynamo_static_input_type", None) is not None else ()
    if hasattr(arg, "signature"):  # DraftHead
        return tuple(t.data_ptr() for t in arg.tensors())
    if hasattr(arg, "k") and hasattr(arg, "seqlens"):  # StaticKVCache
        return (arg.k.data_ptr(), arg.v.data_ptr())
    return ()


def _signature(arg):
    """What a compiled step's graph depends on, for one argument."""
    if isinstance(arg, torch.Tensor):
        return (tuple(arg.shape), arg.dtype, arg.device)
    if isinstance(arg, torch.nn.Module):
        return id(arg)
    if hasattr(arg, "signature"):  # DraftHead
        return arg.signature()
    if hasattr(arg, "k") and hasattr(arg, "seqlens"):  # StaticKVCache
        return (tuple(arg.k.shape), arg.k.dtype, arg.k.device)
    return arg
