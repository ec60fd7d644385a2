"""verify_greedy / verify_sampling: exact parity with reference.py on every
backend that runs here, invariants, statistics, bad input."""

import itertools

import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels import ops, reference

from conftest import backend_device, backend_params

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def greedy_case(B, k, V, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, k + 1, V, generator=g)
    # Quantize so that ties of the maximum happen (ties go to the lowest index).
    logits = (logits * 2).round() / 2
    target = logits.argmax(-1)
    draft = torch.randint(0, V, (B, k), generator=g)
    # Row b agrees with the target on its first b % (k+1) drafts.
    for b in range(B):
        n = b % (k + 1)
        draft[b, :n] = target[b, :n]
    return draft, logits.to(dtype)


def sampling_case(B, k, V, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(B, k + 1, V, generator=g) * 3, -1)
    q = torch.softmax(torch.randn(B, k, V, generator=g) * 3, -1)
    if B > 1:
        q[1] = p[1, :k]  # identical distributions: zero residual -> fallback to p
    if B > 2:
        q[2, :, : V // 2] = 0  # q(d) == 0 for half the vocabulary
        q[2] /= q[2].sum(-1, keepdim=True)
    draft = torch.multinomial(q.reshape(B * k, V), 1, generator=g).reshape(B, k)
    if B > 3:
        draft[3, 0] = 0 if V > 1 else 0
        q[3, 0, 0] = 0.0  # the drafted token has draft probability zero: rejected
    return draft, q, p


def draft_lens_for(B, k, seed=0):
    """int32 [B] per-row draft lengths: 0 and k on rows 0 and 1 (shifted by
    `seed`), the lengths in between on the others, all different while B <= k + 1."""
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.tensor([0, k]), torch.randperm(k - 1, generator=g) + 1])
    return order[(torch.arange(B) + seed) % (k + 1)].to(torch.int32)


def accepting_even_rows(draft, *dists, seed=0):
    """(draft, logits) or (draft, q, p) with the even rows drafting what the
    target accepts at every position (greedy: its argmax; sampling: q = p and
    drafts sampled from it, since u * p < p for any coin), so that rows of
    every draft length accept all their drafts and emit the bonus token."""
    draft = draft.clone()
    if len(dists) == 1:
        (logits,) = dists
        draft[::2] = logits[::2, : draft.shape[1]].argmax(-1)
        return draft, logits
    q, p = dists
    k, V = draft.shape[1], p.shape[-1]
    q = q.clone()
    q[::2] = p[::2, :k]
    g = torch.Generator().manual_seed(seed)
    draft[::2] = torch.multinomial(q[::2].reshape(-1, V), 1, generator=g).reshape(-1, k)
    return draft, q, p


def garbage_past_lens(lens, draft, *, q=None, p=None, logits=None, variant=0):
    """Copies whose entries past each row's draft length d hold garbage, which
    must not change the output. Variant 0: ids outside [0, V) at positions >= d,
    NaN draft probabilities at positions >= d, NaN target probabilities /
    logits at positions > d. Variant 1: the ids stay (valid, so a kernel that
    reads past d may accept them) and the values are -1, a finite garbage that
    changes any race that wrongly uses it. Variant 2: nothing changes (on rows
    from accepting_even_rows the drafts past d would be accepted too).
    Returns (draft, then the given tensors among q, p, logits)."""
    V = (p if p is not None else logits).shape[-1]
    ids = (-1, V, 2**62, -(2**63), 2**63 - 1)
    draft = draft.clone()
    given = [(t.clone(), first) for t, first in ((q, 0), (p, 1), (logits, 1)) if t is not None]
    for b, d in enumerate(lens.tolist()):
        if variant == 0:
            for i in range(d, draft.shape[1]):
                draft[b, i] = ids[(b + i) % len(ids)]
        for t, first in given:
            if variant < 2:
                t[b, d + first :] = float("nan") if variant == 0 else -1.0
    return (draft, *[t for t, _ in given])


def run(backend, fn, *args):
    device = backend_device(backend)
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    with lk.use_backend(backend):
        n, out = fn(*args)
    return n.cpu(), out.cpu()


def grid(backend):
    Vs = (7, 1000, 32000) + ((128256,) if backend == "cpu" else ())
    return list(itertools.product((1, 5), (1, 4, 8), Vs))


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy_parity(backend, dtype):
    for i, (B, k, V) in enumerate(grid(backend)):
        draft, logits = greedy_case(B, k, V, dtype, seed=i)
        n_ref, out_ref = reference.verify_greedy(draft, logits)
        n, out = run(backend, ops.verify_greedy, draft, logits)
        assert n.dtype == torch.int32 and out.dtype == torch.int64
        assert torch.equal(n, n_ref) and torch.equal(out, out_ref), (B, k, V)


# The reference's results of test_sampling_parity, computed once for all the
# backends and CPU levels that compare with them (the reference's Philox
# over a 128k vocabulary takes most of the test's time).
_SAMPLING_REF = {}


def _sampling_reference(draft, q, p, seed, offset, key):
    if key not in _SAMPLING_REF:
        _SAMPLING_REF[key] = reference.verify_sampling(draft, q, p, seed, offset)
    return _SAMPLING_REF[key]


@pytest.mark.parametrize("backend", backend_params())
def test_sampling_parity(backend):
    for i, (B, k, V) in enumerate(grid(backend)):
        draft, q, p = sampling_case(B, k, V, seed=i)
        for seed, offset in ((i, 0), (2**40 + i, 7), (-3, 2**32 - 1)):
            n_ref, out_ref = _sampling_reference(draft, q, p, seed, offset, key=(B, k, V, i, seed, offset))
            n, out = run(backend, ops.verify_sampling, draft, q, p, seed, offset)
            assert torch.equal(n, n_ref) and torch.equal(out, out_ref), (B, k, V, seed, offset)


# --------------------------------------------------------------------------- invariants

ALL = [pytest.param("torch")] + backend_params()


def check_layout(n, out, k):
    assert (n >= 0).all() and (n <= k).all()
    for b in range(out.shape[0]):
        a = int(n[b])
        assert (out[b, : a + 1] >= 0).all()
        assert (out[b, a + 1 :] == -1).all()


@pytest.mark.parametrize("backend", ALL)
def test_invariants(backend):
    B, k, V = 6, 4, 50
    draft, q, p = sampling_case(B, k, V, seed=5)
    n, out = run(backend, ops.verify_sampling, draft, q, p, 1, 2)
    check_layout(n, out, k)
    assert torch.equal(out[:, :k][torch.arange(k)[None] < n[:, None]], draft[torch.arange(k)[None] < n[:, None]])

    # One-hot target: exactly the target's tokens come out.
    tgt = torch.randint(0, V, (B, k + 1), generator=torch.Generator().manual_seed(0))
    onehot = torch.nn.functional.one_hot(tgt, V).float()
    n, out = run(backend, ops.verify_sampling, draft, q, onehot, 3, 0)
    check_layout(n, out, k)
    for b in range(B):
        a = int(n[b])
        assert torch.equal(out[b, : a + 1], tgt[b, : a + 1])

    # Draft distribution == target distribution: everything is accepted (the
    # coin u * p(d) < p(d) holds for any u < 1), whatever the drafts are.
    n, out = run(backend, ops.verify_sampling, draft, p[:, :k].contiguous(), p, 4, 0)
    assert (n == k).all() and torch.equal(out[:, :k], draft)
    check_layout(n, out, k)
    drafted_from_p = torch.multinomial(p[:, :k].reshape(-1, V), 1, generator=torch.Generator().manual_seed(1)).reshape(B, k)
    n, out = run(backend, ops.verify_sampling, drafted_from_p, p[:, :k].contiguous(), p, 4, 0)
    assert (n == k).all()
    assert torch.equal(out[:, :k], drafted_from_p)

    # Disjoint supports: rejected at position 0, and the token comes from p's support.
    q2 = torch.zeros(B, k, V)
    q2[..., : V // 2] = 1.0 / (V // 2)
    p2 = torch.zeros(B, k + 1, V)
    p2[..., V // 2 :] = 1.0 / (V - V // 2)
    d2 = torch.zeros(B, k, dtype=torch.long)
    n, out = run(backend, ops.verify_sampling, d2, q2, p2, 5, 0)
    assert (n == 0).all() and (out[:, 0] >= V // 2).all() and (out[:, 1:] == -1).all()


@pytest.mark.parametrize("backend", ALL)
def test_greedy_exact(backend):
    # The emitted tokens are exactly the target's argmax up to the first mismatch.
    B, k, V = 8, 5, 33
    draft, logits = greedy_case(B, k, V, torch.float32, seed=9)
    n, out = run(backend, ops.verify_greedy, draft, logits)
    check_layout(n, out, k)
    target = logits.argmax(-1)
    for b in range(B):
        a = int(n[b])
        assert a == b % (k + 1) or (a > b % (k + 1) and torch.equal(draft[b, :a], target[b, :a]))
        assert torch.equal(out[b, : a + 1], target[b, : a + 1])


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy_nan_logits(backend, dtype):
    # NaN in the target logits (a diverged model) gives the reference's answer
    # (torch.argmax: the first NaN is the maximum), never a garbage id or -1.
    B, k, V = 4, 3, 300
    draft, logits = greedy_case(B, k, V, torch.float32, seed=2)
    draft[1, :2] = logits[1, :2].argmax(-1)  # row 1 reaches position 2
    draft[2, 0] = 1
    logits[0, 0, 17] = float("nan")  # position 0 of row 0: the NaN id wins
    logits[1, 2, [5, 250]] = float("nan")  # two NaNs: the lowest id
    logits[2] = float("nan")  # a whole row
    draft[0, 0] = 17
    logits = logits.to(dtype)
    n_ref, out_ref = reference.verify_greedy(draft, logits)
    n, out = run(backend, ops.verify_greedy, draft, logits)
    assert int(n_ref[0]) >= 1 and out_ref[1, 2] == 5 and out_ref[2, 0] == 0
    assert torch.equal(n, n_ref) and torch.equal(out, out_ref)


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.values[0] == "cpu"])
def test_cpu_results_do_not_depend_on_thread_count(backend):
    # Rows and vocabulary chunks are split over threads; the reductions (argmax,
    # race) must give the same ids for 1, 2 or 3 threads.
    B, k, V = 5, 4, 128256
    draft, q, p = sampling_case(B, k, V, seed=8)
    gdraft, logits = greedy_case(B, k, V, torch.bfloat16, seed=8)
    before = torch.get_num_threads()
    results = []
    try:
        for n_threads in (1, 2, 3):
            torch.set_num_threads(n_threads)
            results.append((run(backend, ops.verify_sampling, draft, q, p, 77, 3),
                            run(backend, ops.verify_greedy, gdraft, logits)))
    finally:
        torch.set_num_threads(before)
    for (s, g) in results[1:]:
        for a, b in zip(s + g, results[0][0] + results[0][1]):
            assert torch.equal(a, b)


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("k,V,ragged", [(1, 5, False), (1, 16, False), (3, 5, False), (3, 16, False), (3, 16, True)])
def test_sampling_distribution(backend, k, V, ragged):
    """Emitted tokens at every position follow the target distribution, also
    with per-row draft lengths 0..k (ragged: the bonus token of a row of
    length d is sampled at position d)."""
    chi2 = pytest.importorskip("scipy.stats").chi2
    N = 100_000 if backend != "triton" else 20_000
    g = torch.Generator().manual_seed(100 * k + V)
    p1 = torch.softmax(torch.randn(k + 1, V, generator=g) * 1.5, -1)
    q1 = torch.softmax(torch.randn(k, V, generator=g) * 1.5, -1)
    p = p1.expand(N, k + 1, V).contiguous()
    q = q1.expand(N, k, V).contiguous()
    draft = torch.multinomial(q.reshape(N * k, V), 1, replacement=True, generator=g).reshape(N, k)
    lens = (torch.arange(N) % (k + 1)).to(torch.int32) if ragged else None
    n, out = run(backend, ops.verify_sampling, draft, q, p, 1234 + V, k, lens)
    if ragged:
        assert (n <= lens).all() and (n == lens).any() and (n < lens).any()
    for j in range(k + 1):
        rows = n >= j  # position j is emitted
        tokens = out[rows, j]
        counts = torch.bincount(tokens, minlength=V).double()
        expected = p1[j].double() * rows.sum()
        stat = ((counts - expected) ** 2 / expected).sum().item()
        pval = chi2.sf(stat, V - 1)
        assert pval > 1e-4, f"position {j}: chi2={stat:.1f}, p={pval:.2g}"
    # The acceptance rate matches its expectation sum_v min(p, q) at position 0
    # (over the rows that drafted there).
    drafted0 = n >= 0 if lens is None else lens >= 1
    rate0 = (n[drafted0] >= 1).double().mean().item()
    expect0 = torch.minimum(p1[0], q1[0]).sum().item()
    assert abs(rate0 - expect0) < 5 * (expect0 * (1 - expect0) / int(drafted0.sum())) ** 0.5


# --------------------------------------------------------------------------- per-row draft lengths


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy_draft_lens_parity(backend, dtype):
    # Lengths 0..k, all different where B allows, even rows accepting all their
    # drafts; what lies past each row's length (garbage_past_lens's variants)
    # is neither checked nor used.
    for i, (B, k, V) in enumerate(grid(backend)):
        draft, logits = accepting_even_rows(*greedy_case(B, k, V, dtype, seed=i))
        lens = draft_lens_for(B, k, seed=i)
        n_ref, out_ref = reference.verify_greedy(draft, logits, lens)
        assert (n_ref <= lens).all() and (n_ref[::2] == lens[::2]).all()
        bad_draft, bad_logits = garbage_past_lens(lens, draft, logits=logits, variant=i % 3)
        n, out = run(backend, ops.verify_greedy, bad_draft, bad_logits, lens)
        assert torch.equal(n, n_ref) and torch.equal(out, out_ref), (B, k, V, lens)


@pytest.mark.parametrize("backend", ALL)
def test_sampling_draft_lens_parity(backend):
    for i, (B, k, V) in enumerate(grid(backend)):
        draft, q, p = accepting_even_rows(*sampling_case(B, k, V, seed=i), seed=i)
        lens = draft_lens_for(B, k, seed=i)
        bad_draft, bad_q, bad_p = garbage_past_lens(lens, draft, q=q, p=p, variant=i % 3)
        for seed, offset in ((i, 0), (-3, 2**32 - 1)):
            n_ref, out_ref = reference.verify_sampling(draft, q, p, seed, offset, lens)
            assert (n_ref <= lens).all() and (n_ref[::2] == lens[::2]).all()
            n, out = run(backend, ops.verify_sampling, bad_draft, bad_q, bad_p, seed, offset, lens)
            assert torch.equal(n, n_ref) and torch.equal(out, out_ref), (B, k, V, seed, offset, lens)


@pytest.mark.parametrize("backend", ALL)
def test_draft_lens_equal_to_k_is_bit_identical(backend):
    for i, (B, k, V) in enumerate(grid(backend)[::3]):
        full = torch.full((B,), k, dtype=torch.int32)
        draft, logits = greedy_case(B, k, V, torch.bfloat16, seed=i)
        expect = reference.verify_greedy(draft, logits)
        for lens in (None, full):
            got = run(backend, ops.verify_greedy, draft, logits, lens)
            assert all(torch.equal(a, b) for a, b in zip(got, expect)), (B, k, V, lens)
        draft, q, p = sampling_case(B, k, V, seed=i)
        expect = reference.verify_sampling(draft, q, p, 5, 6)
        for lens in (None, full):
            got = run(backend, ops.verify_sampling, draft, q, p, 5, 6, lens)
            assert all(torch.equal(a, b) for a, b in zip(got, expect)), (B, k, V, lens)


@pytest.mark.parametrize("backend", ALL)
def test_draft_lens_is_a_shorter_draft(backend):
    # The contract spelled out: a row of length d behaves as if k were d. Its
    # coins are those of positions 0..d-1, its bonus token (all d accepted) is
    # the race over p at position d with that position's counters (2*d). Even
    # rows draft from the target itself, so they accept everything and emit
    # a bonus token; odd rows stop early.
    B, k, V = 12, 5, 40
    draft, q, p = accepting_even_rows(*sampling_case(B, k, V, seed=3), seed=4)
    gdraft, logits = accepting_even_rows(*greedy_case(B, k, V, torch.float32, seed=3))
    lens = draft_lens_for(B, k, seed=1)
    n, out = run(backend, ops.verify_sampling, draft, q, p, 11, 2, lens)
    gn, gout = run(backend, ops.verify_greedy, gdraft, logits, lens)
    _, race_u = reference.sampling_uniforms(B, k, V, 11, 2)
    bonus = reference._race(p, race_u)  # [B, k+1]: the race over p at every position
    for b in range(0, B, 2):
        d = int(lens[b])
        assert int(n[b]) == d and int(out[b, d]) == int(bonus[b, d]), (b, d)
        assert int(gn[b]) == d and int(gout[b, d]) == int(logits[b, d].argmax()), (b, d)
    for d in range(1, k + 1):
        rows = lens == d
        short = run(backend, ops.verify_sampling, draft[:, :d], q[:, :d], p[:, : d + 1], 11, 2)
        gshort = run(backend, ops.verify_greedy, gdraft[:, :d], logits[:, : d + 1])
        for got, want in ((n, short[0]), (out[:, : d + 1], short[1]), (gn, gshort[0]), (gout[:, : d + 1], gshort[1])):
            assert torch.equal(got[rows], want[rows]), d
        assert (out[rows, d + 1 :] == -1).all() and (gout[rows, d + 1 :] == -1).all()


def bad_draft_lens(B, k):
    """(pattern the error must match, draft_lens) for a batch of B rows, k drafts."""
    return [
        (r"draft_lens.*int32", torch.full((B,), k, dtype=torch.int64)),
        (r"draft_lens.*int32", torch.full((B,), k, dtype=torch.float32)),
        (rf"draft_lens.*B={B}", torch.full((B + 1,), k, dtype=torch.int32)),
        (rf"draft_lens.*B={B}", torch.full((B, 1), k, dtype=torch.int32)),
        (rf"draft_lens.*B={B}", torch.tensor(k, dtype=torch.int32)),
        (rf"draft_lens.*k={k}", torch.tensor([0] * (B - 1) + [k + 1], dtype=torch.int32)),
        (rf"draft_lens.*k={k}", torch.tensor([-1] + [k] * (B - 1), dtype=torch.int32)),
        (rf"draft_lens.*k={k}", torch.tensor([2**31 - 1] * B, dtype=torch.int32)),
    ]


@pytest.mark.parametrize("backend", ALL)
def test_bad_draft_lens(backend):
    device = backend_device(backend)
    B, k, V = 3, 4, 20
    d, l = greedy_case(B, k, V, torch.float32, 0)
    sd, q, p = sampling_case(B, k, V, 0)
    cases = bad_draft_lens(B, k) + [
        ("draft_lens must be an int32 tensor", [k] * B),
        ("draft_lens must be on", torch.full((B,), k, dtype=torch.int32, device="meta")),
    ]
    with lk.use_backend(backend):
        for pattern, lens in cases:
            if isinstance(lens, torch.Tensor) and lens.device.type != "meta":
                lens = lens.to(device)
            with pytest.raises(ValueError, match=pattern):
                ops.verify_greedy(d.to(device), l.to(device), lens)
            with pytest.raises(ValueError, match=pattern):
                ops.verify_sampling(sd.to(device), q.to(device), p.to(device), 0, 0, lens)


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.values[0] in ("cpu", "cuda")])
def test_bad_draft_lens_raw_ops(backend):
    # torch.ops.layerskip.* directly: shape and dtype are refused on every
    # device; values on CPU only (on CUDA the kernels clamp them instead:
    # docs/ops_boundary.md).
    device = backend_device(backend)
    B, k, V = 3, 4, 20
    d, l = greedy_case(B, k, V, torch.float32, 0)
    sd, q, p = sampling_case(B, k, V, 0)
    for pattern, lens in bad_draft_lens(B, k):
        if device == "cuda" and "k=" in pattern:
            continue
        lens = lens.to(device)
        with pytest.raises(RuntimeError, match=pattern):
            torch.ops.layerskip.verify_greedy(d.to(device), l.to(device), lens)
        with pytest.raises(RuntimeError, match=pattern):
            torch.ops.layerskip.verify_sampling(sd.to(device), q.to(device), p.to(device), 0, 0, lens)


# --------------------------------------------------------------------------- bad input


def bad_greedy():
    d, l = greedy_case(2, 3, 10, torch.float32, 0)
    return [
        ("draft_tokens", d[0], l),
        ("draft_tokens", d.int(), l),
        ("target_logits", d, l[:, :3]),
        ("target_logits", d, l[:1]),
        ("target_logits", d, l.double()),
        ("draft_tokens", torch.tensor([[1, 2, 10], [0, 0, 0]]), l),
        ("draft_tokens", torch.tensor([[1, -2, 1], [0, 0, 0]]), l),
    ]


def bad_sampling():
    d, q, p = sampling_case(2, 3, 10, 0)
    nan_p = p.clone()
    nan_p[1, 2, 3] = float("nan")
    nan_q = q.clone()
    nan_q[0, 0, 0] = float("nan")
    return [
        ("draft_probs", (d, q[:, :2], p, 0, 0)),
        ("target_probs", (d, q, p[:, :3], 0, 0)),
        ("draft_probs", (d, q[..., :9], p, 0, 0)),
        ("target_probs", (d, q, p.half(), 0, 0)),
        ("draft_probs", (d, q.double(), p, 0, 0)),
        ("draft_tokens", (d.int(), q, p, 0, 0)),
        ("draft_tokens", (torch.full_like(d, 10), q, p, 0, 0)),
        ("target_probs contains NaN", (d, q, nan_p, 0, 0)),
        ("draft_probs contains NaN", (d, nan_q, p, 0, 0)),
        ("offset", (d, q, p, 0, -1)),
        ("offset", (d, q, p, 0, 2**32)),
        ("seed", (d, q, p, 2**64, 0)),
    ]


@pytest.mark.parametrize("backend", ALL)
def test_bad_input(backend):
    device = backend_device(backend)
    with lk.use_backend(backend):
        for name, d, l in bad_greedy():
            with pytest.raises(ValueError, match=name):
                ops.verify_greedy(d.to(device), l.to(device))
        for name, args in bad_sampling():
            args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
            with pytest.raises(ValueError, match=name):
                ops.verify_sampling(*args)


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.values[0] in ("cpu", "cuda")])
def test_compiled_op_checks_directly(backend):
    # torch.ops.layerskip.* without the Python wrapper reaches the checks of
    # csrc/checks.h: each names the argument.
    device = backend_device(backend)
    for name, d, l in bad_greedy():
        with pytest.raises(RuntimeError, match=name.split()[0]):
            torch.ops.layerskip.verify_greedy(d.to(device), l.to(device))
    for name, args in bad_sampling():
        if "NaN" in name or name == "seed":
            continue  # NaN is a value check of ops.py; 2**64 does not fit the schema's int
        args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(RuntimeError, match=name):
            torch.ops.layerskip.verify_sampling(*args)


def test_uniforms_layout():
    # The documented counter layout, recomputed by hand for a few entries.
    seed, offset = 2**33 + 5, 9
    coins, race = reference.sampling_uniforms(2, 3, 10, seed, offset)
    key = (seed & 0xFFFFFFFF, seed >> 32)
    w = reference.philox4x32_10((0, 2 * 2 + 1, 1, offset), key)[0]
    assert coins[1, 2] == reference.philox_uniform(w)
    w = reference.philox4x32_10((7 // 4, 2 * 3, 0, offset), key)[7 % 4]
    assert race[0, 3, 7] == reference.philox_uniform(w)
    assert (race > 0).all() and (race < 1).all()


def test_opcheck_acceptance():
    lens = torch.tensor([0, 2], dtype=torch.int32)
    d, l = greedy_case(2, 3, 10, torch.float32, 0)
    torch.library.opcheck(torch.ops.layerskip.verify_greedy.default, (d, l))
    torch.library.opcheck(torch.ops.layerskip.verify_greedy.default, (d, l, lens))
    d, q, p = sampling_case(2, 3, 10, 0)
    torch.library.opcheck(torch.ops.layerskip.verify_sampling.default, (d, q, p, 1, 2))
    torch.library.opcheck(torch.ops.layerskip.verify_sampling.default, (d, q, p, 1, 2, lens))
