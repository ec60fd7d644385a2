import os

import pytest
import torch

# Triton kernels run on CPU tensors under the interpreter; it must be set before
# triton is imported. On a machine with a GPU the real compiler is used.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import layerskip_kernels as lk  # noqa: E402


def _interpreter_rounds_bf16_to_nearest():
    """The Triton interpreter (3.x) casts fp32 -> bf16 by truncating the
    mantissa; GPUs round to nearest even. Truncation doubles the RMS error of
    every bf16 store and would hide (or fake) precision bugs in the parity
    tests, so the interpreter is made to round as the hardware does."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    builder = interpreter.InterpreterBuilder
    truncating = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            rounded = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16)
            return interpreter.TensorHandle(rounded.view(torch.int16).numpy().view(np.uint16), tl.bfloat16)
        return truncating(self, src, dst_type)

    builder.cast_impl = cast_impl


_interpreter_rounds_bf16_to_nearest()

# Every backend with kernels of its own (the registry's, less the reference).
KERNEL_BACKENDS = tuple(name for name in lk.backends.BACKENDS if name != "torch")


def backend_device(name: str) -> str:
    return lk.backends.device_type(name)


def backend_params():
    """pytest params over the compiled/Triton backends; unavailable ones are
    marked skip with the reason (reported as skipped, never as passed)."""
    avail = lk.available_backends()
    return [
        pytest.param(name, marks=pytest.mark.skipif(avail[name] is not None, reason=f"{name}: {avail[name]}"))
        for name in KERNEL_BACKENDS
    ]


@pytest.fixture(autouse=True)
def _reset_backend():
    yield
    lk.set_backend(None)


# --------------------------------------------------------------------------- skip report
# CI (.ci/run) sets LAYERSKIP_SKIP_REPORT to a file and fails on any skip whose
# reason is not an absent CUDA device: a missing optional dependency (triton,
# scipy, transformers) must not turn its tests into silent skips.


def _record_skip(report):
    path = os.environ.get("LAYERSKIP_SKIP_REPORT")
    if not (path and report.skipped) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    with open(path, "a") as f:
        f.write(f"{report.nodeid}\t{reason}\n")


def pytest_runtest_logreport(report):
    _record_skip(report)


def pytest_collectreport(report):
    _record_skip(report)
