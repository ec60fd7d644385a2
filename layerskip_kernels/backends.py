"""Backend registry: which implementation of the ops runs.

  torch   pure PyTorch (reference.py), any device
  cpu     compiled C++ kernels (csrc/cpu) on CPU tensors
  triton  Triton kernels on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1
  cuda    compiled CUDA kernels (csrc/cuda) on CUDA tensors

Selection, strongest first: `use_backend(name)` / `set_backend(name)`, then the
LAYERSKIP_BACKEND environment variable, then the best available backend for the
tensor's device (cuda > triton on GPU; cpu on CPU; torch when nothing compiled
is there). A backend that was asked for explicitly and cannot run raises
`BackendUnavailableError` saying what is missing; it never falls back silently.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings

import torch

BACKENDS = ("torch", "cpu", "triton", "cuda")

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "get_backend",
    "native",
    "resolve",
    "set_backend",
    "use_backend",
]


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here."""


_selected: str | None = None


_NATIVE_UNSET = object()
_native = _NATIVE_UNSET


def native():
    """The compiled extension `layerskip_kernels._C`, or None when it is not built.

    Importing it registers the cpu/cuda implementations of torch.ops.layerskip.*.
    A failed import degrades to the `torch` backend with a one-line warning.
    """
    # A plain global rather than functools.lru_cache: torch.compile traces
    # through this function while resolving the backend of an op.
    global _native
    if _native is _NATIVE_UNSET:
        try:
            from . import _C

            _native = _C
        except ImportError as e:
            warnings.warn(
                f"layerskip_kernels._C is not available ({e}); using the torch backend. "
                "Build it with `pip install --no-build-isolation .`",
                stacklevel=3,
            )
            _native = None
    return _native


def _triton_missing() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed (pip install triton)"
    return None


def _why_unavailable(name: str, device_type: str | None) -> str | None:
    """None when `name` can run on tensors of `device_type` (None: on any device here)."""
    if name == "torch":
        return None
    if name == "cpu":
        if native() is None:
            return "the compiled extension layerskip_kernels._C is not built"
        if device_type not in (None, "cpu"):
            return f"it runs on CPU tensors only, got {device_type} tensors"
        return None
    if name == "cuda":
        if native() is None:
            return "the compiled extension layerskip_kernels._C is not built"
        if not native().build_info().get("cuda", False):
            return "layerskip_kernels._C was built without CUDA kernels (LAYERSKIP_CUDA=0 or no nvcc)"
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        if device_type not in (None, "cuda"):
            return f"it runs on CUDA tensors only, got {device_type} tensors"
        return None
    if name == "triton":
        missing = _triton_missing()
        if missing:
            return missing
        interpret = os.environ.get("TRITON_INTERPRET") == "1"
        if device_type == "cpu" and not interpret:
            return "Triton runs on CPU tensors only under TRITON_INTERPRET=1"
        if device_type == "cuda" and interpret:
            return "TRITON_INTERPRET=1 is set, which runs Triton on CPU tensors only"
        if device_type is None and not (interpret or torch.cuda.is_available()):
            return "no CUDA device and TRITON_INTERPRET is not 1"
        return None
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")


def available_backends() -> dict[str, str | None]:
    """Every backend mapped to None if it can run here, else the reason it cannot."""
    return {name: _why_unavailable(name, None) for name in BACKENDS}


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: str | None) -> None:
    """Select a backend for all ops (None: automatic). Raises if it cannot run here."""
    global _selected
    if name is not None:
        reason = _why_unavailable(_check_name(name), None)
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
        reason = _why_unavailable(name, device.type)
        if reason:
            raise BackendUnavailableError(f"backend {name!r} cannot run here: {reason}")
        return name
    order = ("cuda", "triton") if device.type == "cuda" else ("cpu",)
    for candidate in order:
        if _why_unavailable(candidate, device.type) is None:
            return candidate
    return "torch"
