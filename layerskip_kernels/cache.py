"""Static KV cache shared by draft and verify, and the exit query cache.

Both are preallocated once per generate() call; the decode loop only writes into
them by position. Rejected draft positions are never copied back: a row's length
is simply not advanced past them, and the next step overwrites them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["StaticKVCache", "ExitQueryCache"]


@dataclass
class StaticKVCache:
    k: torch.Tensor  # [L, B, Hkv, T_max, D]
    v: torch.Tensor  # [L, B, Hkv, T_max, D]
    seqlens: torch.Tensor  # int32 [B], tokens cached per row (same for every layer)

    @classmethod
    def allocate(cls, num_layers, batch_size, num_kv_heads, max_len, head_dim, dtype, device):
        # Zero-filled so that never-written positions hold finite values.
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        return cls(
            k=torch.zeros(shape, dtype=dtype, device=device),
            v=torch.zeros(shape, dtype=dtype, device=device),
            seqlens=torch.zeros(batch_size, dtype=torch.int32, device=device),
        )

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int):
        cfg = model.config
        p = model.lm_head.weight
        return cls.allocate(cfg.num_hidden_layers, batch_size, cfg.num_key_value_heads, max_len,
                            cfg.head_dim, p.dtype, p.device)

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def layer(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The [B, Hkv, T_max, D] views of layer `idx` (contiguous, no copy)."""
        return self.k[idx], self.v[idx]

    def keep_rows(self, rows: torch.Tensor) -> "StaticKVCache":
        """A cache holding only `rows` (int64 [B']), e.g. to drop finished sequences."""
        return StaticKVCache(self.k[:, rows], self.v[:, rows], self.seqlens[rows])


@dataclass
class ExitQueryCache:
    """Layer-E input hidden states of the drafted positions: [B, k+1, hidden]."""

    hidden: torch.Tensor

    @classmethod
    def allocate(cls, batch_size, num_speculations, hidden_size, dtype, device):
        return cls(torch.zeros(batch_size, num_speculations + 1, hidden_size, dtype=dtype, device=device))
