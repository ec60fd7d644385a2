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


@pytest.mark.parametrize("backend", backend_params())
def test_sampling_parity(backend):
    for i, (B, k, V) in enumerate(grid(backend)):
        draft, q, p = sampling_case(B, k, V, seed=i)
        for seed, offset in ((i, 0), (2**40 + i, 7), (-3, 2**32 - 1)):
            n_ref, out_ref = reference.verify_sampling(draft, q, p, seed, offset)
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
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("V", [5, 16])
def test_sampling_distribution(backend, k, V):
    """Emitted tokens at every position follow the target distribution."""
    chi2 = pytest.importorskip("scipy.stats").chi2
    N = 100_000 if backend != "triton" else 20_000
    g = torch.Generator().manual_seed(100 * k + V)
    p1 = torch.softmax(torch.randn(k + 1, V, generator=g) * 1.5, -1)
    q1 = torch.softmax(torch.randn(k, V, generator=g) * 1.5, -1)
    p = p1.expand(N, k + 1, V).contiguous()
    q = q1.expand(N, k, V).contiguous()
    draft = torch.multinomial(q.reshape(N * k, V), 1, replacement=True, generator=g).reshape(N, k)
    n, out = run(backend, ops.verify_sampling, draft, q, p, 1234 + V, k)
    for j in range(k + 1):
        rows = n >= j  # position j is emitted
        tokens = out[rows, j]
        counts = torch.bincount(tokens, minlength=V).double()
        expected = p1[j].double() * rows.sum()
        stat = ((counts - expected) ** 2 / expected).sum().item()
        pval = chi2.sf(stat, V - 1)
        assert pval > 1e-4, f"position {j}: chi2={stat:.1f}, p={pval:.2g}"
    # The acceptance rate matches its expectation sum_v min(p, q) at position 0.
    rate0 = (n >= 1).double().mean().item()
    expect0 = torch.minimum(p1[0], q1[0]).sum().item()
    assert abs(rate0 - expect0) < 5 * (expect0 * (1 - expect0) / N) ** 0.5


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
    d, l = greedy_case(2, 3, 10, torch.float32, 0)
    torch.library.opcheck(torch.ops.layerskip.verify_greedy.default, (d, l))
    d, q, p = sampling_case(2, 3, 10, 0)
    torch.library.opcheck(torch.ops.layerskip.verify_sampling.default, (d, q, p, 1, 2))
