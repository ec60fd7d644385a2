"""The engine's decode steps read nothing back from tensors but the accepted lengths.

Every way Python code turns a tensor into a host value (`item`, `tolist`,
`__bool__`, `__int__`, `__index__`, `__float__`, ...) is patched to raise while
generate() runs a decode step; prefill and the per-generate setup are free to
read. The one read a step is allowed is the documented one: the step's emitted
tokens and accepted lengths, read by the iteration strategy's `_read_results`
(generation.iteration). On a GPU each patched call would be a
device-to-host sync; here, with CPU tensors, the patch catches the same Python
calls, so the test holds for every backend that runs here.
"""

import contextlib
import sys

import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels.generation import engine as engine_mod
from layerskip_kernels.model.config import LlamaConfig

from conftest import backend_params

READS = ("item", "tolist", "__bool__", "__int__", "__index__", "__float__", "__complex__", "numpy", "__array__")
# (function, attribute): the reads a step makes on purpose. The iteration
# reads the accepted lengths and emitted tokens once (DESIGN.md, "the one host
# read per iteration").
ALLOWED = {("_read_results", "tolist")}


class HostRead(AssertionError):
    pass


@contextlib.contextmanager
def no_host_reads(log, allowed=ALLOWED):
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def guard(name):
        original = originals[name]

        def patched(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_name
            if (caller, name) not in allowed:
                raise HostRead(f"Tensor.{name} called from {caller}() inside a decode step")
            log.append((caller, name))
            return original(self, *args, **kwargs)

        return patched

    for name in READS:
        setattr(torch.Tensor, name, guard(name))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return lk.LlamaForCausalLM(cfg).eval()


def guard_steps(monkeypatch, log, allowed=ALLOWED):
    """Wraps the engine's step (one iteration over every slot) so that it runs under no_host_reads."""
    step = engine_mod.Engine._step

    def wrapped(self, *args):
        with no_host_reads(log, allowed):
            return step(self, *args)

    monkeypatch.setattr(engine_mod.Engine, "_step", wrapped)


# The torch backend is left out on purpose: reference.py, the readable spec,
# sizes its key slice by the longest row (one documented host read per call).
# The kernel backends are what a decode step runs on a GPU.
@pytest.mark.parametrize("backend", [p for p in backend_params() if p.values[0] != "cuda"])
@pytest.mark.parametrize("exit_layer", [None, 2])
@pytest.mark.parametrize("do_sample", [False, True])
def test_decode_steps_read_no_tensor_values(model, monkeypatch, backend, exit_layer, do_sample):
    log = []
    guard_steps(monkeypatch, log)
    prompts = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11]]
    with lk.use_backend(backend):
        out = lk.generate(model, prompts, max_new_tokens=6, exit_layer=exit_layer, num_speculations=3,
                          do_sample=do_sample, seed=3, eos_token_id=[])
    assert all(len(s) == 6 for s in out.sequences)
    steps = out.stats["steps"]
    assert steps >= 1 and log, "no decode step ran under the guard"
    # Per step: the step's own read of its results (lengths and tokens, one tolist).
    assert log == [("_read_results", "tolist")] * steps, log


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.values[0] != "cuda"])
def test_adaptive_drafting_reads_one_flag_per_draft_step(model, monkeypatch, backend):
    """Adaptive drafting adds one documented read: after each draft step but the
    last, whether any row still drafts (the batch stops drafting when none does)."""
    log = []
    guard_steps(monkeypatch, log, ALLOWED | {("_any_drafting", "__bool__")})
    with lk.use_backend(backend):
        out = lk.generate(model, [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11]], max_new_tokens=8, exit_layer=2,
                          num_speculations=3, eos_token_id=[], speculation="adaptive")
    steps = out.stats["steps"]
    assert sum(1 for e in log if e[1] == "tolist") == steps
    assert sum(1 for e in log if e[1] == "__bool__") <= steps * (3 - 1)


def test_guard_catches_a_value_check(model, monkeypatch):
    # The guard is not vacuous: the ops' eager value checks (what the engine
    # skips with ops.trusted_inputs) are host reads and trip it.
    log = []
    guard_steps(monkeypatch, log)
    monkeypatch.setattr(lk.ops, "trusted_inputs", contextlib.nullcontext)
    with lk.use_backend("cpu" if lk.available_backends()["cpu"] is None else "torch"), pytest.raises(HostRead):
        lk.generate(model, [[1, 2, 3]], max_new_tokens=3, exit_layer=2, num_speculations=2, eos_token_id=[])


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.values[0] != "cuda"])
@pytest.mark.parametrize("exit_layer", [None, 2])
def test_greedy_with_decoding_aids_reads_only_the_results(model, monkeypatch, backend, exit_layer):
    """The aids run inside the greedy step functions over the device history:
    the iteration's one read stays the only one."""
    log = []
    guard_steps(monkeypatch, log)
    prompts = [[1, 2, 3, 1, 2], [7, 8], [9, 10, 11]]
    with lk.use_backend(backend):
        out = lk.generate(model, prompts, max_new_tokens=8, exit_layer=exit_layer, num_speculations=3,
                          eos_token_id=[], repetition_penalty=1.3, no_repeat_ngram_size=2)
    assert all(len(s) == 8 for s in out.sequences)
    assert out.stats["steps"] >= 1 and log == [("_read_results", "tolist")] * out.stats["steps"], log
