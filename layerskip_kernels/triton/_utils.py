"""Helpers shared by the Triton launchers (host side only: no kernels here)."""

from __future__ import annotations

import functools
import os

import torch


def interpreting(device: torch.device) -> bool:
    """True when kernels run on CPU tensors under TRITON_INTERPRET=1."""
    return device.type == "cpu" or os.environ.get("TRITON_INTERPRET") == "1"


def next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


@functools.lru_cache(maxsize=None)
def num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 under the interpreter)."""
    if device.type != "cuda":
        return 1
    return num_sms(device.index if device.index is not None else torch.cuda.current_device())
