"""Python entry points of the ops: check inputs, pick a backend, run it.

The ops are also registered as `torch.ops.layerskip.<name>` (by the compiled
extension, or below with the reference implementation when it is not built),
each with a fake (meta) implementation so that torch.compile can trace them.
`torch.ops.layerskip.*` runs the compiled cpu/cuda kernel for the tensors'
device; the functions here add backend selection (torch/cpu/triton/cuda).
"""

from __future__ import annotations

import torch

from . import backends, reference

__all__ = ["draft_verify_attention", "verify_greedy", "verify_sampling", "SCHEMAS"]

# Same strings as TORCH_LIBRARY(layerskip, m) in csrc/ops.cpp (a test compares).
SCHEMAS = {
    "draft_verify_attention": (
        "draft_verify_attention(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k_new, "
        "Tensor v_new, Tensor cache_seqlens, Tensor? cos=None, Tensor? sin=None, "
        "float? softmax_scale=None) -> Tensor"
    ),
    "verify_greedy": "verify_greedy(Tensor draft_tokens, Tensor target_logits) -> (Tensor, Tensor)",
    "verify_sampling": (
        "verify_sampling(Tensor draft_tokens, Tensor draft_probs, Tensor target_probs, int seed, "
        "int offset) -> (Tensor, Tensor)"
    ),
}

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _register() -> None:
    if backends.native() is None:
        # No compiled extension: define the schemas here, backed by the reference,
        # so torch.ops.layerskip.* exists on every install.
        lib = torch.library.Library("layerskip", "DEF")
        for name, schema in SCHEMAS.items():
            lib.define(schema)
            lib.impl(name, getattr(reference, name), "CompositeExplicitAutograd")
        _register.lib = lib  # keep the Library alive

    @torch.library.register_fake("layerskip::draft_verify_attention")
    def _(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos=None, sin=None, softmax_scale=None):
        return torch.empty_like(q, memory_format=torch.contiguous_format)

    def _accept_fake(draft_tokens, *rest):
        B, k = draft_tokens.shape
        return (
            draft_tokens.new_empty((B,), dtype=torch.int32),
            draft_tokens.new_empty((B, k + 1), dtype=torch.int64),
        )

    torch.library.register_fake("layerskip::verify_greedy", _accept_fake)
    torch.library.register_fake("layerskip::verify_sampling", _accept_fake)


_register()


# --------------------------------------------------------------------------- checks

# _VALUE_CHECKS_NOTE: shape/dtype/device checks always run. Checks of values
# (cache_seqlens bounds, token ids in [0, V), NaN probabilities) read tensor
# contents, i.e. a host sync on GPU; they run in eager mode and are skipped while
# torch.compile traces (a graph cannot branch on data). The compiled cpu op
# re-checks cache_seqlens bounds itself, and the CUDA kernels never write
# outside the cache whatever the values.


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
    if softmax_scale is not None and not torch.isfinite(torch.tensor(float(softmax_scale))):
        raise ValueError(f"softmax_scale must be finite, got {softmax_scale}")
    if torch.compiler.is_compiling():
        return  # value checks need a host read; see _VALUE_CHECKS_NOTE
    # Values: one host read (a sync on GPU) so that no backend can write past T_max.
    lo, hi = torch.aminmax(cache_seqlens) if B else (torch.tensor(0), torch.tensor(0))
    if int(lo) < 0:
        raise ValueError(f"cache_seqlens must be >= 0, got min {int(lo)}")
    if int(hi) + S > T_max:
        raise ValueError(f"cache_seqlens + S = {int(hi)} + {S} exceeds the cache length T_max={T_max}")


def _check_draft_tokens(draft_tokens, target, target_name):
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
    V = target.shape[2]
    if torch.compiler.is_compiling():
        return
    if B and (bool((draft_tokens < 0).any()) or bool((draft_tokens >= V).any())):
        bad = draft_tokens[(draft_tokens < 0) | (draft_tokens >= V)][0]
        raise ValueError(f"draft_tokens must be token ids in [0, V={V}), got {int(bad)}")


def _check_greedy(draft_tokens, target_logits):
    _check_draft_tokens(draft_tokens, target_logits, "target_logits")
    if target_logits.dtype not in _FLOATS:
        raise ValueError(f"target_logits must be float32, float16 or bfloat16, got {target_logits.dtype}")


def _check_sampling(draft_tokens, draft_probs, target_probs, seed, offset):
    _check_draft_tokens(draft_tokens, target_probs, "target_probs")
    for t, name in ((target_probs, "target_probs"), (draft_probs, "draft_probs")):
        if t.dtype != torch.float32:
            raise ValueError(f"{name} must be float32, got {t.dtype}")
    B, k = draft_tokens.shape
    V = target_probs.shape[2]
    if draft_probs.shape != (B, k, V):
        raise ValueError(f"draft_probs must be [B, k, V] = [{B}, {k}, {V}], got {tuple(draft_probs.shape)}")
    _same_device(target_probs, draft_probs, "draft_probs", "target_probs")
    if not isinstance(seed, int) or not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must be an int in [-2^63, 2^64), got {seed!r}")
    if not isinstance(offset, int) or not 0 <= offset < 2**32:
        raise ValueError(f"offset must be an int in [0, 2^32), got {offset!r}")
    if torch.compiler.is_compiling():
        return
    # A NaN probability would make every comparison false and bias the output
    # silently; the scan costs one extra read of both tensors.
    for t, name in ((target_probs, "target_probs"), (draft_probs, "draft_probs")):
        if bool(torch.isnan(t).any()):
            raise ValueError(f"{name} contains NaN")


# --------------------------------------------------------------------------- dispatch


def _impl(op: str, backend: str):
    if backend == "torch":
        return getattr(reference, op)
    if backend == "triton":
        from . import triton as triton_kernels

        return getattr(triton_kernels, op)
    return getattr(torch.ops.layerskip, op)  # cpu / cuda: the dispatcher picks by device


def draft_verify_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cache_seqlens: torch.Tensor,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Fused RoPE + KV-cache write + causal attention over a static cache.

    Args:
        q: [B, S, Hq, D] fp32/fp16/bf16; S = 1 (draft step), k+1 (verify) or a prompt.
        k_cache, v_cache: [B, Hkv, T_max, D], q's dtype. Mutated: k_new/v_new (k_new
            after RoPE) are written at positions cache_seqlens[b] + s.
        k_new, v_new: [B, S, Hkv, D].
        cache_seqlens: int32 [B], tokens already cached per row (not modified).
        cos, sin: fp32 [>= T_max, D/2] RoPE tables (rotate-half convention), or None.
        softmax_scale: default 1/sqrt(D).

    Returns:
        [B, S, Hq, D] in q's dtype: query s of row b attends to keys
        0 .. cache_seqlens[b] + s; query head h uses kv head h // (Hq / Hkv).

    Example:
        >>> q = torch.randn(2, 3, 4, 64); kc = torch.zeros(2, 2, 16, 64); vc = torch.zeros_like(kc)
        >>> out = draft_verify_attention(q, kc, vc, torch.randn(2, 3, 2, 64), torch.randn(2, 3, 2, 64),
        ...                              torch.tensor([0, 5], dtype=torch.int32))
        >>> out.shape
        torch.Size([2, 3, 4, 64])
    """
    _check_attention(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos, sin, softmax_scale)
    fn = _impl("draft_verify_attention", backends.resolve(q.device))
    return fn(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos, sin, softmax_scale)


def verify_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor):
    """Greedy acceptance of k drafted tokens per row against the target's argmax.

    Args:
        draft_tokens: int64 [B, k], ids in [0, V).
        target_logits: [B, k+1, V] fp32/fp16/bf16.

    Returns:
        (num_accepted int32 [B] in 0..k, out_tokens int64 [B, k+1]):
        out_tokens[b, :num_accepted[b] + 1] are the accepted drafts followed by the
        target's argmax at the first mismatch (or the bonus token); -1 after.

    Example:
        >>> logits = torch.zeros(1, 3, 5); logits[0, [0, 1, 2], [2, 4, 1]] = 1
        >>> verify_greedy(torch.tensor([[2, 3]]), logits)
        (tensor([1], dtype=torch.int32), tensor([[ 2,  4, -1]]))
    """
    _check_greedy(draft_tokens, target_logits)
    fn = _impl("verify_greedy", backends.resolve(target_logits.device))
    return fn(draft_tokens, target_logits)


def verify_sampling(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    seed: int,
    offset: int,
):
    """Lossless speculative sampling (Leviathan et al. 2023; Chen et al. 2023).

    Args:
        draft_tokens: int64 [B, k].
        draft_probs: fp32 [B, k, V], the draft's (already warped) distributions.
        target_probs: fp32 [B, k+1, V], the full model's (already warped) distributions.
        seed: Philox key; offset: Philox counter offset in [0, 2^32), advanced by
            the caller per call. The counter layout is in reference.py.

    Returns:
        (num_accepted, out_tokens) as in verify_greedy; the emitted tokens are
        distributed exactly as sampling from target_probs.

    Example:
        >>> p = torch.full((1, 2, 4), 0.25); q = torch.full((1, 1, 4), 0.25)
        >>> verify_sampling(torch.tensor([[3]]), q, p, seed=0, offset=0)[0]
        tensor([1], dtype=torch.int32)
    """
    _check_sampling(draft_tokens, draft_probs, target_probs, seed, offset)
    fn = _impl("verify_sampling", backends.resolve(target_probs.device))
    return fn(draft_tokens, draft_probs, target_probs, seed, offset)
