"""Helpers shared by the Triton launchers (host side only: no kernels here).

Launchers reach these through the module (`_utils.interpreting(...)`), never by
name import, so that bench/gpu_compile.py can stand in a GPU target on a
machine without one.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch


def interpreting(device: torch.device) -> bool:
    """True when kernels run on CPU tensors under TRITON_INTERPRET=1."""
    return device.type == "cpu" or os.environ.get("TRITON_INTERPRET") == "1"


def next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.lru_cache(maxsize=None)
def _capability(device_index: int) -> int:
    major, minor = torch.cuda.get_device_capability(device_index)
    return 10 * major + minor


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 under the interpreter)."""
    if device.type != "cuda":
        return 1
    return _num_sms(_index(device))


def gpu_arch(device: torch.device) -> int:
    """Compute capability as 10 * major + minor (80, 90, ...); 0 off CUDA."""
    if device.type != "cuda":
        return 0
    return _capability(_index(device))


def device_guard(device: torch.device):
    """Make `device` current for a launch: Triton launches on the current CUDA
    device and stream, not on the device of the tensors it is given."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(device)
