"""The backends and the ops each implements: the one place that knows.

Each `Backend` declares where it runs and which ops it implements. An op a
backend does not implement runs the reference (reference.py, the `torch`
backend) on that backend's tensors: `implementation(op, name)` returns it and
`fallbacks(name)` / `table()` say so (`layerskip info` prints the table).
Adding a backend is one entry in `BACKEND_LIST` plus its availability rule.

Availability (`why_unavailable`) depends on the build and the machine only, so
it is computed once, outside any traced code, into a plain dict that a
`torch.compile` trace reads as a constant (`availability()`): resolving a
backend inside a compiled step never calls the extension or importlib.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass

import torch

__all__ = ["OPS", "Backend", "BACKEND_LIST", "BACKENDS", "BY_NAME", "native", "availability", "why_unavailable",
           "implementation", "fallbacks", "table", "device_type"]

# Every op of the package (torch.ops.layerskip.<name>, layerskip_kernels.ops.<name>).
OPS = ("draft_verify_attention", "verify_greedy", "verify_sampling", "linear_rows", "linear_rows_int8")


@dataclass(frozen=True)
class Backend:
    name: str
    runs_on: str  # what `layerskip info` says about where it runs
    ops: tuple[str, ...]  # the ops it implements; the others run the reference
    source: str  # "reference", "native" (torch.ops.layerskip: the dispatcher picks the device) or "triton"
    # Head dims its draft_verify_attention supports (None: any); ops refuses
    # others with a ValueError before the kernel is called.
    head_dims: tuple[int, ...] | None = None


BACKEND_LIST = (
    Backend("torch", "any device (reference.py, the spec)", OPS, "reference"),
    Backend("cpu", "CPU tensors (csrc/cpu, one variant per CPU level)", OPS, "native"),
    # Few-row products on a GPU are ATen's GEMM (cuBLAS): the reference.
    Backend("triton", "CUDA tensors; CPU tensors under TRITON_INTERPRET=1",
            ("draft_verify_attention", "verify_greedy", "verify_sampling"), "triton"),
    # head_dims: csrc/cuda/attention_kernels.cuh's supported_head_dim (a test compares).
    Backend("cuda", "CUDA tensors (csrc/cuda)", ("draft_verify_attention", "verify_greedy", "verify_sampling"),
            "native", head_dims=(16, 32, 64, 96, 128)),
)
BY_NAME = {b.name: b for b in BACKEND_LIST}
BACKENDS = tuple(BY_NAME)  # names, in the order above

_NATIVE_UNSET = object()
_native = _NATIVE_UNSET


def native():
    """The compiled extension `layerskip_kernels._C`, or None when it is not built.

    Importing it registers the cpu/cuda implementations of torch.ops.layerskip.*.
    A failed import degrades to the `torch` backend with a one-line warning.
    """
    global _native
    if _native is _NATIVE_UNSET:
        try:
            from .. import _C

            _native = _C
        except ImportError as e:
            warnings.warn(
                f"layerskip_kernels._C is not available ({e}); using the torch backend. "
                "Build it with `pip install --no-build-isolation .`",
                stacklevel=3,
            )
            _native = None
    return _native


# (backend, device type or None) -> None if it can run, else why not. Filled
# once by availability(); a plain dict, so a trace reads it as a constant.
_AVAILABILITY: dict[tuple[str, str | None], str | None] = {}


def _compute(name: str, device_type: str | None, facts: dict) -> str | None:
    if name == "torch":
        return None
    if name in ("cpu", "cuda") and not facts["native"]:
        return "the compiled extension layerskip_kernels._C is not built"
    if name == "cpu":
        if device_type not in (None, "cpu"):
            return f"it runs on CPU tensors only, got {device_type} tensors"
        return None
    if name == "cuda":
        if not facts["native_cuda"]:
            return "layerskip_kernels._C was built without CUDA kernels (LAYERSKIP_CUDA=0 or no nvcc)"
        if not facts["cuda_device"]:
            return "no CUDA device is available"
        if device_type not in (None, "cuda"):
            return f"it runs on CUDA tensors only, got {device_type} tensors"
        return None
    if not facts["triton"]:
        return "the triton package is not installed (pip install triton)"
    interpret = facts["interpret"]
    if device_type == "cpu" and not interpret:
        return "Triton runs on CPU tensors only under TRITON_INTERPRET=1"
    if device_type == "cuda" and interpret:
        return "TRITON_INTERPRET=1 is set, which runs Triton on CPU tensors only"
    if device_type not in (None, "cpu", "cuda"):
        return f"it runs on CUDA (or interpreted CPU) tensors only, got {device_type} tensors"
    if device_type is None and not (interpret or facts["cuda_device"]):
        return "no CUDA device and TRITON_INTERPRET is not 1"
    return None


def availability() -> dict:
    """{(backend, device type or None): None or the reason it cannot run}, computed once."""
    if not _AVAILABILITY:
        ext = native()
        facts = dict(native=ext is not None, native_cuda=ext is not None and bool(ext.build_info().get("cuda", False)),
                     cuda_device=torch.cuda.is_available(), triton=importlib.util.find_spec("triton") is not None,
                     interpret=os.environ.get("TRITON_INTERPRET") == "1")
        for b in BACKEND_LIST:
            for dev in (None, "cpu", "cuda", "meta"):
                _AVAILABILITY[(b.name, dev)] = _compute(b.name, dev, facts)
    return _AVAILABILITY


def why_unavailable(name: str, device_type: str | None) -> str | None:
    """None when backend `name` can run on tensors of `device_type` (None: on any device here)."""
    if name not in BY_NAME:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    table_ = availability()
    key = (name, device_type)
    if key not in table_:  # another device type (xpu, mps, ...): only the reference runs there
        return None if name == "torch" else f"it does not run on {device_type} tensors"
    return table_[key]


# (op, backend) -> callable; filled on first use of each pair.
_IMPLS: dict[tuple[str, str], object] = {}


def implementation(op: str, name: str):
    """The function that runs `op` on backend `name`: its own, or the reference
    when it does not implement the op (see fallbacks)."""
    fn = _IMPLS.get((op, name))
    if fn is None:
        from .. import reference

        source = BY_NAME[name].source if op in BY_NAME[name].ops else "reference"
        if source == "reference":
            fn = getattr(reference, op)
        elif source == "triton":
            from .. import triton as triton_kernels

            fn = getattr(triton_kernels, op)
        else:
            fn = getattr(torch.ops.layerskip, op)  # cpu / cuda: the dispatcher picks by device
        _IMPLS[(op, name)] = fn
    return fn


def device_type(name: str) -> str:
    """The device type whose tensors backend `name` runs on here: "cpu" when it
    can run on CPU tensors (torch, cpu, triton under the interpreter), else "cuda"."""
    return "cpu" if why_unavailable(name, "cpu") is None else "cuda"


def fallbacks(name: str) -> tuple[str, ...]:
    """The ops backend `name` does not implement (they run the reference)."""
    return tuple(op for op in OPS if op not in BY_NAME[name].ops)


def table() -> str:
    """The op x backend table: "yes" (its own kernel) or "reference" (the explicit fallback)."""
    width = max(len(op) for op in OPS)
    lines = [f"{'op':{width}s}  " + "  ".join(f"{b.name:9s}" for b in BACKEND_LIST)]
    for op in OPS:
        cells = ["yes" if op in b.ops and b.source != "reference" else ("spec" if b.source == "reference" else
                 "reference") for b in BACKEND_LIST]
        lines.append(f"{op:{width}s}  " + "  ".join(f"{c:9s}" for c in cells))
    return "\n".join(lines)
