"""Triton code paths that a GPU takes and the interpreter does not by default.

Under the interpreter the launchers pick one big key block, one KV split and
one vocabulary slice. These tests force the GPU's tiles (32-key blocks at
D = 128, several KV splits, several vocabulary slices of a few ids) and
check parity with reference.py; they also cover the memory-safety rules that
a traced or captured graph relies on (lengths never read on the host, so the
kernels must stay inside the cache whatever cache_seqlens holds), masked keys
holding NaN, and the device guard of every launch.
"""

import contextlib
from unittest import mock

import pytest
import torch

from layerskip_kernels import reference

from conftest import backend_device, backend_params
from test_acceptance_ops import draft_lens_for, garbage_past_lens, greedy_case, sampling_case
from test_attention_ops import check_error, make_case, reference_runs

pytestmark = pytest.mark.parametrize("backend", [p for p in backend_params() if p.values[0] == "triton"])


def _kernels():
    from layerskip_kernels import triton as triton_kernels

    return triton_kernels


# --------------------------------------------------------------------------- attention


@pytest.mark.parametrize(
    "B,S,Hq,Hkv,D,dtype,rope,block_n,num_splits,min_keys",
    [
        (2, 5, 8, 2, 128, torch.bfloat16, True, 32, 1, None),  # the GPU's D > 64 block
        (3, 9, 4, 4, 128, torch.float32, True, 32, 4, 32),  # splits of one block each
        (2, 16, 6, 3, 64, torch.float16, False, 16, 3, 64),  # tiles of 64 rows, split
        (1, 1, 4, 1, 96, torch.bfloat16, True, 16, 7, 16),  # more splits than keys need
    ],
)
def test_attention_gpu_tiles(backend, B, S, Hq, Hkv, D, dtype, rope, block_n, num_splits, min_keys):
    device = backend_device(backend)
    args = make_case(B, S, Hq, Hkv, D, dtype, rope, device, T_max=150, seed=5)
    _, truth, ref_args, ref_out = reference_runs(args)
    got = [None if a is None else a.clone() for a in args]
    out = _kernels().draft_verify_attention(*got, num_splits=num_splits, block_n=block_n, min_keys_per_split=min_keys)
    check_error(out, truth, ref_out, dtype)
    assert torch.equal(got[2].cpu(), ref_args[2])


def test_choose_splits_on_a_gpu(backend):
    # The split count a GPU gets (no host read of the lengths: T_max decides),
    # then run through the kernel with the GPU's minimum split size.
    from layerskip_kernels.triton import _utils, attention

    with mock.patch.object(_utils, "interpreting", lambda d: False), mock.patch.object(_utils, "sm_count", lambda d: 132):
        n = attention._choose_splits(programs=8, T_max=2048, device=torch.device("cuda"))
        assert n == 8  # min(cdiv(264, 8), 2048 / 256)
        assert attention._choose_splits(programs=8, T_max=300, device=torch.device("cuda")) == 2
        assert attention._choose_splits(programs=4096, T_max=2048, device=torch.device("cuda")) == 1
    device = backend_device(backend)
    args = make_case(2, 3, 8, 2, 64, torch.float32, True, device, T_max=600, seed=2)
    args[5] = torch.tensor([597, 260], dtype=torch.int32, device=device)
    _, truth, ref_args, ref_out = reference_runs(args)
    got = [None if a is None else a.clone() for a in args]
    out = _kernels().draft_verify_attention(*got, num_splits=n, block_n=32, min_keys_per_split=attention.MIN_KEYS_PER_SPLIT)
    check_error(out, truth, ref_out, torch.float32)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_lengths_outside_the_cache_write_nothing(backend, num_splits):
    # Rows whose cache_seqlens is negative or leaves no room for S keys: no
    # write anywhere, output zero (the documented rule); the other rows exact.
    device = backend_device(backend)
    B, S, Hq, Hkv, D, T = 4, 3, 4, 2, 32, 40
    args = make_case(B, S, Hq, Hkv, D, torch.float32, True, device, T_max=T, seed=1)
    bad = torch.tensor([5, -1, T - S + 1, 2**31 - 2], dtype=torch.int32)
    args[5] = bad.to(device)
    # Sentinel-padded caches: the op sees views, a write past either end shows.
    pads = []
    for i in (1, 2):
        big = torch.full((B + 2, Hkv, T, D), 7.0, device=device)
        big[1 : B + 1] = args[i]
        pads.append(big)
        args[i] = big[1 : B + 1]
    before = [p.clone() for p in pads]
    out = _kernels().draft_verify_attention(*args, num_splits=num_splits, block_n=16, min_keys_per_split=16)
    assert torch.equal(out[1:].cpu(), torch.zeros_like(out[1:].cpu()))
    for p, p0 in zip(pads, before):
        assert torch.equal(p[0], p0[0]) and torch.equal(p[B + 1], p0[B + 1])
        assert torch.equal(p[2:], p0[2:])  # rows 1..3 of the view untouched
    # Row 0 is valid: the reference on it alone.
    one = [None if a is None else a.cpu().clone() for a in make_case(B, S, Hq, Hkv, D, torch.float32, True, "cpu", T_max=T, seed=1)]
    one = [a[:1] if (a is not None and i < 6) else a for i, a in enumerate(one)]
    one[5] = bad[:1]
    ref = reference.draft_verify_attention(*one)
    torch.testing.assert_close(out[:1].cpu(), ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["strided", "expanded"])
def test_strided_cache_seqlens(backend, layout):
    # cache_seqlens is read through its stride: a strided view hides other
    # values between its elements, an expanded one has stride 0.
    device = backend_device(backend)
    B, S = 3, 2
    args = make_case(B, S, 4, 2, 32, torch.float32, False, device, T_max=30, seed=4)
    if layout == "strided":
        lens = torch.tensor([4, 1000, 0, -5, 17, 1000], dtype=torch.int32, device=device)[::2]
    else:
        lens = torch.tensor([11], dtype=torch.int32, device=device).expand(B)
    assert not lens.is_contiguous()
    args[5] = lens
    ref_args = [None if a is None else a.cpu().clone() for a in args]
    ref_args[5] = lens.cpu().contiguous()
    ref = reference.draft_verify_attention(*ref_args)
    out = _kernels().draft_verify_attention(*args)
    torch.testing.assert_close(out.cpu(), ref, atol=2e-5, rtol=1e-5)
    assert torch.equal(args[1].cpu(), ref_args[1]) and torch.equal(args[2].cpu(), ref_args[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_splits", [1, 2])
def test_hidden_keys_never_reach_the_output(backend, dtype, num_splits):
    # NaN or inf in V at a key a query cannot see (a later query's new key, or
    # a position past the row's length) leaves that query's output untouched;
    # a query that does see one gets what the reference gives (inf/NaN).
    device = backend_device(backend)
    B, S, Hq, Hkv, D, T = 2, 4, 4, 2, 32, 64
    args = make_case(B, S, Hq, Hkv, D, dtype, True, device, T_max=T, seed=6)
    args[5] = torch.tensor([20, 3], dtype=torch.int32, device=device)
    v_new = args[4].clone()
    v_new[0, 2, 0, 0] = float("nan")  # key 22 of row 0: seen by queries 2 and 3 only
    v_new[1, 3, 1, :4] = float("inf")  # key 6 of row 1: seen by query 3 only
    args[4] = v_new
    args[2][:, :, 40:] = float("nan")  # stale positions past every row's length
    clean = [None if a is None else a.cpu().clone() for a in args]
    clean[4] = torch.where(torch.isfinite(clean[4]), clean[4], torch.zeros_like(clean[4]))
    clean[2][:, :, 40:] = 0
    ref_clean = reference.draft_verify_attention(*clean)
    got = [None if a is None else a.clone() for a in args]
    out = _kernels().draft_verify_attention(*got, num_splits=num_splits, block_n=16, min_keys_per_split=16).cpu()

    tol = dict(atol=2e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out[0, :2], ref_clean[0, :2], **tol)  # queries before the NaN key
    torch.testing.assert_close(out[1, :3], ref_clean[1, :3], **tol)  # queries before the inf key
    # Query heads of kv head 0 (rows 0, 1) see the NaN in dimension 0 only.
    assert out[0, 2:, :2, 0].isnan().all() and not out[0, 2:, :2, 1:].isnan().any()
    # kv head 1 (query heads 2, 3) sees +inf in dimensions 0..3 at query 3.
    assert (out[1, 3, 2:, :4] == float("inf")).all() and out[1, 3, 2:, 4:].isfinite().all()
    assert out[:, :, :, 1:].isnan().sum() == 0


def test_device_guard_selects_the_tensors_device(backend):
    from layerskip_kernels.triton import _utils

    guard = _utils.device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(_utils.device_guard(torch.device("cpu")), contextlib.nullcontext)

    # Every launch of every op happens inside a guard of its tensors' device.
    from triton.runtime.jit import KernelInterface

    state = {"inside": None, "launches": 0}
    real_getitem = KernelInterface.__getitem__

    @contextlib.contextmanager
    def recording_guard(device):
        state["inside"] = device
        try:
            yield
        finally:
            state["inside"] = None

    def checked_getitem(self, grid):
        assert state["inside"] is not None, f"{self} launched outside a device guard"
        assert state["inside"] == expected
        state["launches"] += 1
        return real_getitem(self, grid)

    device = backend_device(backend)
    expected = torch.device(device)
    kernels = _kernels()
    with mock.patch.object(_utils, "device_guard", recording_guard), mock.patch.object(
        KernelInterface, "__getitem__", checked_getitem
    ):
        args = make_case(1, 2, 4, 2, 32, torch.float32, True, device, T_max=20)
        kernels.draft_verify_attention(*args, num_splits=2)
        draft, logits = greedy_case(2, 3, 50, torch.float32, 0)
        kernels.verify_greedy(draft.to(device), logits.to(device), vocab_splits=2, block_v=16)
        draft, q, p = sampling_case(2, 3, 50, 0)
        kernels.verify_sampling(draft.to(device), q.to(device), p.to(device), 1, 2, vocab_splits=2, block_v=16)
    assert state["launches"] == 3 + 2 + 3


# --------------------------------------------------------------------------- acceptance


def test_vocab_tiles_on_a_gpu(backend):
    from layerskip_kernels.triton import _utils, acceptance

    with mock.patch.object(_utils, "interpreting", lambda d: False), mock.patch.object(_utils, "sm_count", lambda d: 132):
        dev = torch.device("cuda")
        block_r, block_v, splits, chunk = acceptance.vocab_tiles(5, 128256, dev)  # greedy, B=1, k=4
        assert (block_r, block_v, splits) == (1, 2048, 32) and chunk * (splits - 1) < 128256 <= chunk * splits
        assert acceptance.vocab_tiles(1, 128256, dev, gpu_cap=512)[2] == 126  # sampling, B=1: one race per row
        assert acceptance.vocab_tiles(4096, 32000, dev)[2] == 1  # enough rows: one slice each
        assert acceptance.vocab_tiles(3, 100, dev)[:3] == (4, 128, 1)  # small V: rows share a program


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("V,block_v,vocab_splits", [(100, 16, 3), (37, 4, 7), (64, 16, 4)])
def test_greedy_vocab_slices(backend, dtype, V, block_v, vocab_splits):
    device = backend_device(backend)
    draft, logits = greedy_case(6, 4, V, dtype, seed=V)
    # Ties across slices (lowest id wins), an all -inf row, NaN in a late slice.
    logits[0, 0, :] = 1.0
    logits[1, 1, :] = float("-inf")
    logits[2, 0, V - 3] = float("nan")
    logits[2, 0, V - 1] = float("nan")
    logits[3, 2, V // 2] = 1e4
    n_ref, out_ref = reference.verify_greedy(draft, logits)
    n, out = _kernels().verify_greedy(draft.to(device), logits.to(device), block_v=block_v, vocab_splits=vocab_splits)
    assert torch.equal(n.cpu(), n_ref) and torch.equal(out.cpu(), out_ref)
    # Per-row draft lengths 0..k over the same slices, garbage past them.
    lens = draft_lens_for(6, 4, seed=V)
    n_ref, out_ref = reference.verify_greedy(draft, logits, lens)
    bad_draft, bad_logits = garbage_past_lens(lens, draft, logits=logits)
    n, out = _kernels().verify_greedy(bad_draft.to(device), bad_logits.to(device), lens.to(device), block_v=block_v,
                                      vocab_splits=vocab_splits)
    assert torch.equal(n.cpu(), n_ref) and torch.equal(out.cpu(), out_ref), lens


@pytest.mark.parametrize("V,block_v,vocab_splits", [(37, 8, 4), (101, 16, 3), (64, 4, 16)])
def test_sampling_vocab_slices(backend, V, block_v, vocab_splits):
    device = backend_device(backend)
    kernels = _kernels()
    for k in (1, 4):
        draft, q, p = sampling_case(5, k, V, seed=V + k)
        for seed, offset in ((0, 0), (12345, 7), (-3, 2**32 - 1)):
            n_ref, out_ref = reference.verify_sampling(draft, q, p, seed, offset)
            n, out = kernels.verify_sampling(
                draft.to(device), q.to(device), p.to(device), seed, offset, block_v=block_v, vocab_splits=vocab_splits
            )
            assert torch.equal(n.cpu(), n_ref) and torch.equal(out.cpu(), out_ref), (k, seed, offset)
        # Per-row draft lengths 0..k, garbage past them.
        lens = draft_lens_for(5, k, seed=V)
        n_ref, out_ref = reference.verify_sampling(draft, q, p, 3, 4, lens)
        bad = [t.to(device) for t in garbage_past_lens(lens, draft, q=q, p=p)]
        n, out = kernels.verify_sampling(*bad, 3, 4, lens.to(device), block_v=block_v, vocab_splits=vocab_splits)
        assert torch.equal(n.cpu(), n_ref) and torch.equal(out.cpu(), out_ref), (k, lens)


def test_sampling_races_only_at_the_first_rejection(backend):
    # Probabilities at positions after each row's first rejection are never
    # read by the race: garbage there (NaN) changes nothing.
    device = backend_device(backend)
    B, k, V = 4, 4, 40
    draft, q, p = sampling_case(B, k, V, seed=9)
    n_ref, out_ref = reference.verify_sampling(draft, q, p, 5, 1)
    p_bad, q_bad = p.clone(), q.clone()
    for b in range(B):
        a = int(n_ref[b])
        p_bad[b, a + 1 :] = float("nan")
        q_bad[b, a + 1 :] = float("nan")
    n, out = _kernels().verify_sampling(draft.to(device), q_bad.to(device), p_bad.to(device), 5, 1, block_v=8, vocab_splits=3)
    assert torch.equal(n.cpu(), n_ref) and torch.equal(out.cpu(), out_ref)
