import os

import pytest
import torch

# Triton kernels run on CPU tensors under the interpreter; it must be set before
# triton is imported. On a machine with a GPU the real compiler is used.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import layerskip_kernels as lk  # noqa: E402

KERNEL_BACKENDS = ("cpu", "triton", "cuda")


def backend_device(name: str) -> str:
    if name == "cuda":
        return "cuda"
    if name == "triton":
        return "cuda" if os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
    return "cpu"


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
