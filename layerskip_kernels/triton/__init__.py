"""Triton kernels of the ops, one file per op family.

Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (which must be
set before triton is imported). `triton` is imported on first use only, so that
`import layerskip_kernels` works without it. Inputs are checked by
layerskip_kernels.ops before they get here. The keyword-only tile arguments
exist so that tests can force the tiles a GPU would use under the interpreter.

Under torch.compile each op is one opaque call, `torch.ops.layerskip_triton.<op>`
(registered here): the tracer never enters the Python launchers (tile choice,
device queries, the interpreter on a CPU), so a compiled decode step traces
with the triton backend on every device type and its kernels are launched,
and captured into a CUDA graph, as they are eagerly. Eager calls go to the
launchers directly.
"""

from __future__ import annotations

import torch

__all__ = ["draft_verify_attention", "verify_greedy", "verify_sampling"]

# The opaque ops' schemas: those of torch.ops.layerskip (ops.SCHEMAS) under
# another namespace, so the dispatcher runs the Triton launchers.
_SCHEMAS = {
    "draft_verify_attention": "(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k_new, Tensor v_new, "
                              "Tensor cache_seqlens, Tensor? cos=None, Tensor? sin=None, float? softmax_scale=None) "
                              "-> Tensor",
    "verify_greedy": "(Tensor draft_tokens, Tensor target_logits, Tensor? draft_lens=None) -> (Tensor, Tensor)",
    "verify_sampling": "(Tensor draft_tokens, Tensor draft_probs, Tensor target_probs, int seed, int offset, "
                       "Tensor? draft_lens=None) -> (Tensor, Tensor)",
}


def draft_verify_attention(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos=None, sin=None,
                           softmax_scale=None, *, num_splits=None, block_n=None, min_keys_per_split=None):
    if torch.compiler.is_compiling() and num_splits is None and block_n is None and min_keys_per_split is None:
        return torch.ops.layerskip_triton.draft_verify_attention(q, k_cache, v_cache, k_new, v_new, cache_seqlens,
                                                                 cos, sin, softmax_scale)
    from .attention import draft_verify_attention as impl

    return impl(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos, sin, softmax_scale,
                num_splits=num_splits, block_n=block_n, min_keys_per_split=min_keys_per_split)


def verify_greedy(draft_tokens, target_logits, draft_lens=None, *, block_v=None, vocab_splits=None):
    if torch.compiler.is_compiling() and block_v is None and vocab_splits is None:
        return torch.ops.layerskip_triton.verify_greedy(draft_tokens, target_logits, draft_lens)
    from .acceptance import verify_greedy as impl

    return impl(draft_tokens, target_logits, draft_lens, block_v=block_v, vocab_splits=vocab_splits)


def verify_sampling(draft_tokens, draft_probs, target_probs, seed, offset, draft_lens=None, *, block_v=None,
                    vocab_splits=None):
    if torch.compiler.is_compiling() and block_v is None and vocab_splits is None:
        return torch.ops.layerskip_triton.verify_sampling(draft_tokens, draft_probs, target_probs, seed, offset,
                                                          draft_lens)
    from .acceptance import verify_sampling as impl

    return impl(draft_tokens, draft_probs, target_probs, seed, offset, draft_lens, block_v=block_v,
                vocab_splits=vocab_splits)


def _register() -> None:
    """torch.ops.layerskip_triton.*: the launchers behind the dispatcher, with
    fake kernels for tracing (the shapes of torch.ops.layerskip's)."""
    lib = torch.library.Library("layerskip_triton", "DEF")
    for name, schema in _SCHEMAS.items():
        lib.define(name + schema)
    lib.impl("draft_verify_attention", lambda *a: draft_verify_attention(*a), "CompositeExplicitAutograd")
    lib.impl("verify_greedy", lambda *a: verify_greedy(*a), "CompositeExplicitAutograd")
    lib.impl("verify_sampling", lambda *a: verify_sampling(*a), "CompositeExplicitAutograd")

    @torch.library.register_fake("layerskip_triton::draft_verify_attention", lib=lib)
    def _(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos=None, sin=None, softmax_scale=None):
        return torch.empty_like(q, memory_format=torch.contiguous_format)

    def accept_outputs(draft_tokens):
        B, k = draft_tokens.shape
        return draft_tokens.new_empty((B,), dtype=torch.int32), draft_tokens.new_empty((B, k + 1), dtype=torch.int64)

    torch.library.register_fake("layerskip_triton::verify_greedy", lambda d, t, lens=None: accept_outputs(d), lib=lib)
    torch.library.register_fake("layerskip_triton::verify_sampling",
                                lambda d, q, p, seed, offset, lens=None: accept_outputs(d), lib=lib)
    _register.lib = lib  # keep the Library alive


_register()
