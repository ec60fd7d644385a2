import contextlib
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

# --------------------------------------------------------------------------- CPU levels
# The cpu kernels exist once per CPU level (baseline, avx2, avx512,
# avx512_bf16); a test of them runs once per level, switched in process with
# _C.set_cpu_level. Levels this CPU (or build) lacks are reported as skipped
# with "CPU lacks <level>" (CI allows only that skip and "no CUDA device").
CPU_LEVELS = ("baseline", "avx2", "avx512", "avx512_bf16")


def _supported_cpu_levels():
    """The levels this CPU runs; with LAYERSKIP_CPU_CAPABILITY set, those up to
    that one (the run then stands for a CPU that has no more)."""
    native = lk.backends.native()
    levels = list(native.supported_cpu_levels()) if native is not None else []
    forced = os.environ.get("LAYERSKIP_CPU_CAPABILITY")
    if forced in levels:
        levels = levels[: levels.index(forced) + 1]
    return levels


class CpuAt(str):
    """The backend name "cpu" (equal to it as a string) that also names the CPU
    level its kernels run at: a `backend` parameter with this value runs the
    test with that level switched on (fixture _cpu_level_of_params)."""

    def __new__(cls, level):
        obj = super().__new__(cls, "cpu")
        obj.level = level
        return obj


def cpu_level_params(value=lambda level: level, prefix=""):
    """One pytest param per CPU level; levels this CPU lacks are skipped with the reason."""
    supported = _supported_cpu_levels()
    params = []
    for level in CPU_LEVELS:
        forced = os.environ.get("LAYERSKIP_CPU_CAPABILITY")
        why = f"CPU lacks {level}" + (f" (LAYERSKIP_CPU_CAPABILITY={forced})" if forced else "")
        skip = pytest.mark.skipif(level not in supported, reason=why)
        params.append(pytest.param(value(level), id=f"{prefix}{level}", marks=skip))
    return params


@contextlib.contextmanager
def running_cpu_level(level):
    native = lk.backends.native()
    previous = native.cpu_level()
    native.set_cpu_level(level)
    try:
        yield level
    finally:
        native.set_cpu_level(previous)


@pytest.fixture(params=cpu_level_params())
def cpu_level(request):
    """Runs the test with the cpu kernels of each CPU level in turn."""
    if lk.backends.native() is None:
        pytest.skip("layerskip_kernels._C is not built")
    with running_cpu_level(request.param) as level:
        yield level


@pytest.fixture(autouse=True)
def _cpu_level_of_params(request):
    callspec = getattr(request.node, "callspec", None)
    level = None
    for value in (callspec.params.values() if callspec is not None else ()):
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, CpuAt):
                level = v.level
    if level is None:
        yield
        return
    with running_cpu_level(level):
        yield


def backend_device(name: str) -> str:
    return lk.backends.device_type(name)


def backend_params():
    """pytest params over the compiled/Triton backends; unavailable ones are
    marked skip with the reason (reported as skipped, never as passed). The
    cpu backend comes once per CPU level (CpuAt values, ids cpu-<level>)."""
    avail = lk.available_backends()
    params = []
    for name in KERNEL_BACKENDS:
        if name == "cpu" and avail[name] is None:  # the cpu kernels once per CPU level
            params += cpu_level_params(CpuAt, prefix="cpu-")
        else:
            params.append(pytest.param(name, marks=pytest.mark.skipif(avail[name] is not None,
                                                                      reason=f"{name}: {avail[name]}")))
    return params


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
