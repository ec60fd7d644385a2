"""linear_rows (the decode step's few-row products), linear_rows_int8 (the same
with int8 weights and per-row scales) and the model's decode GEMM path.

The cpu kernels (bf16 x with bf16 or int8 weights, fp32 x with fp32 or int8
weights), at every CPU level this machine has, against reference.linear_rows and
reference.linear_rows_int8 (bad input and odd layouts: tests/test_fuzz_ops.py);
the concatenated q/k/v and gate/up weights staying in step with the modules'
weights.
"""

import pytest
import torch

from layerskip_kernels import backends, ops, reference
from layerskip_kernels.model import linear as decode_gemm

from conftest import cpu_level_params, running_cpu_level
from helpers import tiny_model, torch_threads

native = pytest.mark.skipif(backends.native() is None, reason="layerskip_kernels._C is not built")

# (dtype, atol, rtol) against the fp32-accumulated reference: bf16 rounds the
# output once (2^-8 relative); the kernel's summation order differs from the
# reference's, a few ulps of fp32 before that rounding.
TOL = {torch.bfloat16: (1e-2, 8e-3), torch.float16: (1e-3, 1e-3), torch.float32: (1e-5, 1e-5)}

SHAPES = [  # (rows, K, N): decode-step sizes, K tails of the 16- and 32-wide loops, row blocks past 6 and 8,
    # remainders of every tile width (N prime), rows 4 KB apart (K = 2048 bf16), K blocks (6 rows x K = 1500),
    (1, 256, 384), (4, 256, 1536), (8, 768, 256), (3, 40, 7), (9, 33, 100), (16, 64, 65), (1, 31, 3), (5, 1, 2),
    (24, 130, 70), (2, 2048, 29), (6, 1500, 37), (7, 300, 13), (13, 97, 31),
    (67, 256, 100), (130, 64, 33),  # prompts (every product runs the kernel at the avx2 and avx512 levels)
]


def _case(rows, K, N, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, K, generator=g).to(dtype)
    w = (torch.randn(N, K, generator=g) / K**0.5).to(dtype)
    return x, w


@native
@pytest.mark.parametrize("op", ["linear_rows", "linear_rows_int8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows,K,N", SHAPES)
def test_parity_cpu(op, rows, K, N, dtype, cpu_level):
    args = (_case if op == "linear_rows" else _case_int8)(rows, K, N, dtype)
    atol, rtol = TOL[dtype]
    got = getattr(torch.ops.layerskip, op)(*args)
    want = getattr(reference, op)(*args)
    assert got.dtype == dtype and got.shape == (rows, N) and got.is_contiguous()
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)


@native
def test_exact_when_products_are_exact(cpu_level):
    # Small integers: every product and partial sum is exact in fp32, so any
    # summation order gives the reference's result bit for bit (a wrong index
    # or a dropped tail cannot hide inside the tolerance).
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.bfloat16, torch.float32):
        for rows, K, N in SHAPES + [(32, 100, 33)]:
            x = torch.randint(-3, 4, (rows, K), generator=g).to(dtype)
            w = torch.randint(-3, 4, (N, K), generator=g).to(dtype)
            assert torch.equal(torch.ops.layerskip.linear_rows(x, w), reference.linear_rows(x, w)), (rows, K, N)


@native
@pytest.mark.parametrize("op", ["linear_rows", "linear_rows_int8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rows_do_not_depend_on_their_batch(op, dtype, cpu_level):
    # Each row's output is the same, bit for bit, whatever rows share its call
    # (a verify pass's rows against draft steps of one row): the kernels' tiles
    # of every width sum the same products in the same order. Random values, so
    # a differing order would show in the last bits.
    for rows, K, N in [(13, 97, 31), (8, 2048, 50), (6, 1500, 37), (32, 256, 77)]:
        args = (_case if op == "linear_rows" else _case_int8)(rows, K, N, dtype, seed=3)
        fn = getattr(torch.ops.layerskip, op)
        whole = fn(*args)
        for m in range(rows):
            one = fn(args[0][m : m + 1], *args[1:])
            assert torch.equal(one[0], whole[m]), (rows, K, N, m)
        assert torch.equal(fn(args[0][5:9], *args[1:]), whole[5:9]), (rows, K, N)


def _weight_name(op, dtype):
    """The weight dtype as _C.linear_rows_threads names it."""
    return "int8" if op == "linear_rows_int8" else {torch.bfloat16: "bfloat16", torch.float32: "float32"}[dtype]


@native
@pytest.mark.parametrize("op", ["linear_rows", "linear_rows_int8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_one_row_is_the_same_on_any_thread_count(op, dtype, cpu_level):
    # A weight larger than kStreamBytes (csrc/cpu/dispatch.h: 512 KB) is split
    # over all threads even at one row, where it streams from L3 or DRAM. The split must not show in the result: one, two
    # and three threads (an uneven split) give the same bits. Random values, so
    # a differing summation order would show in the last bits.
    K, N = 1500, 777  # int8 1.1 MB, bf16 2.3 MB, fp32 4.7 MB; K has a tail; N splits into whole tiles and a rest
    native_c = backends.native()
    args = (_case if op == "linear_rows" else _case_int8)(1, K, N, dtype, seed=5)
    fn = getattr(torch.ops.layerskip, op)
    got = {}
    for threads in (1, 2, 3):
        with torch_threads(threads):
            assert native_c.linear_rows_threads(1, K, N, _weight_name(op, dtype)) == threads
            got[threads] = fn(*args)
    assert torch.equal(got[1], got[2]) and torch.equal(got[1], got[3])


@native
@pytest.mark.parametrize("weight_dtype,K,N_big,N_small", [
    ("bfloat16", 2048, 512, 64), ("float32", 1024, 512, 32), ("int8", 2048, 768, 128),
])
def test_split_over_threads_follows_the_bytes(weight_dtype, K, N_big, N_small, cpu_level):
    # 1.5-2 MB of weights (above kStreamBytes, 512 KB) run on all 8
    # threads at one row, where the FLOPs alone (kParallelWork in
    # csrc/cpu/linear.cpp) would give them 2 to 4; 128-256 KB stay on one
    # thread. More rows are more work per byte, never fewer threads.
    native_c = backends.native()
    with torch_threads(8):
        assert native_c.linear_rows_threads(1, K, N_big, weight_dtype) == 8
        assert native_c.linear_rows_threads(1, K, N_small, weight_dtype) == 1
        assert native_c.linear_rows_threads(4, K, N_big, weight_dtype) == 8
        assert native_c.linear_rows_threads(0, K, N_big, weight_dtype) == 1
    with torch_threads(1):
        assert native_c.linear_rows_threads(1, K, N_big, weight_dtype) == 1
    with pytest.raises(RuntimeError, match="weight_dtype"):
        native_c.linear_rows_threads(1, K, N_big, "float16")


@native
def test_batch_dims_strides_and_empty(cpu_level):
    x, w = _case(24, 64, 48, torch.bfloat16)
    x3 = x.view(2, 3, 4, 64)[:, ::2]  # [2, 2, 4, 64], not contiguous
    wt = w.t().contiguous().t()  # [48, 64] with strides (1, 48)
    torch.testing.assert_close(ops.linear_rows(x3, wt).float(), reference.linear_rows(x3, wt).float(),
                               atol=TOL[torch.bfloat16][0], rtol=TOL[torch.bfloat16][1])
    assert ops.linear_rows(x3, wt).shape == (2, 2, 4, 48)
    assert ops.linear_rows(torch.zeros(0, 64, dtype=torch.bfloat16), w).shape == (0, 48)
    zero_k = ops.linear_rows(torch.zeros(3, 0, dtype=torch.bfloat16), torch.zeros(5, 0, dtype=torch.bfloat16))
    assert torch.equal(zero_k, torch.zeros(3, 5, dtype=torch.bfloat16))


@native
def test_reads_nothing_past_the_rows(cpu_level):
    # x and w are views ending exactly at the end of their storage's used part;
    # the values after them are NaN: a read past a row (an unmasked tail) would
    # put NaN into the output.
    for K in (31, 33, 64):
        xs = torch.full((3 * K + 64,), float("nan"), dtype=torch.bfloat16)
        ws = torch.full((5 * K + 64,), float("nan"), dtype=torch.bfloat16)
        x, w = _case(3, K, 5, torch.bfloat16)
        xs[: 3 * K] = x.flatten()
        ws[: 5 * K] = w.flatten()
        got = torch.ops.layerskip.linear_rows(xs[: 3 * K].view(3, K), ws[: 5 * K].view(5, K))
        assert not got.isnan().any(), K


@native
def test_opcheck_and_compile():
    x, w = _case(4, 64, 32, torch.bfloat16)
    torch.library.opcheck(torch.ops.layerskip.linear_rows.default, (x, w))
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    fn = torch.compile(lambda a, b: torch.ops.layerskip.linear_rows(a, b) * 2, fullgraph=True, backend="aot_eager")
    assert torch.equal(fn(x, w), torch.ops.layerskip.linear_rows(x, w) * 2)
    assert not counters["graph_break"]


# --------------------------------------------------------------------------- linear_rows_int8


def _case_int8(rows, K, N, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, K, generator=g).to(dtype)
    w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    scale = torch.rand(N, generator=g) / (127 * K**0.5)
    return x, w, scale


@native
def test_int8_exact_when_products_are_exact(cpu_level):
    # Every int8 value widened to bf16 is exact; with small integer inputs and
    # power-of-two scales the whole result is exact in any summation order, so
    # a wrong index, a lost sign or a dropped tail cannot hide in a tolerance.
    g = torch.Generator().manual_seed(2)
    for dtype in (torch.bfloat16, torch.float32):
        for rows, K, N in SHAPES + [(32, 100, 33)]:
            x = torch.randint(-3, 4, (rows, K), generator=g).to(dtype)
            w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
            w[0, 0] = -128  # the one int8 value with no positive twin
            scale = 2.0 ** torch.randint(-8, 1, (N,), generator=g).float()
            got = torch.ops.layerskip.linear_rows_int8(x, w, scale)
            assert torch.equal(got, reference.linear_rows_int8(x, w, scale)), (rows, K, N)


@native
def test_int8_reads_nothing_past_the_rows(cpu_level):
    # As test_reads_nothing_past_the_rows; int8 has no NaN, so the weights'
    # storage continues with 127 and a read past a row would change the sum.
    for K in (31, 33, 64):
        xs = torch.full((3 * K + 64,), float("nan"), dtype=torch.bfloat16)
        ws = torch.full((5 * K + 64,), 127, dtype=torch.int8)
        x, w, scale = _case_int8(3, K, 5, torch.bfloat16)
        xs[: 3 * K] = x.flatten()
        ws[: 5 * K] = w.flatten()
        got = torch.ops.layerskip.linear_rows_int8(xs[: 3 * K].view(3, K), ws[: 5 * K].view(5, K), scale)
        assert not got.isnan().any(), K
        torch.testing.assert_close(got.float(), reference.linear_rows_int8(x, w, scale).float(),
                                   atol=TOL[torch.bfloat16][0], rtol=TOL[torch.bfloat16][1])


@native
def test_int8_batch_dims_strides_and_empty(cpu_level):
    x, w, scale = _case_int8(24, 64, 48, torch.bfloat16)
    x3 = x.view(2, 3, 4, 64)[:, ::2]  # [2, 2, 4, 64], not contiguous
    wt = w.t().contiguous().t()  # [48, 64] with strides (1, 48)
    st = torch.stack([scale, scale], 1)[:, 0]  # [48] with stride 2
    torch.testing.assert_close(ops.linear_rows_int8(x3, wt, st).float(),
                               reference.linear_rows_int8(x3, wt, st).float(),
                               atol=TOL[torch.bfloat16][0], rtol=TOL[torch.bfloat16][1])
    assert ops.linear_rows_int8(x3, wt, st).shape == (2, 2, 4, 48)
    assert ops.linear_rows_int8(torch.zeros(0, 64, dtype=torch.bfloat16), w, scale).shape == (0, 48)
    zero_k = ops.linear_rows_int8(torch.zeros(3, 0, dtype=torch.bfloat16), torch.zeros(5, 0, dtype=torch.int8),
                                  torch.ones(5))
    assert torch.equal(zero_k, torch.zeros(3, 5, dtype=torch.bfloat16))


@native
def test_int8_opcheck_and_compile():
    x, w, scale = _case_int8(4, 64, 32, torch.bfloat16)
    torch.library.opcheck(torch.ops.layerskip.linear_rows_int8.default, (x, w, scale))
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    fn = torch.compile(lambda a, b, c: torch.ops.layerskip.linear_rows_int8(a, b, c) * 2, fullgraph=True,
                       backend="aot_eager")
    assert torch.equal(fn(x, w, scale), torch.ops.layerskip.linear_rows_int8(x, w, scale) * 2)
    assert not counters["graph_break"]


@native
def test_decode_linear_routes_by_rows_size_and_grad(monkeypatch):
    # The rows x bytes rule (the running level may lift it: see the next test).
    monkeypatch.setattr(decode_gemm, "ROWS_ALWAYS_BY_LEVEL", {})
    op = torch.ops.layerskip.linear_rows
    calls = []
    monkeypatch.setattr(torch.ops.layerskip, "linear_rows", lambda *a: calls.append(tuple(a[0].shape)) or op(*a))
    small = torch.zeros(32, 64, dtype=torch.bfloat16)  # 4 KB: every row count up to ROWS_MAX
    # rows x bytes reaches ROWS_X_BYTES at exactly ROWS_ALWAYS + 2 rows of this weight
    K = decode_gemm.ROWS_X_BYTES // (2 * 32 * (decode_gemm.ROWS_ALWAYS + 2))
    large = torch.zeros(32, K, dtype=torch.bfloat16)
    with torch.no_grad():
        for rows in (1, decode_gemm.ROWS_MAX, decode_gemm.ROWS_MAX + 1):
            decode_gemm.decode_linear(torch.zeros(rows, 64, dtype=torch.bfloat16), small)
        for rows in (decode_gemm.ROWS_ALWAYS + 2, decode_gemm.ROWS_ALWAYS + 3):
            decode_gemm.decode_linear(torch.zeros(rows, K, dtype=torch.bfloat16), large)
        # fp32: the kernel up to ROWS_ALWAYS_FP32 rows, then ATen
        decode_gemm.decode_linear(torch.zeros(decode_gemm.ROWS_ALWAYS_FP32, 64), small.float())
        decode_gemm.decode_linear(torch.zeros(decode_gemm.ROWS_ALWAYS_FP32 + 1, 64), small.float())
    assert calls == [(1, 64), (decode_gemm.ROWS_MAX, 64), (decode_gemm.ROWS_ALWAYS + 2, K),
                     (decode_gemm.ROWS_ALWAYS_FP32, 64)]
    x, w = _case(4, 64, 32, torch.bfloat16)
    wg = w.clone().requires_grad_()
    c = decode_gemm.decode_linear(x, wg)  # needs a gradient: ATen (the op has no backward)
    assert len(calls) == 4
    c.float().sum().backward()
    assert wg.grad is not None and wg.grad.abs().sum() > 0


def test_concat_weights_follow_the_modules():
    m = tiny_model(layers=2).eval()
    attn, mlp = m.model.layers[0].self_attn, m.model.layers[1].mlp
    cat = lambda *ls: torch.cat([lin.weight for lin in ls])  # noqa: E731
    assert torch.equal(attn.qkv(), cat(attn.q_proj, attn.k_proj, attn.v_proj))
    with torch.no_grad():
        attn.k_proj.weight.add_(1.0)  # in place: the version counter moves
    assert torch.equal(attn.qkv(), cat(attn.q_proj, attn.k_proj, attn.v_proj))
    state = {k: v + 0.5 for k, v in m.state_dict().items()}
    m.load_state_dict(state, assign=True)  # new storages
    assert torch.equal(mlp.gate_up(), cat(mlp.gate_proj, mlp.up_proj))
    m.to(torch.bfloat16)
    assert mlp.gate_up().dtype == torch.bfloat16
    assert torch.equal(mlp.gate_up(), cat(mlp.gate_proj, mlp.up_proj))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(m(ids).float(), m.exit_head(m.forward_train(ids)).float(), atol=0.05, rtol=0.02)


def test_compiled_reads_the_last_refresh():
    m = tiny_model(layers=2).to(torch.bfloat16).eval()
    attn = m.model.layers[0].self_attn
    cat = lambda: torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])  # noqa: E731
    torch._dynamo.reset()
    fn = torch.compile(lambda: attn.qkv() * 1, fullgraph=True, backend="eager")
    assert torch.equal(fn(), cat())  # never refreshed: concatenated inside the graph
    with torch.no_grad():
        attn.q_proj.weight.mul_(2.0)
    m.refresh_decode_weights()
    assert torch.equal(fn(), cat())  # refreshed: the stored concatenation
    torch._dynamo.reset()


@native
@pytest.mark.parametrize("level", [p for p in cpu_level_params() if p.values[0] in ("avx2", "avx512", "avx512_bf16")])
def test_decode_linear_rule_follows_the_cpu_level(level, monkeypatch):
    """Products of a weight too large for the rows x bytes rule: at the avx2
    and avx512 levels every product runs the kernel, prompts included
    (ROWS_ALWAYS_BY_LEVEL: ATen's bf16 GEMM there is a third to a half of the
    kernel's speed at any row count); at avx512_bf16 up to 8 rows do (a
    Llama-3.2-1B verify pass at k = 4 to 7, or two rows at k = 3), then ATen."""
    op = torch.ops.layerskip.linear_rows
    calls = []
    monkeypatch.setattr(torch.ops.layerskip, "linear_rows", lambda *a: calls.append(tuple(a[0].shape)[0]) or op(*a))
    K = decode_gemm.ROWS_X_BYTES // (2 * 32 * (decode_gemm.ROWS_ALWAYS + 1)) + 64  # past ROWS_X_BYTES from 5 rows
    w = torch.zeros(32, K, dtype=torch.bfloat16)
    rows_tried = [*range(decode_gemm.ROWS_ALWAYS, 11), decode_gemm.ROWS_MAX + 1, 64]
    with running_cpu_level(level), torch.no_grad():
        for rows in rows_tried:
            y = decode_gemm.decode_linear(torch.ones(rows, K, dtype=torch.bfloat16), w)
            assert y.shape == (rows, 32) and not y.any()
    want = {"avx2": rows_tried, "avx512": rows_tried, "avx512_bf16": [4, 5, 6, 7, 8]}[level]
    assert calls == want
