"""Boundary checks of the ops (docs/ops_boundary.md): shapes, dtypes, devices
and layouts on every call; values (lengths, token ids, NaN) in eager mode
outside trusted_inputs().

Every check raises a ValueError (TypeError for a non-tensor) that names the
argument and the expected shape. The compiled cpu/cuda ops check again in C++
(csrc/checks.h) with the same rules.
"""

from __future__ import annotations

import contextlib

import torch

from .. import reference

__all__ = ["SEED_RANGE", "trusted_inputs", "check_attention", "check_greedy", "check_sampling", "check_linear_rows"]

# Seeds of verify_sampling, on every backend, the CLI and generate(): the int64
# range that the op schema (`int seed`) carries. Defined here only.
SEED_RANGE = (-(2**63), 2**63)

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- trusted inputs

_trusted = False


@contextlib.contextmanager
def trusted_inputs():
    """Skip the checks that read tensor values, for a caller that guarantees them.

    The functions of this module check shapes, dtypes and devices on every call,
    and by default also the values: cache_seqlens bounds, draft_lens in [0, k],
    draft token ids in [0, V), no NaN in probabilities. Reading values is a host
    sync on GPU (one per layer per decode step). Inside this context those value
    checks are skipped; `generate` enters it around its decode loop because it validates
    lengths and tokens once per call and owns them afterwards.

    A violated guarantee still never touches memory outside a tensor (the
    kernels clamp); docs/ops_boundary.md says what each backend returns then.

    Example:
        >>> with trusted_inputs():
        ...     out = draft_verify_attention(q, k_cache, v_cache, k_new, v_new, lens)  # doctest: +SKIP
    """
    global _trusted
    previous, _trusted = _trusted, True
    try:
        yield
    finally:
        _trusted = previous


def _read_values() -> bool:
    return not (_trusted or torch.compiler.is_compiling())


# --------------------------------------------------------------------------- checks

# _VALUE_CHECKS_NOTE: shape/dtype/device/layout checks always run. Checks of
# values (cache_seqlens bounds, draft_lens in [0, k], token ids in [0, V), NaN
# probabilities; the last two only where a row drafted) read tensor contents,
# i.e. a host sync on GPU; they run in eager mode and are skipped inside
# trusted_inputs() and while torch.compile traces (a graph cannot branch on
# data). The compiled cpu ops re-check cache_seqlens bounds, draft_lens and token
# ids themselves (no sync on CPU), and the CUDA and Triton kernels never touch
# memory outside a tensor whatever the values (docs/ops_boundary.md).

# Kernels count rows and output elements in 32 bits in places, and an argument
# made by `expand` costs nothing to build: its logical size is bounded before
# anything is allocated for it. Same bound as csrc/checks.h.
_MAX_ELEMENTS = 2**31 - 1
_FLOAT32_MAX = torch.finfo(torch.float32).max


def _check_numel(t: torch.Tensor, name: str, layout: str) -> None:
    n = 1
    for s in t.shape:
        n *= s  # Python ints: no overflow
    if n > _MAX_ELEMENTS:
        raise ValueError(f"{name} {layout} = {tuple(t.shape)} has more than 2^31 - 1 elements, "
                         "the most this op supports")


def _may_self_overlap(t: torch.Tensor) -> bool:
    """True when two indices of t can address one element (stride-0 expand, or
    strides too small for the sizes); the same rule as csrc/checks.h."""
    span = 0
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz > 1):
        if stride <= span:
            return True
        span += stride * (size - 1)
    return False


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    # Decided only for dense tensors (as PyTorch's own in-place checks); the
    # byte ranges of two dense tensors overlap iff they share an element. Not
    # while torch.compile traces (addresses are not traceable); the compiled
    # cpu/cuda ops check it again in C++.
    if torch.compiler.is_compiling() or a.numel() == 0 or b.numel() == 0 or not (a.is_contiguous() and b.is_contiguous()):
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


def _check_output(out: torch.Tensor, name: str, others) -> None:
    if _may_self_overlap(out):
        raise ValueError(f"{name} is written in place and must not overlap itself (a stride-0 expand or "
                         f"overlapping strides), got sizes {tuple(out.shape)} strides {out.stride()}")
    if out.requires_grad:
        raise ValueError(f"{name} is written in place and must not require grad (the layerskip ops have no backward)")
    for other, other_name in others:
        if other is not None and _shares_memory(out, other):
            raise ValueError(f"{name} is written in place and must not share memory with {other_name}")


def _same_device(ref: torch.Tensor, t: torch.Tensor, name: str, ref_name: str = "q") -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} must be on {ref.device} like {ref_name}, got {t.device}")


def _check_attention(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos, sin, softmax_scale):
    if q.dim() != 4:
        raise ValueError(f"q must be [B, S, Hq, D], got {tuple(q.shape)}")
    if k_cache.dim() != 4:
        raise ValueError(f"k_cache must be [B, Hkv, T_max, D], got {tuple(k_cache.shape)}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache must have the shape of k_cache {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}")
    B, S, Hq, D = q.shape
    _, Hkv, T_max, _ = k_cache.shape
    if k_cache.shape[0] != B or k_cache.shape[3] != D:
        raise ValueError(f"k_cache must be [B={B}, Hkv, T_max, D={D}], got {tuple(k_cache.shape)}")
    if k_new.shape != (B, S, Hkv, D):
        raise ValueError(f"k_new must be [B={B}, S={S}, Hkv={Hkv}, D={D}], got {tuple(k_new.shape)}")
    if v_new.shape != k_new.shape:
        raise ValueError(f"v_new must have the shape of k_new {tuple(k_new.shape)}, got {tuple(v_new.shape)}")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"q heads (Hq={Hq}) must be a multiple of k_cache heads (Hkv={Hkv})")
    if S < 1:
        raise ValueError(f"q must have S >= 1 queries, got S={S}")
    if D < 1:
        raise ValueError(f"q must have head dim D >= 1, got D={D}")
    if S > T_max:
        raise ValueError(f"cache_seqlens + S must be <= T_max, but S={S} already exceeds the cache length T_max={T_max}")
    _check_numel(q, "q", "[B, S, Hq, D]")
    _check_numel(k_new, "k_new", "[B, S, Hkv, D]")
    if q.dtype not in _FLOATS:
        raise ValueError(f"q must be float32, float16 or bfloat16, got {q.dtype}")
    for t, name in ((k_cache, "k_cache"), (v_cache, "v_cache"), (k_new, "k_new"), (v_new, "v_new")):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
        _same_device(q, t, name)
    if k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("k_cache and v_cache must be contiguous in the head dimension")
    if cache_seqlens.shape != (B,):
        raise ValueError(f"cache_seqlens must be [B={B}], got {tuple(cache_seqlens.shape)}")
    if cache_seqlens.dtype != torch.int32:
        raise ValueError(f"cache_seqlens must be int32, got {cache_seqlens.dtype}")
    _same_device(q, cache_seqlens, "cache_seqlens")
    if (cos is None) != (sin is None):
        raise ValueError("cos and sin must be given together")
    if cos is not None:
        if D % 2:
            raise ValueError(f"head dim D must be even for RoPE, got {D}")
        for t, name in ((cos, "cos"), (sin, "sin")):
            if t.dim() != 2 or t.shape[0] < T_max or t.shape[1] != D // 2:
                raise ValueError(f"{name} must be [T >= T_max={T_max}, D/2={D // 2}], got {tuple(t.shape)}")
            if t.dtype != torch.float32:
                raise ValueError(f"{name} must be float32, got {t.dtype}")
            _same_device(q, t, name)
    others = ((q, "q"), (k_new, "k_new"), (v_new, "v_new"), (cache_seqlens, "cache_seqlens"), (cos, "cos"),
              (sin, "sin"))
    _check_output(k_cache, "k_cache", ((v_cache, "v_cache"),) + others)
    _check_output(v_cache, "v_cache", others)
    if softmax_scale is not None:
        # Scores are computed in fp32: a scale finite as a double may not be (1e39).
        if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
            raise ValueError(f"softmax_scale must be a float or None, got {softmax_scale!r}")
        if not abs(float(softmax_scale)) <= _FLOAT32_MAX:
            raise ValueError(f"softmax_scale must be finite in float32 (|scale| <= 3.4e38), got {softmax_scale}")
    if not _read_values() or not B:
        return  # see _VALUE_CHECKS_NOTE
    # Values: one host read (a sync on GPU) so that no backend can write past T_max.
    lo, hi = (int(x) for x in torch.aminmax(cache_seqlens))
    if lo < 0:
        raise ValueError(f"cache_seqlens must be >= 0, got min {lo}")
    if hi + S > T_max:
        raise ValueError(f"cache_seqlens + S = {hi} + {S} exceeds the cache length T_max={T_max}")


def _check_draft_tokens(draft_tokens, target, target_name, draft_lens):
    """Checks draft_tokens [B, k] and draft_lens against `target` [B, k+1, V].

    Returns bool [B, k], position i of row b drafted (i < draft_lens[b]), when
    values are read and draft_lens is given, else None."""
    if draft_tokens.dim() != 2:
        raise ValueError(f"draft_tokens must be [B, k], got {tuple(draft_tokens.shape)}")
    if draft_tokens.dtype != torch.int64:
        raise ValueError(f"draft_tokens must be int64, got {draft_tokens.dtype}")
    B, k = draft_tokens.shape
    if k < 1:
        raise ValueError(f"draft_tokens must hold k >= 1 drafted tokens per row, got k={k}")
    if target.dim() != 3 or target.shape[0] != B or target.shape[1] != k + 1 or target.shape[2] < 1:
        raise ValueError(f"{target_name} must be [B={B}, k+1={k + 1}, V], got {tuple(target.shape)}")
    _same_device(target, draft_tokens, "draft_tokens", target_name)
    if draft_lens is not None:
        if not isinstance(draft_lens, torch.Tensor):
            raise ValueError(f"draft_lens must be an int32 tensor [B] or None, got {type(draft_lens).__name__}")
        if draft_lens.shape != (B,):
            raise ValueError(f"draft_lens must be [B={B}], got {tuple(draft_lens.shape)}")
        if draft_lens.dtype != torch.int32:
            raise ValueError(f"draft_lens must be int32, got {draft_lens.dtype}")
        _same_device(target, draft_lens, "draft_lens", target_name)
    V = target.shape[2]
    if not _read_values() or not B:
        return None  # see _VALUE_CHECKS_NOTE
    drafted = None
    if draft_lens is not None:
        lo, hi = (int(x) for x in torch.aminmax(draft_lens))
        if lo < 0 or hi > k:
            raise ValueError(f"draft_lens must be in [0, k={k}], got {lo if lo < 0 else hi}")
        drafted = reference._drafted(draft_lens, k, draft_tokens.device)
    # Ids past a row's draft length are never used: they may hold anything.
    outside = (draft_tokens < 0) | (draft_tokens >= V)
    if drafted is not None:
        outside &= drafted
    if bool(outside.any()):
        raise ValueError(f"draft_tokens must be token ids in [0, V={V}), got {int(draft_tokens[outside][0])}")
    return drafted


def _check_greedy(draft_tokens, target_logits, draft_lens):
    _check_draft_tokens(draft_tokens, target_logits, "target_logits", draft_lens)
    if target_logits.dtype not in _FLOATS:
        raise ValueError(f"target_logits must be float32, float16 or bfloat16, got {target_logits.dtype}")


def _check_sampling(draft_tokens, draft_probs, target_probs, seed, offset, draft_lens):
    drafted = _check_draft_tokens(draft_tokens, target_probs, "target_probs", draft_lens)
    for t, name in ((target_probs, "target_probs"), (draft_probs, "draft_probs")):
        if t.dtype != torch.float32:
            raise ValueError(f"{name} must be float32, got {t.dtype}")
    B, k = draft_tokens.shape
    V = target_probs.shape[2]
    if draft_probs.shape != (B, k, V):
        raise ValueError(f"draft_probs must be [B, k, V] = [{B}, {k}, {V}], got {tuple(draft_probs.shape)}")
    _same_device(target_probs, draft_probs, "draft_probs", "target_probs")
    if isinstance(seed, bool) or not isinstance(seed, int) or not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
        raise ValueError(f"seed must be an int in [-2^63, 2^63), got {seed!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < 2**32:
        raise ValueError(f"offset must be an int in [0, 2^32), got {offset!r}")
    if not _read_values():
        return  # see _VALUE_CHECKS_NOTE
    # A NaN probability would make every comparison false and bias the output
    # silently; the scan costs one extra read of both tensors. With draft_lens,
    # only what the op uses: draft positions i < d, target positions i <= d.
    used = {}
    if drafted is not None:
        used["draft_probs"] = drafted
        used["target_probs"] = torch.cat([torch.ones_like(drafted[:, :1]), drafted], dim=1)
    for t, name in ((target_probs, "target_probs"), (draft_probs, "draft_probs")):
        nan = torch.isnan(t)
        if name in used:
            nan &= used[name][:, :, None]
        if bool(nan.any()):
            raise ValueError(f"{name} contains NaN")



def _check_linear_rows_int8(x, weight, scale):
    """Checks of linear_rows_int8: scale is required (named when missing)."""
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"scale must be a tensor (fp32 [N], one factor per weight row), got {type(scale).__name__}")
    _check_linear_rows(x, weight, scale)


def _check_linear_rows(x, weight, scale=None):
    """Checks of linear_rows, and of linear_rows_int8 when scale is given."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError(f"x and weight must be tensors, got {type(x).__name__} and {type(weight).__name__}")
    if x.dim() < 1:
        raise ValueError("x must be [..., K], got a 0-d tensor")
    if weight.dim() != 2:
        raise ValueError(f"weight must be [N, K], got {tuple(weight.shape)}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x must be [..., K] with K = weight.size(1) = {weight.shape[1]}, got {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if scale is None and weight.dtype != x.dtype:
        raise ValueError(f"weight must have x's dtype {x.dtype}, got {weight.dtype}")
    _same_device(x, weight, "weight", "x")
    if scale is not None:
        if weight.dtype != torch.int8:
            raise ValueError(f"weight must be int8, got {weight.dtype}")
        if not isinstance(scale, torch.Tensor):
            raise TypeError(f"scale must be a tensor, got {type(scale).__name__}")
        if scale.dim() != 1 or scale.shape[0] != weight.shape[0]:
            raise ValueError(f"scale must be [N] = [{weight.shape[0]}], got {tuple(scale.shape)}")
        if scale.dtype != torch.float32:
            raise ValueError(f"scale must be float32, got {scale.dtype}")
        _same_device(x, scale, "scale", "x")
    _check_numel(x, "x", "[..., K]")
    _check_numel(weight, "weight", "[N, K]")
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if rows * weight.shape[0] > _MAX_ELEMENTS:
        raise ValueError(f"the output [..., N] of x {tuple(x.shape)} and weight {tuple(weight.shape)} has more "
                         "than 2^31 - 1 elements, the most this op supports")


# Public names of the checks (the entry points call these).
check_attention = _check_attention
check_greedy = _check_greedy
check_sampling = _check_sampling
check_linear_rows = _check_linear_rows
check_linear_rows_int8 = _check_linear_rows_int8
