"""Fuzzing the op boundary: odd and bad inputs to the three ops.

Every case runs through `layerskip_kernels.ops` on each backend that runs here
and through the raw `torch.ops.layerskip.*` entry points (which other engines
call directly). Caches are views into larger sentinel-filled buffers, with gaps
inside the view too, so a write anywhere outside the tensor shows up as a
changed sentinel. Cases that could crash the process (reads past a storage, an
allocation inside an OpenMP region) run in a child interpreter, where a signal
fails the test instead of killing the run.

The contract checked here is written down in docs/ops_boundary.md.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import layerskip_kernels as lk
from layerskip_kernels import ops, reference

from conftest import CpuAt, _supported_cpu_levels, cpu_level_params, running_cpu_level

# Bounded for CI: a few dozen examples per property, no per-example deadline (the
# Triton interpreter is slow on the first call of a shape).
FUZZ = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

AVAILABLE = lk.available_backends()
# The backends that run on CPU tensors here (the registry says which).
OPS_BACKENDS = [b for b in lk.backends.BACKENDS if lk.backends.why_unavailable(b, "cpu") is None]
HAS_NATIVE = lk.backends.native() is not None
# ("ops", backend) goes through layerskip_kernels.ops; ("raw", None) calls
# torch.ops.layerskip.* on CPU tensors (the compiled cpu kernels when built).
# The cpu kernels (through ops and raw) run once per CPU level (conftest.CpuAt).
ENTRIES = [pytest.param(("ops", b), id=f"ops-{b}") for b in OPS_BACKENDS if b != "cpu"]
if "cpu" in OPS_BACKENDS:
    ENTRIES += cpu_level_params(lambda level: ("ops", CpuAt(level)), prefix="ops-cpu-")
if HAS_NATIVE:
    ENTRIES += cpu_level_params(lambda level: ("raw", CpuAt(level)), prefix="raw-")
else:
    ENTRIES.append(pytest.param(("raw", None), id="raw"))

PAD = 1 << 15  # sentinel elements before and after every cache view
SENTINEL = 1234.5


def call(entry, name, *args):
    kind, backend = entry
    level = getattr(backend, "level", None)  # a cpu entry runs its CPU level's kernels
    with running_cpu_level(level) if level else contextlib.nullcontext():
        if kind == "raw":
            return getattr(torch.ops.layerskip, name)(*args)
        with lk.use_backend(backend):
            return getattr(ops, name)(*args)


def entry_values():
    """The (kind, backend) of every entry that runs here, for the loops of the
    crash-prone cases (run outside pytest's parametrization, in a child)."""
    supported = _supported_cpu_levels()
    return [p.values[0] for p in ENTRIES
            if getattr(p.values[0][1], "level", None) in (None, *supported)]


def error_types(entry):
    # ops.* raise ValueError; the compiled ops raise RuntimeError (TORCH_CHECK).
    return ValueError if entry[0] == "ops" else (ValueError, RuntimeError)


# --------------------------------------------------------------------------- buffers


class Padded:
    """A strided view `t` into a sentinel-filled buffer; `untouched()` is True
    while every element outside the view still holds its sentinel."""

    def __init__(self, values: torch.Tensor, gap: int = 0):
        B, H, T, D = values.shape
        row = D + gap  # gap > 0: unused elements between the rows of the view
        strides = (H * T * row, T * row, row, 1)
        n = B * H * T * row
        self.base = torch.full((n + 2 * PAD,), SENTINEL, dtype=values.dtype)
        self.t = self.base.as_strided(values.shape, strides, PAD)
        self.t.copy_(values)
        inside = torch.zeros(self.base.shape, dtype=torch.bool)
        inside.as_strided(values.shape, strides, PAD).fill_(True)
        self.outside = ~inside

    def untouched(self) -> bool:
        return bool((self.base[self.outside] == torch.tensor(SENTINEL, dtype=self.base.dtype)).all())


def noncontig(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as `t` in another memory layout."""
    if kind == "contiguous":
        return t.contiguous()
    if kind == "spread":  # every element followed by a gap: stride 2 everywhere
        buf = torch.full((*t.shape[:-1], 2 * t.shape[-1]), float("nan") if t.is_floating_point() else -7,
                         dtype=t.dtype)
        view = buf[..., ::2]
        view.copy_(t)
        return view
    if kind == "transposed":  # unit stride last, first two axes swapped in memory
        return t.transpose(0, 1).contiguous().transpose(0, 1) if t.dim() >= 3 else t.t().contiguous().t()
    raise AssertionError(kind)


def hidden_lens(lens: list[int], hidden: int) -> torch.Tensor:
    """int32 [B] with the given values at stride 2; `hidden` sits in every gap."""
    buf = torch.full((2 * len(lens),), hidden, dtype=torch.int32)
    view = buf[::2]
    view.copy_(torch.tensor(lens, dtype=torch.int32))
    return view


# --------------------------------------------------------------------------- attention cases


@st.composite
def attention_case(draw):
    B = draw(st.integers(1, 3))
    S = draw(st.integers(1, 4))
    Hkv = draw(st.integers(1, 2))
    G = draw(st.integers(1, 3))
    D = draw(st.sampled_from([2, 4, 8, 16]))
    T_max = draw(st.integers(S, S + 6))
    lens = draw(st.lists(st.integers(0, T_max - S), min_size=B, max_size=B))
    lens_layout = draw(st.sampled_from(["contiguous", "strided", "expanded"]))
    if lens_layout == "expanded":
        lens = [lens[0]] * B
    return dict(
        B=B, S=S, Hkv=Hkv, Hq=Hkv * G, D=D, T_max=T_max, lens=lens, lens_layout=lens_layout,
        hidden=draw(st.sampled_from([1000, -3, T_max + 1, 2**31 - 1])),
        rope=draw(st.booleans()),
        layout=draw(st.sampled_from(["contiguous", "spread", "transposed"])),
        gap=draw(st.sampled_from([0, 3])),
        seed=draw(st.integers(0, 2**16)),
    )


def make_lens(c) -> torch.Tensor:
    if c["lens_layout"] == "strided":
        return hidden_lens(c["lens"], c["hidden"])
    if c["lens_layout"] == "expanded":
        return torch.tensor(c["lens"][:1], dtype=torch.int32).expand(c["B"])
    return torch.tensor(c["lens"], dtype=torch.int32)


def attention_inputs(c, dtype=torch.float32):
    g = torch.Generator().manual_seed(c["seed"])
    B, S, Hq, Hkv, D, T = c["B"], c["S"], c["Hq"], c["Hkv"], c["D"], c["T_max"]
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(dtype)
    vals = dict(q=rnd(B, S, Hq, D), k_cache=rnd(B, Hkv, T, D), v_cache=rnd(B, Hkv, T, D),
                k_new=rnd(B, S, Hkv, D), v_new=rnd(B, S, Hkv, D), cos=None, sin=None)
    if c["rope"]:
        ang = torch.rand(T + 2, D // 2, generator=g) * 6
        vals["cos"], vals["sin"] = ang.cos(), ang.sin()
    return vals


def run_attention(entry, c, vals, lens, softmax_scale=None):
    """Runs one entry on fresh padded caches; returns (out or exception, k, v, untouched)."""
    kc, vc = Padded(vals["k_cache"], c["gap"]), Padded(vals["v_cache"], c["gap"])
    lay = c["layout"]
    args = [noncontig(vals["q"], lay), kc.t, vc.t, noncontig(vals["k_new"], lay), noncontig(vals["v_new"], lay),
            lens, None if vals["cos"] is None else noncontig(vals["cos"], lay),
            None if vals["sin"] is None else noncontig(vals["sin"], lay), softmax_scale]
    try:
        out = call(entry, "draft_verify_attention", *args)
    except Exception as e:  # noqa: BLE001 - the caller decides which are fine
        out = e
    return out, kc.t, vc.t, kc.untouched() and vc.untouched()


def reference_attention(vals, lens: list[int], softmax_scale=None):
    k, v = vals["k_cache"].clone(), vals["v_cache"].clone()
    out = reference.draft_verify_attention(vals["q"].clone(), k, v, vals["k_new"], vals["v_new"],
                                           torch.tensor(lens, dtype=torch.int32), vals["cos"], vals["sin"],
                                           softmax_scale)
    return out, k, v


@pytest.mark.parametrize("entry", ENTRIES)
@FUZZ
@given(c=attention_case())
def test_attention_valid_layouts(entry, c):
    # Valid values in any layout (strided lengths hiding garbage, stride-0
    # lengths, non-contiguous q/k_new/v_new/cos/sin, caches with gaps) give the
    # reference's result and write nothing outside the caches.
    vals = attention_inputs(c)
    ref_out, ref_k, ref_v = reference_attention(vals, c["lens"])
    out, k, v, untouched = run_attention(entry, c, vals, make_lens(c))
    assert untouched, "a write outside k_cache/v_cache"
    assert not isinstance(out, Exception), f"valid input refused: {out!r}"
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(k, ref_k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, ref_v, atol=0, rtol=0)


@pytest.mark.parametrize("entry", ENTRIES)
@FUZZ
@given(c=attention_case(), bad=st.sampled_from([-1, -1000, 1, 1000, 2**31 - 1]), row=st.integers(0, 2))
def test_attention_bad_lengths(entry, c, bad, row):
    # One row's visible length is out of range (negative, or past T_max - S),
    # possibly in a strided tensor whose gaps hold valid values: a clear error
    # naming cache_seqlens, nothing written anywhere.
    if c["lens_layout"] == "expanded":
        c["lens_layout"] = "contiguous"
    lens = list(c["lens"])
    row = row % c["B"]
    lens[row] = bad if bad < 0 else c["T_max"] - c["S"] + bad
    lens[row] = max(min(lens[row], 2**31 - 1), -(2**31))
    c = dict(c, lens=lens, hidden=0)
    vals = attention_inputs(c)
    out, k, v, untouched = run_attention(entry, c, vals, make_lens(c))
    assert untouched, "a write outside k_cache/v_cache"
    assert isinstance(out, error_types(entry)), f"expected an error, got {out!r}"
    assert "cache_seqlens" in str(out)
    assert torch.equal(k, vals["k_cache"]) and torch.equal(v, vals["v_cache"]), "cache written before the error"


def base_case(**kw):
    c = dict(B=2, S=3, Hkv=2, Hq=4, D=8, T_max=9, lens=[0, 4], lens_layout="contiguous", hidden=0, rope=True,
             layout="contiguous", gap=0, seed=0)
    c.update(kw)
    return c


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("which", ["k_cache", "v_cache"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_attention_overlapping_cache_refused(entry, which, axis):
    # A cache expanded over B, Hkv or T (stride 0) makes several outputs share
    # memory: refused, as PyTorch refuses such outputs of in-place ops.
    c = base_case()
    vals = attention_inputs(c)
    shape = list(vals[which].shape)
    one = list(shape)
    one[axis] = 1
    cache = vals[which][tuple(slice(0, 1) if i == axis else slice(None) for i in range(4))].clone().expand(shape)
    args = dict(vals, **{which: cache})
    lens = torch.tensor(c["lens"], dtype=torch.int32)
    with pytest.raises(error_types(entry), match=which):
        call(entry, "draft_verify_attention", args["q"], args["k_cache"], args["v_cache"], args["k_new"],
             args["v_new"], lens, args["cos"], args["sin"], None)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("scale", [1e39, -1e39, float("inf"), float("nan")])
def test_attention_scale_not_finite_in_compute_dtype(entry, scale):
    # 1e39 is finite as a double but overflows the fp32 accumulation.
    c = base_case()
    vals = attention_inputs(c)
    out, k, v, untouched = run_attention(entry, c, vals, torch.tensor(c["lens"], dtype=torch.int32), scale)
    assert untouched
    assert isinstance(out, error_types(entry)) and "softmax_scale" in str(out), f"got {out!r}"


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("tensor", ["v_new", "k_new"])
@pytest.mark.parametrize("Hq", [2, 4])
def test_attention_masked_nonfinite_has_no_effect(entry, bad, tensor, Hq):
    # A non-finite key/value at a position a query must not see (a later query
    # of the same verify block, or stale cache past the row's length) leaves
    # that query's output unchanged: 0 * NaN must not leak through P @ V.
    c = base_case(S=4, T_max=11, lens=[0, 5], Hq=Hq)
    vals = attention_inputs(c)
    lens = torch.tensor(c["lens"], dtype=torch.int32)
    clean, _, _, _ = run_attention(entry, c, vals, lens)
    for j in range(1, c["S"]):
        dirty_vals = dict(vals)
        dirty_vals[tensor] = vals[tensor].clone()
        dirty_vals[tensor][:, j:] = bad  # seen by queries j.. only
        for name in ("k_cache", "v_cache"):
            dirty_vals[name] = vals[name].clone()
            dirty_vals[name][0, :, 4:] = bad  # stale cache past row 0's last position (0 + S - 1)
            dirty_vals[name][1, :, 9:] = bad  # and past row 1's (5 + S - 1)
        dirty, _, _, untouched = run_attention(entry, c, dirty_vals, lens)
        assert untouched
        assert not isinstance(dirty, Exception), repr(dirty)
        torch.testing.assert_close(dirty[:, :j], clean[:, :j], atol=0, rtol=0, msg=f"{tensor}[:, {j}:] = {bad}")
        assert torch.isfinite(dirty[:, :j]).all()


@pytest.mark.parametrize("entry", ENTRIES)
def test_attention_zero_sizes(entry):
    # Empty batch and zero query heads are valid (empty output); a zero head
    # dim or an empty cache is a clear error.
    for kw, shape in ((dict(B=0, lens=[]), (0, 3, 4, 8)), (dict(Hq=0, Hkv=2), (2, 3, 0, 8))):
        c = base_case(**kw)
        vals = attention_inputs(c)
        out, _, _, untouched = run_attention(entry, c, vals, torch.tensor(c["lens"], dtype=torch.int32))
        assert untouched
        assert not isinstance(out, Exception), f"{kw}: {out!r}"
        assert out.shape == shape
    for kw, name in ((dict(D=0, rope=False), "D"), (dict(T_max=0, S=1, lens=[0, 0]), "cache_seqlens")):
        c = base_case(**kw)
        vals = attention_inputs(c)
        out, _, _, untouched = run_attention(entry, c, vals, torch.tensor(c["lens"], dtype=torch.int32))
        assert untouched
        assert isinstance(out, error_types(entry)) and name in str(out), f"{kw}: {out!r}"


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("G", [65, 130])
def test_attention_many_heads_per_kv_head(entry, G):
    # More query heads per kv head than the cpu kernel's row block (64): the
    # rows of one query are split across blocks, and its scratch stays bounded.
    c = base_case(B=1, S=3, Hkv=1, Hq=G, D=8, T_max=7, lens=[2], gap=3)
    vals = attention_inputs(c)
    ref_out, ref_k, _ = reference_attention(vals, c["lens"])
    out, k, _, untouched = run_attention(entry, c, vals, torch.tensor(c["lens"], dtype=torch.int32))
    assert untouched and not isinstance(out, Exception), repr(out)
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(k, ref_k, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("entry", ENTRIES)
def test_outputs_do_not_require_grad(entry):
    # The ops are inference kernels without a backward: their outputs never
    # carry a grad_fn, and a cache that requires grad (a leaf written in place)
    # is refused.
    c = base_case()
    vals = attention_inputs(c)
    lens = torch.tensor(c["lens"], dtype=torch.int32)
    q = vals["q"].clone().requires_grad_()
    out = call(entry, "draft_verify_attention", q, vals["k_cache"].clone(), vals["v_cache"].clone(),
               vals["k_new"], vals["v_new"], lens, vals["cos"], vals["sin"], None)
    assert not out.requires_grad and out.grad_fn is None
    kc = vals["k_cache"].clone().requires_grad_()
    with pytest.raises(error_types(entry), match="k_cache"):
        call(entry, "draft_verify_attention", vals["q"], kc, vals["v_cache"].clone(), vals["k_new"],
             vals["v_new"], lens, vals["cos"], vals["sin"], None)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    n, toks = call(entry, "verify_greedy", torch.zeros(2, 2, dtype=torch.int64), logits)
    assert not n.requires_grad and not toks.requires_grad


# --------------------------------------------------------------------------- acceptance cases


@st.composite
def acceptance_case(draw):
    B = draw(st.integers(1, 4))
    k = draw(st.integers(1, 4))
    V = draw(st.sampled_from([1, 2, 5, 17, 64]))
    # Per-row draft lengths (None: k for every row), contiguous or strided.
    lens = draw(st.one_of(st.none(), st.lists(st.integers(0, k), min_size=B, max_size=B)))
    return dict(B=B, k=k, V=V, layout=draw(st.sampled_from(["contiguous", "spread", "transposed"])),
                hidden=draw(st.sampled_from([-1, V, 2**62])), seed=draw(st.integers(0, 2**16)),
                rng_seed=draw(st.sampled_from([0, 1, 2**63 - 1, -(2**63), 12345])),
                offset=draw(st.sampled_from([0, 7, 2**32 - 1])),
                lens=lens, lens_layout=draw(st.sampled_from(["contiguous", "strided"])))


def acceptance_inputs(c):
    g = torch.Generator().manual_seed(c["seed"])
    B, k, V = c["B"], c["k"], c["V"]
    p = torch.softmax(torch.randn(B, k + 1, V, generator=g) * 2, -1)
    q = torch.softmax(torch.randn(B, k, V, generator=g) * 2, -1)
    logits = (torch.randn(B, k + 1, V, generator=g) * 2).round()
    drafts = torch.randint(0, V, (B, k), generator=g)
    drafts[:, :1] = logits[:, :1].argmax(-1)  # some acceptances
    return drafts, q, p, logits


def strided_tokens(drafts: torch.Tensor, hidden: int) -> torch.Tensor:
    buf = torch.full((drafts.shape[0], 2 * drafts.shape[1]), hidden, dtype=torch.int64)
    view = buf[:, ::2]
    view.copy_(drafts)
    return view


def acceptance_lens(c, hidden: int = 0) -> torch.Tensor | None:
    """c["lens"] as int32 [B] (strided over `hidden` values when c asks), or None."""
    if c.get("lens") is None:
        return None
    if c.get("lens_layout") == "strided":
        return hidden_lens(c["lens"], hidden)
    return torch.tensor(c["lens"], dtype=torch.int32)


def past_lens_garbage(c, drafts, q, p, logits):
    """Copies holding garbage past each row's draft length d: the out-of-range
    id c["hidden"] at positions >= d, NaN draft probabilities at positions >= d,
    NaN target probabilities / logits at positions > d."""
    drafts, q, p, logits = drafts.clone(), q.clone(), p.clone(), logits.clone()
    for b, d in enumerate(c["lens"] or []):
        drafts[b, d:] = c["hidden"]
        q[b, d:] = float("nan")
        p[b, d + 1 :] = float("nan")
        logits[b, d + 1 :] = float("nan")
    return drafts, q, p, logits


@pytest.mark.parametrize("entry", ENTRIES)
@FUZZ
@given(c=acceptance_case())
def test_acceptance_valid_layouts(entry, c):
    # Non-contiguous drafts (whose gaps hold out-of-range ids), logits and
    # probabilities, seeds at both int64 ends, per-row draft lengths (strided
    # ones with gaps holding a length past k) with garbage past each row's
    # length: bit-exact with the reference on the clean inputs.
    drafts, q, p, logits = acceptance_inputs(c)
    lens = acceptance_lens(c, hidden=c["k"] + 1)
    dirty = past_lens_garbage(c, drafts, q, p, logits)
    lay = c["layout"]
    sd = strided_tokens(dirty[0], c["hidden"])
    n, out = call(entry, "verify_greedy", sd, noncontig(dirty[3], lay), lens)
    rn, rout = reference.verify_greedy(drafts, logits, lens)
    assert torch.equal(n, rn) and torch.equal(out, rout)
    n, out = call(entry, "verify_sampling", sd, noncontig(dirty[1], lay), noncontig(dirty[2], lay), c["rng_seed"],
                  c["offset"], lens)
    rn, rout = reference.verify_sampling(drafts, q, p, c["rng_seed"], c["offset"], lens)
    assert torch.equal(n, rn) and torch.equal(out, rout)


@pytest.mark.parametrize("entry", ENTRIES)
@FUZZ
@given(c=acceptance_case(), bad=st.sampled_from([-1, -(2**31), 1, 2**31 - 1]), row=st.integers(0, 3))
def test_acceptance_bad_draft_lens(entry, c, bad, row):
    # One row's draft length outside [0, k], possibly in a strided tensor whose
    # gaps hold valid lengths: a clear error naming draft_lens.
    lens = list(c["lens"] or [c["k"]] * c["B"])
    lens[row % c["B"]] = bad if bad < 0 else min(c["k"] + bad, 2**31 - 1)
    c = dict(c, lens=lens)
    drafts, q, p, logits = acceptance_inputs(c)
    t = acceptance_lens(c, hidden=0)
    with pytest.raises(error_types(entry), match="draft_lens"):
        call(entry, "verify_greedy", drafts, logits, t)
    with pytest.raises(error_types(entry), match="draft_lens"):
        call(entry, "verify_sampling", drafts, q, p, 0, 0, t)


@pytest.mark.parametrize("entry", ENTRIES)
@FUZZ
@given(c=acceptance_case(), bad=st.sampled_from([-1, -(2**63), 0, 2**63 - 1]), pos=st.integers(0, 100))
def test_acceptance_bad_tokens(entry, c, bad, pos):
    # A draft id outside [0, V), visible in a strided tensor whose gaps hold
    # valid ids: a clear error naming draft_tokens.
    drafts, q, p, logits = acceptance_inputs(c)
    drafts.view(-1)[pos % drafts.numel()] = c["V"] if bad == 0 else bad
    sd = strided_tokens(drafts, 0)
    with pytest.raises(error_types(entry), match="draft_tokens"):
        call(entry, "verify_greedy", sd, logits)
    with pytest.raises(error_types(entry), match="draft_tokens"):
        call(entry, "verify_sampling", sd, q, p, 0, 0)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("seed", [2**63, 2**64 - 1, -(2**63) - 1, 10**30])
def test_seed_outside_int64_refused(entry, seed):
    # One seed range for every backend: the int64 range the schema carries.
    drafts, q, p, _ = acceptance_inputs(dict(B=2, k=2, V=5, seed=0))
    with pytest.raises((ValueError, RuntimeError, TypeError, OverflowError)) as info:
        call(entry, "verify_sampling", drafts, q, p, seed, 0)
    if entry[0] == "ops":
        assert info.type is ValueError and "seed" in str(info.value)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.values[0][0] == "ops"])
@pytest.mark.parametrize("which", ["draft_probs", "target_probs"])
def test_nan_probabilities_refused_by_ops(entry, which):
    drafts, q, p, _ = acceptance_inputs(dict(B=2, k=2, V=5, seed=0))
    args = dict(draft_probs=q, target_probs=p)
    args[which] = args[which].clone()
    args[which][1, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=which):
        call(entry, "verify_sampling", drafts, args["draft_probs"], args["target_probs"], 0, 0)


@pytest.mark.skipif(not HAS_NATIVE, reason="the compiled extension is not built")
@FUZZ
@given(c=acceptance_case(), n_nan=st.integers(1, 6), where=st.integers(0, 2**16))
def test_nan_probabilities_raw_ops_match_reference(c, n_nan, where):
    # The raw ops do not scan the probabilities (a full read the kernel does not
    # otherwise need): NaN has the reference's defined meaning instead (a NaN at
    # a drafted id rejects it, a NaN weight never wins a race).
    drafts, q, p, _ = acceptance_inputs(c)
    lens = acceptance_lens(c)
    g = torch.Generator().manual_seed(where)
    for t in (q, p):
        t.view(-1)[torch.randint(0, t.numel(), (n_nan,), generator=g)] = float("nan")
    rn, rout = reference.verify_sampling(drafts, q, p, c["rng_seed"], c["offset"], lens)
    n, out = torch.ops.layerskip.verify_sampling(drafts, q, p, c["rng_seed"], c["offset"], lens)
    assert torch.equal(n, rn) and torch.equal(out, rout)


@pytest.mark.parametrize("backend", [b for b in OPS_BACKENDS if b != "cpu"])
def test_trusted_inputs_nan_and_bad_ids(backend):
    # Inside ops.trusted_inputs() nothing is scanned: NaN probabilities keep the
    # reference's meaning on every backend, and an out-of-range draft id never
    # reads outside the probabilities: the torch backend raises from PyTorch's
    # own index check, the kernels reject the draft (docs/ops_boundary.md).
    c = dict(B=3, k=3, V=17, seed=5, rng_seed=9, offset=2)
    drafts, q, p, logits = acceptance_inputs(c)
    q[0, 1, drafts[0, 1]] = float("nan")
    p[1, 0, :5] = float("nan")
    rn, rout = reference.verify_sampling(drafts, q, p, c["rng_seed"], c["offset"])
    with ops.trusted_inputs():
        n, out = call(("ops", backend), "verify_sampling", drafts, q, p, c["rng_seed"], c["offset"])
    assert torch.equal(n, rn) and torch.equal(out, rout)
    drafts, q, p, logits = acceptance_inputs(c)
    bad = drafts.clone()
    bad[:, 1] = torch.tensor([-1, c["V"], 2**62])
    for name, args in (("verify_greedy", (bad, logits)), ("verify_sampling", (bad, q, p, 0, 0))):
        with ops.trusted_inputs():
            try:
                n, out = call(("ops", backend), name, *args)
            except (IndexError, RuntimeError):
                assert backend == "torch", f"{name}: the kernels must not raise"
                continue
        assert (n <= 1).all(), f"{name}: an out-of-range draft was accepted"
        assert ((out >= -1) & (out < c["V"])).all(), f"{name}: emitted {out}"


@pytest.mark.parametrize("backend", [b for b in OPS_BACKENDS if b != "cpu"])
def test_trusted_inputs_draft_lens_out_of_range(backend):
    # Inside ops.trusted_inputs() draft_lens is not read on the host: a length
    # outside [0, k] acts as the nearest one inside (the kernels clamp it on the
    # device, the reference's masks do the same), never a read past a tensor.
    c = dict(B=4, k=3, V=17, seed=6, rng_seed=2, offset=9)
    drafts, q, p, logits = acceptance_inputs(c)
    lens = torch.tensor([-5, 7, 2**31 - 1, -(2**31)], dtype=torch.int32)
    clamped = lens.clamp(0, c["k"])
    for name, args in (("verify_greedy", (drafts, logits)), ("verify_sampling", (drafts, q, p, 3, 1))):
        with ops.trusted_inputs():
            n, out = call(("ops", backend), name, *args, lens)
        rn, rout = getattr(reference, name)(*args, clamped)
        assert torch.equal(n, rn) and torch.equal(out, rout), name


@pytest.mark.parametrize("entry", ENTRIES)
def test_acceptance_zero_sizes(entry):
    drafts = torch.zeros(0, 3, dtype=torch.int64)
    n, out = call(entry, "verify_greedy", drafts, torch.zeros(0, 4, 5))
    assert n.shape == (0,) and out.shape == (0, 4)
    n, out = call(entry, "verify_sampling", drafts, torch.zeros(0, 3, 5), torch.zeros(0, 4, 5), 0, 0)
    assert n.shape == (0,) and out.shape == (0, 4)
    n, out = call(entry, "verify_greedy", drafts, torch.zeros(0, 4, 5), torch.zeros(0, dtype=torch.int32))
    assert n.shape == (0,) and out.shape == (0, 4)
    for name, args in (("draft_tokens", (torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 1, 5))),
                       ("target_logits", (torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 2, 0)))):
        with pytest.raises(error_types(entry), match=name):
            call(entry, "verify_greedy", *args)


# --------------------------------------------------------------------------- crash-prone cases, in a child


def run_isolated(case: str, timeout: float = 240) -> None:
    """Runs `_isolated_<case>()` of this module in a fresh interpreter.

    A signal (segfault, abort from an exception escaping an OpenMP region) or
    a hang fails the test with the child's output; an assertion in the child
    fails it with the child's traceback.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    code = textwrap.dedent(f"""
        import os, sys
        os.environ.setdefault("TRITON_INTERPRET", "1")
        sys.path.insert(0, {here!r})
        import test_fuzz_ops as t
        t._isolated_{case}()
        print("CHILD-OK")
    """)
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{case}: no answer in {timeout}s (hang?)\n{e.stdout}\n{e.stderr}")
    tail = (p.stdout + p.stderr)[-4000:]
    assert p.returncode >= 0, f"{case}: killed by signal {-p.returncode}\n{tail}"
    assert p.returncode == 0 and "CHILD-OK" in p.stdout, f"{case}: rc={p.returncode}\n{tail}"


def _isolated_expanded_lens():
    # cache_seqlens expanded from one element (stride 0) holding a valid value:
    # the kernels must read it through its stride, not past its 4-byte storage.
    for entry in entry_values():
        c = base_case(B=3, lens=[2, 2, 2], lens_layout="expanded")
        vals = attention_inputs(c)
        ref_out, ref_k, _ = reference_attention(vals, c["lens"])
        out, k, _, untouched = run_attention(entry, c, vals, make_lens(c))
        assert untouched, entry
        assert not isinstance(out, Exception), f"{entry}: {out!r}"
        torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=1e-4)
        # Lengths expanded from a value past T_max: refused, nothing written.
        bad = torch.tensor([c["T_max"]], dtype=torch.int32).expand(3)
        out, k, _, untouched = run_attention(entry, c, vals, bad)
        assert untouched and isinstance(out, error_types(entry)) and "cache_seqlens" in str(out), f"{entry}: {out!r}"


def _isolated_huge_expanded_heads():
    # 2^25 query heads made by expand cost nothing to build; every entry must
    # answer with a clear error (sizes checked before any allocation), never an
    # abort from a failed allocation inside a parallel region.
    D, S = 128, 16
    q = torch.zeros(1, S, 1, D).expand(1, S, 2**25, D)
    kc, vc = torch.zeros(1, 1, 32, D), torch.zeros(1, 1, 32, D)
    kn = vn = torch.zeros(1, S, 1, D)
    lens = torch.zeros(1, dtype=torch.int32)
    for entry in entry_values():
        try:
            call(entry, "draft_verify_attention", q, kc, vc, kn, vn, lens, None, None, None)
        except error_types(entry) as e:
            assert "q" in str(e), f"{entry}: {e}"
        else:
            raise AssertionError(f"{entry}: 2^25 heads x {S} x {D} accepted")


def _isolated_bad_lens_raw_strided():
    # The raw op's own value check must read cache_seqlens through its stride:
    # a strided tensor whose visible value is 1000 (gaps hold 0) is refused
    # instead of letting the kernel write ~1000 rows past T_max.
    c = base_case()
    vals = attention_inputs(c)
    lens = hidden_lens([0, 1000], 0)
    out, _, _, untouched = run_attention(("raw", None), c, vals, lens)
    assert untouched, "a write outside k_cache/v_cache"
    assert isinstance(out, RuntimeError) and "cache_seqlens" in str(out), repr(out)


@pytest.mark.parametrize("case", ["expanded_lens", "huge_expanded_heads", "bad_lens_raw_strided"])
def test_isolated(case):
    run_isolated(case)


# --------------------------------------------------------------------------- linear_rows

LINEAR_TOL = {torch.bfloat16: (2e-2, 1e-2), torch.float16: (2e-3, 2e-3), torch.float32: (1e-5, 1e-5)}


@st.composite
def linear_case(draw):
    return dict(
        lead=draw(st.lists(st.integers(0, 5), min_size=0, max_size=2)),
        K=draw(st.integers(1, 70)), N=draw(st.integers(1, 40)),
        dtype=draw(st.sampled_from([torch.bfloat16, torch.float16, torch.float32])),
        x_layout=draw(st.sampled_from(["contiguous", "sliced", "transposed", "expanded"])),
        w_layout=draw(st.sampled_from(["contiguous", "sliced", "transposed"])),
        seed=draw(st.integers(0, 2**16)),
    )


def linear_inputs(c):
    g = torch.Generator().manual_seed(c["seed"])
    K, N, dtype, lead = c["K"], c["N"], c["dtype"], list(c["lead"])
    rnd = lambda *s: (torch.randn(*s, generator=g) / K**0.5).to(dtype)  # noqa: E731
    rows = lead or [1]
    if c["x_layout"] == "sliced":
        x = rnd(*rows[:-1], 2 * rows[-1], K + 3)[..., ::2, 1:K + 1]
    elif c["x_layout"] == "transposed":
        x = rnd(K, *rows).movedim(0, -1)
    elif c["x_layout"] == "expanded":
        x = rnd(*rows[:-1], 1, K).expand(*rows, K)
    else:
        x = rnd(*rows, K)
    if not lead:
        x = x[0]  # [K]: a 1-d input
    w = {"contiguous": lambda: rnd(N, K), "sliced": lambda: rnd(2 * N, K + 5)[::2, 2:K + 2],
         "transposed": lambda: rnd(K, N).t()}[c["w_layout"]]()
    return x, w


@pytest.mark.parametrize("entry", ENTRIES)
@FUZZ
@given(c=linear_case())
def test_linear_rows_valid_layouts(entry, c):
    # Any layout and size (1-d x, empty leading dims, K not a multiple of the
    # kernel's 32-wide step, strided or stride-0 operands) gives the
    # reference's product, contiguous, and leaves both operands unchanged.
    x, w = linear_inputs(c)
    x_before, w_before = x.clone(), w.clone()
    want = reference.linear_rows(x, w)
    got = call(entry, "linear_rows", x, w)
    atol, rtol = LINEAR_TOL[c["dtype"]]
    assert got.shape == (*x.shape[:-1], w.shape[0]) and got.dtype == x.dtype and got.is_contiguous()
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)
    assert torch.equal(x, x_before) and torch.equal(w, w_before)
    assert not got.requires_grad


@pytest.mark.parametrize("entry", ENTRIES)
def test_linear_rows_bad_input(entry):
    bf = dict(dtype=torch.bfloat16)
    bad = [
        (torch.zeros(2, 3, **bf), torch.zeros(4, 5, **bf), "K"),
        (torch.zeros(2, 3, **bf), torch.zeros(3, **bf), "weight"),
        (torch.zeros((), **bf), torch.zeros(1, 1, **bf), "x"),
        (torch.zeros(2, 3, **bf), torch.zeros(4, 3, dtype=torch.float16), "weight"),
        (torch.zeros(2, 3, dtype=torch.int64), torch.zeros(4, 3, dtype=torch.int64), "x"),
        (torch.zeros(1, 1, **bf).expand(2**31, 1), torch.zeros(2, 1, **bf), "x"),
        (torch.zeros(1, 1, **bf).expand(2**16, 1), torch.zeros(1, 1, **bf).expand(2**16, 1), "output"),
    ]
    for x, w, name in bad:
        with pytest.raises(error_types(entry), match=name):
            call(entry, "linear_rows", x, w)
    x = torch.randn(3, 8, requires_grad=True)
    assert not call(entry, "linear_rows", x, torch.randn(2, 8)).requires_grad
    if entry[0] == "ops":
        with pytest.raises(TypeError, match="x and weight must be tensors"):
            call(entry, "linear_rows", [1.0], torch.zeros(1, 1))


# --------------------------------------------------------------------------- linear_rows_int8


def linear_int8_inputs(c):
    """linear_inputs' x and layouts, with int8 weights and a (possibly strided) fp32 scale."""
    x, w = linear_inputs(c)
    g = torch.Generator().manual_seed(c["seed"] + 1)
    N, K = w.shape
    q = torch.randint(-128, 128, (2 * N, K + 5), generator=g, dtype=torch.int8)
    q = {"contiguous": lambda: q[:N, :K].contiguous(), "sliced": lambda: q[::2, 2:K + 2],
         "transposed": lambda: q[:N, :K].t().contiguous().t()}[c["w_layout"]]()
    scale = (torch.rand(2 * N, generator=g) / (127 * K**0.5))[::2]
    return x, q, scale


@pytest.mark.parametrize("entry", ENTRIES)
@FUZZ
@given(c=linear_case())
def test_linear_rows_int8_valid_layouts(entry, c):
    # Any layout and size, as for linear_rows: the reference's product,
    # contiguous, operands unchanged, no gradient.
    x, w, scale = linear_int8_inputs(c)
    before = [t.clone() for t in (x, w, scale)]
    want = reference.linear_rows_int8(x, w, scale)
    got = call(entry, "linear_rows_int8", x, w, scale)
    atol, rtol = LINEAR_TOL[c["dtype"]]
    assert got.shape == (*x.shape[:-1], w.shape[0]) and got.dtype == x.dtype and got.is_contiguous()
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)
    assert all(torch.equal(t, b) for t, b in zip((x, w, scale), before))
    assert not got.requires_grad


@pytest.mark.parametrize("entry", ENTRIES)
def test_linear_rows_int8_bad_input(entry):
    bf, i8 = dict(dtype=torch.bfloat16), dict(dtype=torch.int8)
    bad = [
        (torch.zeros(2, 3, **bf), torch.zeros(4, 5, **i8), torch.ones(4), "K"),
        (torch.zeros(2, 3, **bf), torch.zeros(3, **i8), torch.ones(3), "weight"),
        (torch.zeros((), **bf), torch.zeros(1, 1, **i8), torch.ones(1), "x"),
        (torch.zeros(2, 3, **bf), torch.zeros(4, 3, **bf), torch.ones(4), "weight must be int8"),
        (torch.zeros(2, 3, **bf), torch.zeros(4, 3, dtype=torch.uint8), torch.ones(4), "weight must be int8"),
        (torch.zeros(2, 3, dtype=torch.int64), torch.zeros(4, 3, **i8), torch.ones(4), "x"),
        (torch.zeros(2, 3, **bf), torch.zeros(4, 3, **i8), torch.ones(5), "scale"),
        (torch.zeros(2, 3, **bf), torch.zeros(4, 3, **i8), torch.ones(4, 1), "scale"),
        (torch.zeros(2, 3, **bf), torch.zeros(4, 3, **i8), torch.ones(4, **bf), "scale must be float32"),
        (torch.zeros(1, 1, **bf).expand(2**31, 1), torch.zeros(2, 1, **i8), torch.ones(2), "x"),
        (torch.zeros(1, 1, **bf).expand(2**16, 1), torch.zeros(1, 1, **i8).expand(2**16, 1), torch.ones(2**16),
         "output"),
    ]
    for x, w, s, name in bad:
        with pytest.raises(error_types(entry), match=name):
            call(entry, "linear_rows_int8", x, w, s)
    x = torch.randn(3, 8, requires_grad=True)
    assert not call(entry, "linear_rows_int8", x, torch.ones(2, 8, **i8), torch.ones(2)).requires_grad
    if entry[0] == "ops":
        with pytest.raises(TypeError, match="tensors"):
            call(entry, "linear_rows_int8", [1.0], torch.zeros(1, 1, **i8), torch.ones(1))
        with pytest.raises(TypeError, match="scale must be a tensor"):
            call(entry, "linear_rows_int8", torch.zeros(1, 1), torch.zeros(1, 1, **i8), [1.0])
