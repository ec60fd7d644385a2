"""Python entry points of the ops: check inputs (ops.checks), pick a backend
(backends: the registry says which backend implements which op), run it.

The ops are also registered as `torch.ops.layerskip.<name>` (by the compiled
extension, or below with the reference implementation when it is not built),
each with a fake (meta) implementation so that torch.compile can trace them.
`torch.ops.layerskip.*` runs the compiled cpu/cuda kernel for the tensors'
device; the functions here add backend selection (torch/cpu/triton/cuda).

The ops are inference kernels: they have no backward, and their outputs never
require grad (on every backend and through the raw ops). What each entry point
checks and promises for any input is written down in docs/ops_boundary.md.
"""

from __future__ import annotations

import torch

from .. import backends, reference
from .checks import (SEED_RANGE, check_attention, check_greedy, check_linear_rows, check_linear_rows_int8,
                     check_sampling, trusted_inputs)

__all__ = ["draft_verify_attention", "verify_greedy", "verify_sampling", "linear_rows", "linear_rows_int8",
           "trusted_inputs",
           "SCHEMAS", "SEED_RANGE"]

# Same strings as TORCH_LIBRARY(layerskip, m) in csrc/ops.cpp (a test compares).
SCHEMAS = {
    "draft_verify_attention": (
        "draft_verify_attention(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k_new, "
        "Tensor v_new, Tensor cache_seqlens, Tensor? cos=None, Tensor? sin=None, "
        "float? softmax_scale=None) -> Tensor"
    ),
    "verify_greedy": (
        "verify_greedy(Tensor draft_tokens, Tensor target_logits, Tensor? draft_lens=None) -> (Tensor, Tensor)"
    ),
    "verify_sampling": (
        "verify_sampling(Tensor draft_tokens, Tensor draft_probs, Tensor target_probs, int seed, "
        "int offset, Tensor? draft_lens=None) -> (Tensor, Tensor)"
    ),
    "linear_rows": "linear_rows(Tensor x, Tensor weight) -> Tensor",
    "linear_rows_int8": "linear_rows_int8(Tensor x, Tensor weight, Tensor scale) -> Tensor",
}

# Ops whose no-backward Autograd kernel the native extension registers itself
# (in C++: called once or more per layer of every decode step).
_NATIVE_AUTOGRAD = ("draft_verify_attention", "linear_rows", "linear_rows_int8")


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
        _fake_same_device(q=q, k_cache=k_cache, v_cache=v_cache, k_new=k_new, v_new=v_new,
                          cache_seqlens=cache_seqlens, cos=cos, sin=sin)
        return torch.empty_like(q, memory_format=torch.contiguous_format)

    def _accept_outputs(draft_tokens):
        B, k = draft_tokens.shape
        return (
            draft_tokens.new_empty((B,), dtype=torch.int32),
            draft_tokens.new_empty((B, k + 1), dtype=torch.int64),
        )

    @torch.library.register_fake("layerskip::verify_greedy")
    def _(draft_tokens, target_logits, draft_lens=None):
        _fake_same_device(draft_tokens=draft_tokens, target_logits=target_logits, draft_lens=draft_lens)
        return _accept_outputs(draft_tokens)

    @torch.library.register_fake("layerskip::verify_sampling")
    def _(draft_tokens, draft_probs, target_probs, seed, offset, draft_lens=None):
        _fake_same_device(draft_tokens=draft_tokens, draft_probs=draft_probs, target_probs=target_probs,
                          draft_lens=draft_lens)
        return _accept_outputs(draft_tokens)

    @torch.library.register_fake("layerskip::linear_rows")
    def _(x, weight):
        _fake_same_device(x=x, weight=weight)
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    @torch.library.register_fake("layerskip::linear_rows_int8")
    def _(x, weight, scale):
        _fake_same_device(x=x, weight=weight, scale=scale)
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    # The ops have no backward. Without an autograd kernel PyTorch would give
    # their outputs a grad_fn that fails only when backward() runs; this one
    # runs the op below autograd, so outputs never require grad, and refuses a
    # cache that requires grad (a leaf written in place).
    autograd = torch.library.Library("layerskip", "IMPL")
    for name in SCHEMAS:
        if name in _NATIVE_AUTOGRAD and backends.native() is not None:
            continue  # registered by csrc/ops.cpp
        autograd.impl(name, _no_grad_kernel(getattr(torch.ops.layerskip, name).default), "Autograd")
    _register.autograd = autograd


def _fake_same_device(**tensors) -> None:
    """The fake (Meta) kernels run for a call whose dispatch key is Meta: under
    torch.compile's tracing (every tensor fake) or when any real argument is on
    the meta device while the others are not (no kernel would check them, and
    the result would be uninitialized memory). Every tensor must be on the
    first one's device, the error naming the argument that is not; a call
    with every tensor on meta (or fake) is shape propagation and passes."""
    items = [(name, t) for name, t in tensors.items() if isinstance(t, torch.Tensor)]
    ref_name, ref = items[0]
    for name, t in items[1:]:
        if t.device != ref.device:
            raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {t.device}")


def _no_grad_kernel(op):
    def kernel(*args):
        if op.__name__.startswith("draft_verify_attention"):
            for t, name in ((args[1], "k_cache"), (args[2], "v_cache")):
                if t.requires_grad:
                    raise ValueError(f"{name} is written in place and must not require grad "
                                     "(the layerskip ops have no backward)")
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    return kernel


_register()
backends.registry.availability()  # computed here, outside any trace (backends.registry)


# --------------------------------------------------------------------------- dispatch


def _impl(op: str, backend: str):
    """The function of `backend` that runs `op` (the reference where the backend lacks it: backends.registry)."""
    return backends.implementation(op, backend)


def _dispatch(op: str, device: torch.device):
    """The implementation of `op` for tensors on `device`: constants to a torch.compile trace."""
    return backends.implementation(op, backends.resolve(device))


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
    check_attention(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos, sin, softmax_scale)
    backend = backends.resolve(q.device)
    head_dims = backends.registry.BY_NAME[backend].head_dims
    if head_dims is not None and q.shape[-1] not in head_dims:
        raise ValueError(f"q: head dim D={q.shape[-1]} is not supported by the {backend!r} backend, which "
                         f"supports D in {head_dims}; select another backend (layerskip_kernels.use_backend)")
    fn = backends.implementation("draft_verify_attention", backend)
    # B int32s: copying a strided or expanded tensor once here (no sync) means no
    # backend can read it as if it were contiguous.
    cache_seqlens = cache_seqlens.contiguous()
    with torch.no_grad():
        return fn(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos, sin, softmax_scale)


def verify_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor,
                  draft_lens: torch.Tensor | None = None):
    """Greedy acceptance of k drafted tokens per row against the target's argmax.

    Args:
        draft_tokens: int64 [B, k], ids in [0, V) (at positions < draft_lens[b]).
        target_logits: [B, k+1, V] fp32/fp16/bf16.
        draft_lens: int32 [B] in [0, k], or None (k for every row). Row b drafted
            only draft_tokens[b, :draft_lens[b]]: acceptance stops there, and when
            all of them are accepted the bonus token is the argmax at position
            draft_lens[b]. Entries past a row's length are never used.

    Returns:
        (num_accepted int32 [B] in 0..draft_lens[b], out_tokens int64 [B, k+1]):
        out_tokens[b, :num_accepted[b] + 1] are the accepted drafts followed by the
        target's argmax at the first mismatch (or the bonus token); -1 after.

    Example:
        >>> logits = torch.zeros(1, 3, 5); logits[0, [0, 1, 2], [2, 4, 1]] = 1
        >>> verify_greedy(torch.tensor([[2, 3]]), logits)
        (tensor([1], dtype=torch.int32), tensor([[ 2,  4, -1]]))
        >>> verify_greedy(torch.tensor([[2, 4]]), logits)  # both drafts match: bonus token 1
        (tensor([2], dtype=torch.int32), tensor([[2, 4, 1]]))
        >>> verify_greedy(torch.tensor([[2, 4]]), logits, torch.tensor([1], dtype=torch.int32))
        (tensor([1], dtype=torch.int32), tensor([[ 2,  4, -1]]))
    """
    check_greedy(draft_tokens, target_logits, draft_lens)
    fn = _dispatch("verify_greedy", target_logits.device)
    with torch.no_grad():
        return fn(draft_tokens, target_logits, draft_lens)


def verify_sampling(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    seed: int,
    offset: int,
    draft_lens: torch.Tensor | None = None,
):
    """Lossless speculative sampling (Leviathan et al. 2023; Chen et al. 2023).

    Args:
        draft_tokens: int64 [B, k].
        draft_probs: fp32 [B, k, V], the draft's (already warped) distributions.
        target_probs: fp32 [B, k+1, V], the full model's (already warped) distributions.
        seed: Philox key, an int in [-2^63, 2^63) (SEED_RANGE, the same on every
            backend); offset: Philox counter offset in [0, 2^32), advanced by
            the caller per call. The counter layout is in reference.py.
        draft_lens: int32 [B] in [0, k], or None (k for every row). Row b drafted
            only draft_tokens[b, :draft_lens[b]] (with draft_probs[b, :draft_lens[b]]);
            when all of them are accepted the bonus token is sampled from
            target_probs[b, draft_lens[b]]. Entries of draft_tokens/draft_probs
            past a row's length, and of target_probs past position draft_lens[b],
            are never used. reference.py says which random numbers each row uses.

    Returns:
        (num_accepted, out_tokens) as in verify_greedy; the emitted tokens are
        distributed exactly as sampling from target_probs.

    Example:
        >>> p = torch.full((1, 2, 4), 0.25); q = torch.full((1, 1, 4), 0.25)
        >>> verify_sampling(torch.tensor([[3]]), q, p, seed=0, offset=0)[0]
        tensor([1], dtype=torch.int32)
    """
    check_sampling(draft_tokens, draft_probs, target_probs, seed, offset, draft_lens)
    fn = _dispatch("verify_sampling", target_probs.device)
    with torch.no_grad():
        return fn(draft_tokens, draft_probs, target_probs, seed, offset, draft_lens)


def linear_rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight^T for the few rows of a decode step (fp32 accumulation).

    Args:
        x: [..., K] fp32/fp16/bf16, any strides.
        weight: [N, K], x's dtype and device.

    Returns:
        [..., N] in x's dtype, contiguous.

    The cpu backend has a kernel for bf16 (AVX512-BF16; other dtypes and builds
    without that ISA run ATen's linear). Every other backend runs the reference,
    ATen's GEMM (cuBLAS on a GPU): a GPU step is not bound by per-call costs
    once it is a CUDA graph. The model calls it for the few-row products of its
    decode steps (model/linear.py says which).

    Example:
        >>> x = torch.randn(2, 3, 8, dtype=torch.bfloat16); w = torch.randn(5, 8, dtype=torch.bfloat16)
        >>> linear_rows(x, w).shape
        torch.Size([2, 3, 5])
    """
    check_linear_rows(x, weight)
    with torch.no_grad():
        return _dispatch("linear_rows", x.device)(x, weight)


def _impl_linear_rows(backend: str):
    """linear_rows of one backend: the cpu kernel, or the reference everywhere else."""
    return _impl("linear_rows", backend)


def linear_rows_int8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(x @ weight^T) * scale: a few-row product with int8 weights (fp32 accumulation).

    Args:
        x: [..., K] fp32/fp16/bf16, any strides.
        weight: int8 [N, K], x's device.
        scale: fp32 [N], one factor per weight row, x's device.

    Returns:
        [..., N] in x's dtype, contiguous.

    The cpu backend has a kernel for bf16 x (AVX512-BF16: the weights are
    widened to bf16 in registers, so the product streams half the bytes of a
    bf16 weight); other dtypes, builds without that ISA and every other backend
    run the reference. The draft's quantized LM head runs it
    (generation/draft_head.py).

    Example:
        >>> x = torch.randn(1, 8, dtype=torch.bfloat16)
        >>> w = torch.randint(-127, 128, (5, 8), dtype=torch.int8); s = torch.rand(5)
        >>> linear_rows_int8(x, w, s).shape
        torch.Size([1, 5])
    """
    check_linear_rows_int8(x, weight, scale)
    with torch.no_grad():
        return _dispatch("linear_rows_int8", x.device)(x, weight, scale)


def _impl_linear_rows_int8(backend: str):
    """linear_rows_int8 of one backend: the cpu kernel, or the reference everywhere else."""
    return _impl("linear_rows_int8", backend)
