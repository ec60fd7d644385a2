"""Triton kernels of the ops, one file per op family.

Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (which must be
set before triton is imported). `triton` is imported on first use only, so that
`import layerskip_kernels` works without it. Inputs are checked by
layerskip_kernels.ops before they get here.
"""

from __future__ import annotations

__all__ = ["draft_verify_attention", "verify_greedy", "verify_sampling"]


def draft_verify_attention(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos=None, sin=None,
                           softmax_scale=None, *, num_splits=None):
    from .attention import draft_verify_attention as impl

    return impl(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos, sin, softmax_scale, num_splits=num_splits)


def verify_greedy(draft_tokens, target_logits):
    from .acceptance import verify_greedy as impl

    return impl(draft_tokens, target_logits)


def verify_sampling(draft_tokens, draft_probs, target_probs, seed, offset):
    from .acceptance import verify_sampling as impl

    return impl(draft_tokens, draft_probs, target_probs, seed, offset)
