"""draft_verify_attention: every backend that runs here against reference.py."""

import itertools
import math
import os

import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels import ops, reference
from layerskip_kernels.model.llama import rope_tables
from layerskip_kernels.model.config import LlamaConfig

from conftest import backend_device, backend_params

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ULP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
# A kernel that computes in fp32 and rounds once at the end has, in fp16/bf16,
# the error distribution of the reference (the final rounding dominates both):
# its RMS error may exceed the reference's by this factor only. Rounding the
# scores or probabilities to bf16, or a scale off by 1/sqrt(D+1), raise it by
# 1.3x or more (measured on the full grid, see tests/mutation/report.md).
RMS_SLACK = 1.05
# Triton and the CUDA tensor-core kernel on a GPU round P to the input dtype
# before the PV product (as flash-attention does): a documented extra error,
# allowed explicitly (the CUDA emulation in tests/cpp/emu checks the CUDA
# kernel against this bound on the CPU).
RMS_SLACK_P_ROUNDED = 1.6

FULL_GRID = list(
    itertools.product(
        (1, 3),  # B
        (1, 2, 5, 9),  # S
        ((4, 4), (8, 2), (6, 3)),  # (Hq, Hkv)
        (32, 64, 128),  # D
        DTYPES,
        (False, True),  # RoPE
    )
)


def small_grid():
    # The Triton interpreter is slow: every S, head layout and D, with dtype,
    # RoPE and batch cycling so that each value still appears many times.
    out = []
    for i, (S, heads, D) in enumerate(itertools.product((1, 2, 5, 9), ((4, 4), (8, 2), (6, 3)), (32, 64, 128))):
        out.append(((1, 3)[i % 2], S, heads, D, DTYPES[i % 3], bool((i // 2) % 2)))
    return out


def make_case(B, S, Hq, Hkv, D, dtype, rope, device, T_max=37, seed=0, noncontig_q=True):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g)
    if noncontig_q:
        # A view with a non-unit stride over the head axis.
        q = rnd(B, S, 2 * Hq, D)[:, :, ::2]
    else:
        q = rnd(B, S, Hq, D)
    k_cache = rnd(B, Hkv, T_max, D)
    v_cache = rnd(B, Hkv, T_max, D)
    k_new, v_new = rnd(B, S, Hkv, D), rnd(B, S, Hkv, D)
    # Ragged lengths: empty cache, full cache (T_max - S), and one in between.
    lens = [T_max - S, 0, (7 * seed + 11) % (T_max - S + 1)][:B] if B > 1 else [T_max - S]
    seqlens = torch.tensor(lens, dtype=torch.int32)
    cos = sin = None
    if rope:
        cfg = LlamaConfig(hidden_size=D, num_attention_heads=1, head_dim=D, rope_theta=500.0)
        cos, sin = rope_tables(cfg, T_max)
    data = [t.to(device=device, dtype=dtype) for t in (q, k_cache, v_cache, k_new, v_new)]
    tables = [None if t is None else t.to(device) for t in (cos, sin)]
    return data + [seqlens.to(device)] + tables


def reference_runs(args, softmax_scale=None):
    """(cpu_args, truth, ref_args, ref_out): the fp64 truth from the same
    low-precision inputs, and the reference run in their dtype (ref_args hold
    the caches it wrote)."""
    cpu_args = [None if a is None else a.cpu() for a in args]
    truth_args = [None if a is None else (a.double() if a.is_floating_point() else a.clone()) for a in cpu_args]
    truth = reference.draft_verify_attention(*truth_args, softmax_scale=softmax_scale)
    ref_args = [None if a is None else a.clone() for a in cpu_args]
    ref_out = reference.draft_verify_attention(*ref_args, softmax_scale=softmax_scale)
    return cpu_args, truth, ref_args, ref_out


def ulp_of_output(truth, dtype):
    """The spacing of `dtype` at the output's largest magnitude."""
    M = truth.abs().max().item()
    return ULP[dtype] * 2.0 ** math.floor(math.log2(M)) if M > 0 else ULP[dtype] * 2.0**-126


def check_error(out, truth, ref_out, dtype, backend="torch"):
    """STYLE.md's rule, tight enough to see precision bugs.

    Max error: at most 3x the reference's own error in this dtype (the fp32
    accumulation order differs between backends), with a floor of 2 ulp of the
    output's magnitude. fp16/bf16 additionally: RMS error within RMS_SLACK of
    the reference's (the max alone hides a bf16 rounding inside the kernel).
    """
    out = out.cpu().double()
    diff_ref = ref_out.double() - truth
    diff = out - truth
    err_ref, err = diff_ref.abs().max().item(), diff.abs().max().item()
    limit = 3 * err_ref + 2 * ulp_of_output(truth, dtype)
    assert err <= limit, f"max err {err:.3g} > {limit:.3g} (reference {err_ref:.3g})"
    if dtype != torch.float32:
        rms_ref, rms = diff_ref.pow(2).mean().sqrt().item(), diff.pow(2).mean().sqrt().item()
        p_rounded = backend in ("triton", "cuda") and backend_device(backend) == "cuda"
        slack = RMS_SLACK_P_ROUNDED if p_rounded else RMS_SLACK
        assert rms <= slack * rms_ref, f"RMS err {rms:.3g} > {slack} x reference's {rms_ref:.3g}"


def run_parity(backend, B, S, Hq, Hkv, D, dtype, rope, softmax_scale=None, **case):
    device = backend_device(backend)
    args = make_case(B, S, Hq, Hkv, D, dtype, rope, device, **case)
    cpu_args, truth, ref_args, ref_out = reference_runs(args, softmax_scale)

    got_args = [None if a is None else a.clone() for a in args]
    with lk.use_backend(backend):
        out = ops.draft_verify_attention(*got_args, softmax_scale=softmax_scale)
    assert out.dtype == dtype and out.shape == (B, S, Hq, D)
    check_error(out, truth, ref_out, dtype, backend)

    # Cache: new positions written as the reference writes them, all else untouched.
    k_ref, v_ref = ref_args[1], ref_args[2]
    k_got, v_got = got_args[1].cpu(), got_args[2].cpu()
    assert torch.equal(v_got, v_ref)
    if rope:  # rotated keys may differ by one rounding (FMA contraction)
        diff = (k_got.double() - k_ref.double()).abs()
        assert (diff <= ULP[dtype] * k_ref.double().abs().clamp(min=1.0)).all()
        written = torch.zeros_like(k_ref, dtype=torch.bool)
        for b in range(B):
            s0 = int(cpu_args[5][b])
            written[b, :, s0 : s0 + S] = True
        assert torch.equal(k_got[~written], cpu_args[1][~written])
    else:
        assert torch.equal(k_got, k_ref)


def case_id(B, S, heads, D, dtype, rope):
    return f"B{B}-S{S}-{heads[0]}x{heads[1]}-D{D}-{str(dtype)[6:]}-{'rope' if rope else 'norope'}"


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("B,S,heads,D,dtype,rope", small_grid(), ids=[case_id(*c) for c in small_grid()])
def test_parity_grid(backend, B, S, heads, D, dtype, rope):
    run_parity(backend, B, S, heads[0], heads[1], D, dtype, rope)


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.values[0] != "triton"])
def test_parity_full_grid(backend):
    # Every combination of the grid on the fast backends.
    for B, S, (Hq, Hkv), D, dtype, rope in FULL_GRID:
        run_parity(backend, B, S, Hq, Hkv, D, dtype, rope)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("D", [96, 16])
def test_other_head_dims(backend, D):
    # Every backend runs these head dims (the CUDA kernel is built for D in
    # {16, 32, 64, 96, 128}): a refusal is a failure.
    run_parity(backend, 2, 3, 4, 2, D, torch.float32, True)
    run_parity(backend, 2, 3, 4, 2, D, torch.bfloat16, False)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [0.37, 1.0 / 3.0])
def test_softmax_scale(backend, dtype, scale):
    # A non-default scale must be used, not replaced by 1/sqrt(D): 1/sqrt(64)
    # differs from both by far more than the tolerance.
    run_parity(backend, 2, 3, 8, 2, 64, dtype, True, softmax_scale=scale)


@pytest.mark.parametrize("backend", backend_params())
def test_long_prefill(backend):
    # Prefill goes through the same op: S far beyond 16 must still be exact.
    run_parity(backend, 1, 33, 4, 2, 32, torch.float32, True)


def test_reference_matches_naive_softmax():
    # Independent check of the spec: explicit loops, mask and softmax per query.
    B, S, Hq, Hkv, D = 2, 3, 4, 2, 8
    q, kc, vc, kn, vn, lens, cos, sin = make_case(B, S, Hq, Hkv, D, torch.float64, False, "cpu", T_max=12)
    lens = torch.tensor([0, 6], dtype=torch.int32)
    kc0, vc0 = kc.clone(), vc.clone()
    out = reference.draft_verify_attention(q, kc, vc, kn, vn, lens)
    for b in range(B):
        L = int(lens[b])
        keys = torch.cat([kc0[b, :, :L], kn[b].transpose(0, 1)], dim=1)  # [Hkv, L+S, D]
        vals = torch.cat([vc0[b, :, :L], vn[b].transpose(0, 1)], dim=1)
        for s in range(S):
            for h in range(Hq):
                kvh = h // (Hq // Hkv)
                sc = (keys[kvh, : L + s + 1] @ q[b, s, h]) / D**0.5
                expect = torch.softmax(sc, 0) @ vals[kvh, : L + s + 1]
                torch.testing.assert_close(out[b, s, h], expect, rtol=1e-12, atol=1e-12)
        assert torch.equal(kc[b, :, L : L + S], kn[b].transpose(0, 1))


@pytest.mark.parametrize("backend", [pytest.param("torch")] + backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_garbage_beyond_length_is_ignored(backend, dtype):
    # NaN and inf in never-written positions of a shorter row (and in the
    # cache slots the new keys will overwrite) leave the output bit-identical to
    # a run with a clean cache, and within tolerance of the reference.
    device = backend_device(backend)
    args = make_case(2, 3, 4, 2, 32, dtype, True, device, T_max=16, seed=4)
    args[5] = torch.tensor([2, 9], dtype=torch.int32, device=device)
    clean = [None if a is None else a.clone() for a in args]
    dirty = [None if a is None else a.clone() for a in args]
    for t in (dirty[1], dirty[2]):
        t[0, :, 2:] = float("nan")  # row 0 keeps 0..1, writes 2..4
        t[0, :, 7] = float("inf")
        t[1, :, 12:] = -float("inf")
    with lk.use_backend(backend):
        out_clean = ops.draft_verify_attention(*clean)
        out_dirty = ops.draft_verify_attention(*dirty)
    assert torch.isfinite(out_dirty).all()
    assert torch.equal(out_dirty, out_clean)
    # The positions written by the call are the same in both caches.
    for b, L in enumerate((2, 9)):
        assert torch.equal(dirty[1][b, :, L : L + 3], clean[1][b, :, L : L + 3])
        assert torch.equal(dirty[2][b, :, L : L + 3], clean[2][b, :, L : L + 3])
    _, truth, _, ref_out = reference_runs(args)
    check_error(out_dirty, truth, ref_out, dtype, backend)


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.values[0] == "cpu"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_results_do_not_depend_on_thread_count(backend, dtype):
    # Rows, heads and key tiles are split over threads: the split must not
    # change the arithmetic (a reduction order depending on the thread count
    # would make results machine-dependent).
    args = make_case(3, 9, 8, 2, 64, dtype, True, "cpu", T_max=300, seed=5)
    args[5] = torch.tensor([291, 0, 150], dtype=torch.int32)
    before = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            got = [None if a is None else a.clone() for a in args]
            with lk.use_backend(backend):
                outs.append((ops.draft_verify_attention(*got), got[1], got[2]))
    finally:
        torch.set_num_threads(before)
    for out, kc, vc in outs[1:]:
        assert torch.equal(out, outs[0][0]) and torch.equal(kc, outs[0][1]) and torch.equal(vc, outs[0][2])


# --------------------------------------------------------------------------- bad input


def bad_inputs():
    def case(**changes):
        q, kc, vc, kn, vn, lens, cos, sin = make_case(2, 3, 4, 2, 8, torch.float32, True, "cpu", T_max=10)
        args = dict(q=q, k_cache=kc, v_cache=vc, k_new=kn, v_new=vn, cache_seqlens=lens, cos=cos, sin=sin)
        for name, fn in changes.items():
            args[name] = fn(args[name])
        return args

    return [
        ("q", case(q=lambda t: t[0])),
        ("k_cache", case(k_cache=lambda t: t[:, :, :, :4])),
        ("v_cache", case(v_cache=lambda t: t[:, :, :5])),
        ("k_new", case(k_new=lambda t: t[:, :2])),
        ("v_new", case(v_new=lambda t: t[:, :, :1])),
        ("multiple", case(q=lambda t: t[:, :, :3])),  # Hq=3 with Hkv=2
        ("v_cache", case(v_cache=lambda t: t.double())),
        ("q", case(q=lambda t: t.int())),
        ("cache_seqlens", case(cache_seqlens=lambda t: t.long())),
        ("cache_seqlens", case(cache_seqlens=lambda t: t[:1])),
        ("cache_seqlens", case(cache_seqlens=lambda t: torch.tensor([0, 8], dtype=torch.int32))),  # 8 + 3 > 10
        ("cache_seqlens", case(cache_seqlens=lambda t: torch.tensor([-1, 0], dtype=torch.int32))),
        ("cos", case(cos=lambda t: t[:5])),
        ("sin", case(sin=lambda t: t.double())),
        ("cos and sin", case(sin=lambda t: None)),
    ]


@pytest.mark.parametrize("backend", [pytest.param("torch")] + backend_params())
@pytest.mark.parametrize("name,args", bad_inputs(), ids=[f"{n}-{i}" for i, (n, _) in enumerate(bad_inputs())])
def test_bad_input(backend, name, args):
    device = backend_device(backend)
    args = {k: (None if v is None else v.to(device)) for k, v in args.items()}
    before = (args["k_cache"].clone(), args["v_cache"].clone())
    with lk.use_backend(backend), pytest.raises(ValueError, match=name):
        ops.draft_verify_attention(**args)
    # Nothing was written.
    assert torch.equal(args["k_cache"], before[0]) and torch.equal(args["v_cache"], before[1])


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.values[0] in ("cpu", "cuda")])
@pytest.mark.parametrize("name,args", bad_inputs(), ids=[f"{n}-{i}" for i, (n, _) in enumerate(bad_inputs())])
def test_bad_input_raw_op(backend, name, args):
    # The same bad inputs reach the compiled op's own checks (csrc/checks.h),
    # not the Python wrapper's. cache_seqlens values are checked by the CPU op;
    # the CUDA op skips such rows without writing (test_compiled_op_checks_directly).
    device = backend_device(backend)
    value_case = name == "cache_seqlens" and args["cache_seqlens"].shape == (2,) and args["cache_seqlens"].dtype == torch.int32
    if backend == "cuda" and value_case:
        return
    args = {k: (None if v is None else v.to(device)) for k, v in args.items()}
    before = (args["k_cache"].clone(), args["v_cache"].clone())
    with pytest.raises(RuntimeError, match=name):
        torch.ops.layerskip.draft_verify_attention(*args.values())
    assert torch.equal(args["k_cache"], before[0]) and torch.equal(args["v_cache"], before[1])


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.values[0] in ("cpu", "cuda")])
def test_compiled_op_checks_directly(backend):
    # torch.ops.layerskip.* called without the Python wrapper: shapes are still
    # checked, naming the argument, and cache_seqlens + S > T_max never writes
    # out of bounds. The CPU op raises for it; the CUDA op (which would need a
    # host sync to raise) skips that row's writes instead.
    device = backend_device(backend)
    q, kc, vc, kn, vn, lens, cos, sin = make_case(2, 3, 4, 2, 64, torch.float32, True, device, T_max=10)
    with pytest.raises(RuntimeError, match="q must be"):
        torch.ops.layerskip.draft_verify_attention(q[0], kc, vc, kn, vn, lens, cos, sin)
    # A view of a larger buffer: the guard region after T_max must stay untouched.
    big_k, big_v = torch.randn(2, 2, 12, 64, device=device), torch.randn(2, 2, 12, 64, device=device)
    kc, vc = big_k[:, :, :10], big_v[:, :, :10]
    before_k, before_v = big_k.clone(), big_v.clone()
    bad = torch.tensor([0, 8], dtype=torch.int32, device=device)
    if backend == "cpu":
        with pytest.raises(RuntimeError, match="cache_seqlens"):
            torch.ops.layerskip.draft_verify_attention(q, kc, vc, kn, vn, bad, cos, sin)
        assert torch.equal(big_k, before_k) and torch.equal(big_v, before_v)
    else:
        torch.ops.layerskip.draft_verify_attention(q, kc, vc, kn, vn, bad, cos, sin)
        torch.cuda.synchronize()
        assert torch.equal(big_k[1], before_k[1]) and torch.equal(big_v[1], before_v[1])
        assert torch.equal(big_k[:, :, 10:], before_k[:, :, 10:])


def test_schemas_match_compiled():
    for name, schema in ops.SCHEMAS.items():
        assert str(getattr(torch.ops.layerskip, name).default._schema) == "layerskip::" + schema


def test_opcheck_attention():
    q, kc, vc, kn, vn, lens, cos, sin = make_case(2, 3, 4, 2, 8, torch.float32, True, "cpu", T_max=10)
    lens = torch.tensor([0, 4], dtype=torch.int32)
    torch.library.opcheck(torch.ops.layerskip.draft_verify_attention.default, (q.contiguous(), kc, vc, kn, vn, lens, cos, sin, None))


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.values[0] == "triton"])
@pytest.mark.parametrize(
    "B,S,Hq,Hkv,D,dtype,rope,num_splits",
    [
        (3, 5, 8, 2, 64, torch.float32, True, 3),  # every row's keys span several splits
        (3, 1, 6, 3, 96, torch.float16, True, 7),  # more splits than key blocks: empty splits
        (2, 3, 4, 4, 32, torch.bfloat16, False, 2),
    ],
)
def test_triton_split_kv(backend, B, S, Hq, Hkv, D, dtype, rope, num_splits):
    # The split-KV path (partial softmax per split + log-sum-exp merge) is only
    # chosen for long caches on a GPU: force it here, on a cache long enough
    # that the splits hold different keys.
    from layerskip_kernels import triton as triton_kernels

    device = backend_device(backend)
    args = make_case(B, S, Hq, Hkv, D, dtype, rope, device, T_max=200, seed=3)
    _, truth, ref_args, ref_out = reference_runs(args)
    got_args = [None if a is None else a.clone() for a in args]
    out = triton_kernels.draft_verify_attention(*got_args, num_splits=num_splits)
    assert out.dtype == dtype and out.shape == (B, S, Hq, D)
    check_error(out, truth, ref_out, dtype, backend)
    assert torch.equal(got_args[2].cpu(), ref_args[2])
    diff = (got_args[1].cpu().double() - ref_args[1].double()).abs()
    assert (diff <= ULP[dtype] * ref_args[1].double().abs().clamp(min=1.0)).all()
