"""Static KV cache shared by draft and verify, and the exit query cache.

Both are preallocated once per generate() call; the decode loop only writes into
them by position. Rejected draft positions are never copied back: a row's length
is simply not advanced past them, and the next step overwrites them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

__all__ = ["StaticKVCache", "ExitQueryCache", "available_memory", "check_fits"]

# Lengths and positions are int32 in the kernels (cache_seqlens).
MAX_CACHE_LEN = 2**31 - 1


def available_memory(device) -> int:
    """Bytes a new allocation on `device` can take without swapping or OOM.

    CPU: MemAvailable of /proc/meminfo (physical memory where it is missing);
    an over-committed allocation there would not fail but get the process
    killed on first touch. CUDA: free memory plus what torch's caching
    allocator holds unused.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return free + torch.cuda.memory_reserved(idx) - torch.cuda.memory_allocated(idx)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**63 - 1  # unknown: let the allocator decide


def check_fits(nbytes: int, device, what: str) -> None:
    """Raise a ValueError naming `what` when `nbytes` exceed the memory of `device`."""
    free = available_memory(device)
    if nbytes > free:
        raise ValueError(f"{what} needs {nbytes / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB "
                         f"of memory available on {torch.device(device)}")


@dataclass
class StaticKVCache:
    k: torch.Tensor  # [L, B, Hkv, T_max, D]
    v: torch.Tensor  # [L, B, Hkv, T_max, D]
    seqlens: torch.Tensor  # int32 [B], tokens cached per row (same for every layer)

    @staticmethod
    def nbytes(num_layers, batch_size, num_kv_heads, max_len, head_dim, dtype) -> int:
        """Bytes of the K and V buffers together."""
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * math.prod((num_layers, batch_size, num_kv_heads, max_len, head_dim)) * elem

    @classmethod
    def allocate(cls, num_layers, batch_size, num_kv_heads, max_len, head_dim, dtype, device):
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        names = ("num_layers", "batch_size", "num_kv_heads", "max_len", "head_dim")
        for name, n in zip(names, shape):
            if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
                raise ValueError(f"KV cache {name} must be an int >= 1, got {n!r}")
        if max_len > MAX_CACHE_LEN:
            raise ValueError(f"KV cache max_len must be <= {MAX_CACHE_LEN} (int32 positions), got {max_len}")
        check_fits(cls.nbytes(*shape, dtype), device, f"a KV cache of shape 2 x {list(shape)} {dtype}")
        # Zero-filled so that never-written positions hold finite values.
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


@dataclass
class ExitQueryCache:
    """Layer-E input hidden states of the drafted positions: [B, k+1, hidden]."""

    hidden: torch.Tensor

    @classmethod
    def allocate(cls, batch_size, num_speculations, hidden_size, dtype, device):
        return cls(torch.zeros(batch_size, num_speculations + 1, hidden_size, dtype=dtype, device=device))
