"""Backend selection: which implementation of the ops runs.

  torch   pure PyTorch (reference.py), any device
  cpu     compiled C++ kernels (csrc/cpu) on CPU tensors
  triton  Triton kernels on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1
  cuda    compiled CUDA kernels (csrc/cuda) on CUDA tensors

Which backend implements which op is declared in `registry` (an op a backend
lacks runs the reference: `registry.table()`, printed by `layerskip info`).

Selection, strongest first: `use_backend(name)` / `set_backend(name)`, then the
LAYERSKIP_BACKEND environment variable, then the best available backend for the
tensor's device (cuda > triton on GPU; cpu on CPU; torch when nothing compiled
is there). A backend that was asked for explicitly and cannot run raises
`BackendUnavailableError` saying what is missing; it never falls back silently.
`resolve` reads only Python values computed once (registry.availability), so
torch.compile traces it as a constant on every device type.
"""

from __future__ import annotations

import contextlib
import os

import torch

from .registry import (BACKENDS, OPS, availability, device_type, fallbacks, implementation, native, table,
                       why_unavailable)

__all__ = [
    "BACKENDS",
    "OPS",
    "BackendUnavailableError",
    "available_backends",
    "device_type",
    "fallbacks",
    "get_backend",
    "implementation",
    "native",
    "resolve",
    "set_backend",
    "table",
    "use_backend",
]


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here."""


_selected: str | None = None

# The best backend for a device type when none is selected, strongest first.
_PREFERRED = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}


def available_backends() -> dict[str, str | None]:
    """Every backend mapped to None if it can run here, else the reason it cannot."""
    return {name: why_unavailable(name, None) for name in BACKENDS}


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: str | None) -> None:
    """Select a backend for all ops (None: automatic). Raises if it cannot run here."""
    global _selected
    if name is not None:
        reason = why_unavailable(_check_name(name), None)
        if reason:
            raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")
    _selected = name


@contextlib.contextmanager
def use_backend(name: str | None):
    """Context manager form of set_backend; restores the previous selection."""
    global _selected
    previous = _selected
    set_backend(name)
    try:
        yield
    finally:
        _selected = previous


def get_backend() -> str | None:
    """The explicitly selected backend (set_backend, else LAYERSKIP_BACKEND), or None."""
    if _selected is not None:
        return _selected
    env = os.environ.get("LAYERSKIP_BACKEND")
    if env:
        try:
            return _check_name(env)
        except ValueError:
            raise ValueError(f"LAYERSKIP_BACKEND must be one of {BACKENDS}, got {env!r}") from None
    return None


def resolve(device: torch.device) -> str:
    """The backend that runs an op on tensors of `device`."""
    name = get_backend()
    if name is not None:
        reason = why_unavailable(name, device.type)
        if reason:
            raise BackendUnavailableError(f"backend {name!r} cannot run here: {reason}")
        return name
    for candidate in _PREFERRED.get(device.type, ()):
        if why_unavailable(candidate, device.type) is None:
            return candidate
    return "torch"
