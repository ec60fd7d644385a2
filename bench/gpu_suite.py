"""The GPU session in one command: parity tests and kernel benchmarks on a real GPU.

    python bench/gpu_suite.py                 # full kernel grids
    python bench/gpu_suite.py --quick         # subsets (a few minutes)
    python bench/gpu_suite.py --out DIR       # where logs and CSV/PNG go

Needs a CUDA device and the package built for it (`pip install
--no-build-isolation -e .` with a CUDA torch and nvcc). Runs, each in its own
process so that one failure does not hide the rest:

1. the kernel parity tests (`tests/test_attention_ops.py`,
   `tests/test_acceptance_ops.py`, `tests/test_model_backends.py`): on a GPU
   machine conftest does not set TRITON_INTERPRET, so the `triton` and `cuda`
   cases run compiled on the GPU against `reference.py`;
2. `bench_attention.py` and `bench_acceptance.py` restricted to the CUDA
   backends (`torch`, `triton`, `cuda` on CUDA tensors), timed with CUDA graphs
   where the implementation can be captured (see `common._time_cuda`).

Every file it writes carries the GPU's name (`attention_<gpu>.csv`, ...), and
the CSV rows carry the GPU, torch and triton versions.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
KERNEL_TESTS = ["tests/test_attention_ops.py", "tests/test_acceptance_ops.py", "tests/test_model_backends.py"]


def gpu_tag() -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3': a file-name-safe GPU name."""
    name = torch.cuda.get_device_name().lower().replace("nvidia", "")
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def step(title: str, cmd: list[str], log_path: str, env: dict[str, str]) -> int:
    print(f"\n== {title}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            print(line, end="", flush=True)
        rc = proc.wait()
    print(f"== {title}: exit {rc} after {time.time() - t0:.0f} s (log: {log_path})", flush=True)
    return rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="benchmark subsets")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "gpu"), help="output directory")
    ap.add_argument("--skip-tests", action="store_true", help="benchmarks only")
    ap.add_argument("--skip-bench", action="store_true", help="tests only")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_suite: no CUDA device is available; this suite needs a GPU", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    tag = gpu_tag()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)  # compiled Triton on the GPU, never the interpreter
    print(f"GPU: {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).multi_processor_count} SMs), "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    status = {}
    if not args.skip_tests:
        status["tests"] = step("kernel parity tests on the GPU",
                               [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", *KERNEL_TESTS],
                               os.path.join(args.out, f"tests_{tag}.log"), env)
    if not args.skip_bench:
        quick = ["--quick"] if args.quick else []
        for name in ("attention", "acceptance"):
            status[name] = step(f"bench_{name} on the GPU",
                                [sys.executable, os.path.join(HERE, f"bench_{name}.py"), "--device", "cuda",
                                 "--out", os.path.join(args.out, f"{name}_{tag}"), *quick],
                                os.path.join(args.out, f"bench_{name}_{tag}.log"), env)
    print("\nsummary:", ", ".join(f"{k} exit {v}" for k, v in status.items()))
    return 0 if all(v == 0 for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
