"""Triton kernels of the ops, one file per op family.

Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (which must be
set before triton is imported). `triton` is imported on first use only, so that
`import layerskip_kernels` works without it. Inputs are checked by
layerskip_kernels.ops before they get here. The keyword-only tile arguments
exist so that tests can force the tiles a GPU would use under the interpreter.
"""

from __future__ import annotations

__all__ = ["draft_verify_attention", "verify_greedy", "verify_sampling"]


def draft_verify_attention(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos=None, sin=None,
                           softmax_scale=None, *, num_splits=None, block_n=None, min_keys_per_split=None):
    from .attention import draft_verify_attention as impl

    return impl(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos, sin, softmax_scale,
                num_splits=num_splits, block_n=block_n, min_keys_per_split=min_keys_per_split)


def verify_greedy(draft_tokens, target_logits, draft_lens=None, *, block_v=None, vocab_splits=None):
    from .acceptance import verify_greedy as impl

    return impl(draft_tokens, target_logits, draft_lens, block_v=block_v, vocab_splits=vocab_splits)


def verify_sampling(draft_tokens, draft_probs, target_probs, seed, offset, draft_lens=None, *, block_v=None,
                    vocab_splits=None):
    from .acceptance import verify_sampling as impl

    return impl(draft_tokens, draft_probs, target_probs, seed, offset, draft_lens, block_v=block_v,
                vocab_splits=vocab_splits)
