"""Graph-safe state of the decode loop (DESIGN.md, "Graph-safe state"), checked
on the CPU for what a GPU run relies on: a compiled step's output is never kept
across calls (a CUDA-graph replay overwrites it), every tensor the captured
graphs read besides the parameters is marked static, the calls that capture a
graph count as compile time, and the int8 draft head has a GPU path that never
widens the head to fp32."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import layerskip_kernels as lk
from layerskip_kernels import reference
from layerskip_kernels.generation import steps
from layerskip_kernels.generation.engine import Engine
from layerskip_kernels.generation.sampling import DecodingAids
from layerskip_kernels.model.linear import int8_route, linear_int8_aten

from helpers import damp_late_layers, make_hf_checkpoint

PROMPTS = [[5, 6, 7, 8, 9], [3, 4]]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("graph_state")
    make_hf_checkpoint(path, "gqa_tied", num_hidden_layers=4, edit=damp_late_layers(2))
    return lk.LlamaForCausalLM.from_pretrained(path)


def _engine(model, **kw):
    engine = Engine(model, max_batch_size=2, **kw)
    for p in PROMPTS:
        engine.add(p, max_new_tokens=12, eos_token_id=[])
    return engine


@pytest.mark.parametrize("kw", [dict(), dict(exit_layer=2), dict(exit_layer=2, speculation="adaptive"),
                                dict(exit_layer=2, do_sample=True, seed=1)])
def test_step_outputs_are_copied_into_the_pending_buffer(model, kw):
    engine = _engine(model, **kw)
    outputs, allocated = [], []
    for name in ("greedy_token", "speculate_greedy", "verify_accept", "verify"):
        fn = getattr(engine.steps, name)

        def spy(*a, fn=fn):
            out = fn(*a)
            outputs.extend(out if isinstance(out, tuple) else (out,))
            return out

        setattr(engine.steps, name, spy)
    allocate = engine._allocate

    def spy_allocate(*a):
        allocate(*a)
        allocated.append(engine.state.pending)

    engine._allocate = spy_allocate
    engine.run()
    assert outputs and len(allocated) == 1
    assert engine.state.pending is allocated[0]  # the buffer of _allocate, written in place
    assert all(engine.state.pending.data_ptr() != t.data_ptr() for t in outputs)


def test_graph_inputs_are_marked_static(model, monkeypatch):
    marked = []
    monkeypatch.setattr(steps.StepFunctions, "mark_static", lambda self, *ts: marked.extend(ts))
    engine = _engine(model, exit_layer=2, draft_quantization="int8", aids=DecodingAids(repetition_penalty=1.2))
    engine.run()
    ids = {id(t) for t in marked}
    cos, sin = model._rope
    history = engine.aids.step_args()[1]
    expected = dict(k=engine.cache.k, v=engine.cache.v, cos=cos, sin=sin, pending=engine.state.pending,
                    history=history, head=engine.draft_head.weight, scale=engine.draft_head.scale)
    assert not [name for name, t in expected.items() if id(t) not in ids]


def test_mark_static_marks_only_for_cuda_graphs():
    t = torch.zeros(3)
    steps.StepFunctions(False, "cpu").mark_static(t)
    steps.StepFunctions(True, "cpu").mark_static(t)
    assert not hasattr(t, "_dynamo_static_input_type")
    fns = steps.StepFunctions(False, "cpu")
    fns.graphs = True  # what compile=True on a CUDA device sets
    fns.mark_static(t, None)
    assert t._dynamo_static_input_type == "unguarded"


def test_capture_calls_count_as_compile_time(model, monkeypatch):
    """On a GPU the first two calls of a graph compile, warm up and capture it,
    and the first call with a new static input (the next run's cache) captures
    it again: those are one-time cost, every other call is decoding."""
    assert steps._ONE_TIME_CALLS == {"cpu": 1, "cuda": 2}
    monkeypatch.setattr(steps, "_compiled_fn", lambda name, model, device: steps._EAGER[name])
    monkeypatch.setattr(steps, "_warm", {})
    monkeypatch.setattr(steps, "_captured", set())
    one_time = []
    monkeypatch.setattr(steps, "compile_stats", type("Count", (dict,), {
        "__setitem__": lambda self, key, value: one_time.append(key)})())
    fns = steps.StepFunctions(True, "cuda")  # no GPU is touched: the compiled function is the eager one
    assert fns.graphs
    from layerskip_kernels.cache import StaticKVCache

    model.rope(32, "cpu")
    model.refresh_decode_weights()
    tok = torch.tensor([3, 4])
    with torch.inference_mode():
        for cache in (StaticKVCache.for_model(model, 2, 32), StaticKVCache.for_model(model, 2, 32)):
            for _ in range(5):
                fns.greedy_token(model, tok, cache)
    assert one_time == ["greedy_token"] * 3  # compile + warm-up, capture; capture for the second cache
    assert list(steps._warm.values()) == [2] and len(steps._captured) == 2


@pytest.mark.parametrize("device, dtype, cpu_kernel, selected, route", [
    ("cuda", torch.bfloat16, False, None, "aten"),
    ("cuda", torch.float32, False, "cuda", "aten"),
    ("cuda", torch.bfloat16, False, "triton", "aten"),
    ("cuda", torch.bfloat16, False, "torch", "op"),  # the reference, when asked for
    ("cuda", torch.float16, False, None, "op"),  # fp16 sums of int8 rows could overflow before the scale
    ("cpu", torch.bfloat16, True, None, "kernel"),
    ("cpu", torch.bfloat16, False, "torch", "op"),
])
def test_int8_head_route(device, dtype, cpu_kernel, selected, route):
    assert int8_route(device, dtype, cpu_kernel, selected) == route


class _Outputs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.seen.append((t.dtype, tuple(t.shape)))
        return out


# (dtype, atol, rtol): one extra rounding to x's dtype before the scale.
TOL = {torch.bfloat16: (2e-2, 2e-2), torch.float32: (1e-4, 1e-5)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_int8_gpu_path_matches_reference_without_a_wide_copy(dtype):
    g = torch.Generator().manual_seed(0)
    N, K = 300, 64
    x = torch.randn(2, 3, K, generator=g).to(dtype)
    w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    s = torch.rand(N, generator=g) / 50
    with _Outputs() as mode:
        got = linear_int8_aten(x, w, s)
    assert got.dtype == dtype and got.shape == (2, 3, N)
    wide = [d for d, shape in mode.seen if shape == (N, K) and d.itemsize > dtype.itemsize]
    assert not wide, wide  # the head is never widened past x's dtype (the reference makes it fp32)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got.float(), reference.linear_rows_int8(x, w, s).float(), atol=atol, rtol=rtol)
