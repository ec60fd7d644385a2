"""Build of layerskip_kernels._C.

CPU sources (csrc/ops.cpp, csrc/cpu/*.cpp) are always built; csrc/cuda/*.cu are
added when torch is a CUDA build and nvcc is found. Switches (environment):

  LAYERSKIP_CUDA=auto|0|1   CUDA kernels: auto-detect (default), never, always
  TORCH_CUDA_ARCH_LIST      CUDA archs, default "8.0;9.0"

The CPU kernels are compiled once per CPU level (csrc/cpu/level_*.cpp: baseline,
and on x86-64 avx2, avx512, avx512_bf16, each level's instruction set given to
its own functions only) and chosen at run time, so no -march flag is passed: a
build made on any x86-64 machine runs on any other (LAYERSKIP_CPU_CAPABILITY
forces a lower level at run time).

Install with `pip install --no-build-isolation .`: the extension must be compiled
against the torch that will import it, and an isolated build would download a
different torch into a temporary environment.
"""

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """A CUDA toolkit directory with headers, or None.

    torch derives CUDA_HOME from `which nvcc`; on machines where nvcc is a
    wrapper in /usr/local/bin that gives /usr/local, which has no cuda_runtime.h.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "include", "cuda_runtime.h")) and os.path.isfile(
            os.path.join(c, "bin", "nvcc")
        ):
            return c
    return None


def _ext_modules():
    cuda_home = _find_cuda_home()
    if cuda_home and os.environ.get("LAYERSKIP_CUDA", "auto") != "0":
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension
    except ImportError:  # metadata-only invocations (e.g. sdist) need no torch
        print("layerskip-kernels: torch not importable, building without _C", file=sys.stderr)
        return [], {}
    from torch.utils.cpp_extension import BuildExtension

    mode = os.environ.get("LAYERSKIP_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"LAYERSKIP_CUDA must be auto, 0 or 1, got {mode!r}")
    nvcc = cuda_home is not None and CUDA_HOME == cuda_home
    with_cuda = mode == "1" or (mode == "auto" and torch.version.cuda is not None and nvcc)
    if with_cuda and not (torch.version.cuda and nvcc):
        raise RuntimeError("LAYERSKIP_CUDA=1 needs a CUDA build of torch and nvcc (CUDA_HOME)")

    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/ops.cpp") + rel("csrc/cpu/*.cpp")
    if os.environ.get("LAYERSKIP_CPU_ARCH"):
        raise ValueError("LAYERSKIP_CPU_ARCH is gone: the CPU kernels are built for every CPU level and "
                         "chosen at run time (LAYERSKIP_CPU_CAPABILITY forces a lower level)")
    # -ffp-contract=off: no multiply-add is fused unless the code says so
    # (std::fma, intrinsics), so the levels differ only where their code does.
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-ffp-contract=off", f"-DLAYERSKIP_TORCH_VERSION=\"{torch.__version__}\""]
    include_dirs = [os.path.join(ROOT, "csrc")]
    # torch's CUDA headers include cusparse.h etc., which pip-installed CUDA
    # wheels put under site-packages/nvidia/cu13/include (cu12: per-library dirs).
    nvidia_root = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia")
    for inc in sorted(glob.glob(os.path.join(nvidia_root, "cu1*", "include"))) + sorted(
        glob.glob(os.path.join(nvidia_root, "*", "include"))
    ):
        if inc not in include_dirs:
            include_dirs.append(inc)
    kwargs = dict(
        name="layerskip_kernels._C",
        sources=sources,
        include_dirs=include_dirs,
        extra_link_args=["-fopenmp"],
    )
    if with_cuda:
        archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        defines = [
            "-DLAYERSKIP_WITH_CUDA",
            f"-DLAYERSKIP_CUDA_VERSION=\"{torch.version.cuda}\"",
            f"-DLAYERSKIP_CUDA_ARCHS=\"{archs}\"",
        ]
        kwargs["sources"] = sources + rel("csrc/cuda/*.cu")
        kwargs["extra_compile_args"] = {
            "cxx": cxx + defines,
            "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"] + defines,
        }
        ext = CUDAExtension(**kwargs)
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx}
        ext = CppExtension(**kwargs)
    print(f"layerskip-kernels: building _C with CUDA={'yes' if with_cuda else 'no'}", file=sys.stderr)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _ext_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
