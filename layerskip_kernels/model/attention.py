"""The attention of a decode step: which entry point runs it.

`ops.draft_verify_attention` checks its arguments in Python (shapes, dtypes,
devices, and that the caches overlap neither each other nor any input) before
it picks a backend. On a CPU those checks cost about twice the kernel on the
default model (~35 us against ~17 us per call, one thread, timed side by side
on a busy machine), once per layer of every draft step, verify pass and
autoregressive step (skipping them made the default model decode 13-23%
faster end to end on a quiet one: README, "Session 14"). The
raw op `torch.ops.layerskip.draft_verify_attention` makes the same checks in
C++ (csrc/checks.h, the same rules and the cache_seqlens bounds: no host sync
on a CPU), so the decode path calls it directly where the cpu backend would
run the op anyway, as `decode_linear` does for the products: CPU tensors, the
extension built, no other backend selected, no gradient needed. Everything
else goes through `ops.draft_verify_attention`.
"""

from __future__ import annotations

import torch

from .. import ops
from .linear import cpu_kernel_runs

__all__ = ["decode_attention"]


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor,
                     v_new: torch.Tensor, seqlens: torch.Tensor, cos: torch.Tensor | None,
                     sin: torch.Tensor | None) -> torch.Tensor:
    """ops.draft_verify_attention (same arguments, same result) by the cheapest entry point (module docstring)."""
    if q.device.type == "cpu" and cpu_kernel_runs(q, k_cache):
        return torch.ops.layerskip.draft_verify_attention(q, k_cache, v_cache, k_new, v_new, seqlens, cos, sin, None)
    return ops.draft_verify_attention(q, k_cache, v_cache, k_new, v_new, seqlens, cos, sin)
