"""The GPU session in one call: build, smoke, end to end, kernels, parity tests.

    python bench/gpu_suite.py --out $OUT            # on a bare GPU machine (8 minutes)
    python bench/gpu_suite.py --out DIR --dry-run   # CPU: every step's Python, no device (CI)

A GPU is lent to this project rarely, for minutes, and only files under $OUT
come back (at most 8). So everything happens in one command, in this order,
each step in its own process under its own timeout (a crash or a hang loses
that step only), each writing its results into --out as soon as they exist:

 1. build    `pip install --no-build-isolation --no-deps -e .` with
             TORCH_CUDA_ARCH_LIST set to this GPU's arch (9.0 on an H100),
             MAX_JOBS = cores, LAYERSKIP_CUDA=1 (a CUDA build or an error);
             the machine's own torch, nothing downloaded
 2. smoke    import, build info, one call of every op on every backend against
             the reference, a short generation per backend (smoke.csv)
 3. e2e      tokens/s, eager and compiled (CUDA graphs), autoregressive and
             self-speculative, the Llama-3.2-1B-shaped random bf16 model (late
             layers damped, bench_llama1b) and the embedded one, batch 1 and 8,
             tokens compared with eager autoregressive decoding (e2e.csv)
 4. attention  the triton and cuda kernels against SDPA (enable_gqa, cache
             write by index_copy_) and flex_attention, timed inside CUDA
             graphs, B = 16 at 8K context first (attention.csv)
 5. tests    the GPU parity tests, `pytest -n 8` (pytest-xdist: a crashing
             test kills its worker, not the run) (tests.log, tests.xml)
 6. acceptance  bench_acceptance.py --quick on the GPU backends (acceptance.csv)

Files in --out (8): suite.log (everything, the build included),
summary.json (rewritten after every step: GPU, versions, each step's exit
status, seconds and timeout), smoke.csv, e2e.csv, attention.csv, tests.log,
tests.xml, acceptance.csv. Steps share one deadline (--budget seconds from the
start); a step gets its own cap, less whatever the later steps need at least.

--dry-run runs on the CPU: the build command is printed, not run; the Python
steps run with tiny shapes on CPU tensors (bench/gpu_steps.py); the tests are
collected (with -n, so pytest-xdist must be installed) but not run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The parity tests that run kernels on the GPU (conftest leaves TRITON_INTERPRET
# unset there, so triton and cuda cases run compiled against reference.py).
GPU_TESTS = ["tests/test_attention_ops.py", "tests/test_acceptance_ops.py", "tests/test_model_backends.py",
             "tests/test_triton_paths.py"]
# (name, cap seconds, least seconds it needs when it runs): the deadline is shared.
STEPS = [("build", 210, 60), ("smoke", 45, 15), ("e2e", 150, 40), ("attention", 75, 30), ("tests", 150, 60),
         ("acceptance", 45, 15)]


class Suite:
    def __init__(self, out: str, dry: bool, budget: float):
        self.out, self.dry = out, dry
        self.t0 = time.time()
        self.deadline = self.t0 + budget
        os.makedirs(out, exist_ok=True)
        self.log = open(os.path.join(out, "suite.log"), "a", buffering=1)
        self.summary = dict(started=time.strftime("%Y-%m-%d %H:%M:%S"), dry_run=dry, budget_s=budget,
                            host=platform.node(), python=sys.version.split()[0], steps={})
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if not dry:
            self.env.pop("TRITON_INTERPRET", None)  # compiled Triton on the GPU, never the interpreter
        else:
            self.env["TRITON_INTERPRET"] = "1"

    def say(self, msg: str) -> None:
        print(msg, flush=True)
        self.log.write(msg + "\n")

    def write_summary(self) -> None:
        self.summary["elapsed_s"] = round(time.time() - self.t0, 1)
        path = os.path.join(self.out, "summary.json")
        with open(path + ".tmp", "w") as f:
            json.dump(self.summary, f, indent=1, default=str)
        os.replace(path + ".tmp", path)

    def timeout(self, name: str) -> float:
        """This step's timeout: its cap, within the deadline less what the later steps need."""
        names = [s[0] for s in STEPS]
        cap = dict((s[0], s[1]) for s in STEPS)[name]
        later = sum(s[2] for s in STEPS[names.index(name) + 1:])
        return max(0.0, min(cap, self.deadline - time.time() - later))

    def run(self, name: str, cmd: list[str], capture: str | None = None, env: dict | None = None) -> int:
        """Run cmd under this step's timeout; its output goes to suite.log (and to
        `capture` in --out when given). Returns the exit status (124: timed out)."""
        limit = self.timeout(name)
        info = self.summary["steps"].setdefault(name, {})
        info.update(cmd=" ".join(cmd), timeout_s=round(limit, 1))
        if limit < 5:
            self.say(f"== {name}: skipped, {limit:.0f} s left before the deadline")
            info.update(status="skipped (deadline)", rc=None)
            self.write_summary()
            return 124
        self.say(f"\n== {name} (timeout {limit:.0f} s): {' '.join(cmd)}")
        t0 = time.time()
        sink = open(os.path.join(self.out, capture), "w", buffering=1) if capture else None
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env or self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)

        def pump():
            for line in proc.stdout:
                self.log.write(line)
                print(line, end="", flush=True)
                if sink:
                    sink.write(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step's own process group (start_new_session)
            proc.wait()
            rc = 124
        reader.join(timeout=10)
        if sink:
            sink.close()
        dt = time.time() - t0
        status = "ok" if rc == 0 else ("timed out" if rc == 124 else f"exit {rc}")
        if rc < 0:
            status = f"killed by signal {-rc}"
        info.update(status=status, rc=rc, seconds=round(dt, 1))
        self.say(f"== {name}: {status} after {dt:.0f} s")
        self.write_summary()
        return rc


def device_facts() -> dict:
    """GPU, versions and the arch to build for (torch only: the package may not be built yet)."""
    import torch

    facts = dict(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                 cores=os.cpu_count())
    try:
        import triton

        facts["triton"] = triton.__version__
    except ImportError:
        facts["triton"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(gpu=p.name, sms=p.multi_processor_count, memory_gb=round(p.total_memory / 1e9, 1),
                     arch=f"{p.major}.{p.minor}")
    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True) if _which("nvcc") else None
    facts["nvcc"] = nvcc.stdout.strip().splitlines()[-1] if nvcc and nvcc.returncode == 0 else None
    return facts


def _which(name: str) -> bool:
    from shutil import which

    return which(name) is not None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="results directory ($OUT on the device machine)")
    ap.add_argument("--dry-run", action="store_true", help="CPU: every step's Python without a device (CI)")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for the whole suite (default 450)")
    ap.add_argument("--skip-build", action="store_true", help="the package is already built for this GPU")
    args = ap.parse_args(argv)
    suite = Suite(args.out, args.dry_run, args.budget)
    facts = device_facts()
    suite.summary["machine"] = facts
    suite.say(f"gpu_suite: {json.dumps(facts)}")
    if not args.dry_run and not facts["cuda_available"]:
        suite.say("gpu_suite: no CUDA device is available (use --dry-run on a CPU)")
        suite.summary["error"] = "no CUDA device"
        suite.write_summary()
        return 2
    py = sys.executable

    # 1. build
    build_env = dict(suite.env, TORCH_CUDA_ARCH_LIST=facts.get("arch") or "9.0", MAX_JOBS=str(os.cpu_count() or 8),
                     LAYERSKIP_CUDA="1")
    build = [py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-e", "."]
    if args.skip_build:
        suite.summary["steps"]["build"] = dict(status="skipped (--skip-build)")
    elif args.dry_run:
        suite.say(f"== build (dry run, not run): TORCH_CUDA_ARCH_LIST={build_env['TORCH_CUDA_ARCH_LIST']} "
                  f"MAX_JOBS={build_env['MAX_JOBS']} {' '.join(build)}")
        suite.summary["steps"]["build"] = dict(status="dry run", cmd=" ".join(build))
    else:
        suite.run("build", build, env=build_env)
    check = [py, "-c", "import json, layerskip_kernels as lk; n = lk.backends.native(); "
                       "print('build_info', json.dumps(n.build_info() if n else None)); "
                       "print('backends', lk.available_backends())"]
    p = subprocess.run(check, cwd=ROOT, env=suite.env, capture_output=True, text=True)
    suite.say((p.stdout + p.stderr).strip())
    suite.summary["build_info"] = p.stdout.strip()

    # 2-4. the Python steps
    dry = ["--dry-run"] if args.dry_run else []
    for name in ("smoke", "e2e", "attention"):
        suite.run(name, [py, os.path.join(HERE, "gpu_steps.py"), name, "--out", args.out, *dry])

    # 5. the parity tests, crash-isolated
    if importlib.util.find_spec("xdist") is None:
        suite.say("== tests: pytest-xdist is not installed (pip install -e '.[test]'); running without -n")
        suite.summary["steps"]["tests"] = dict(note="pytest-xdist missing: one process")
        parallel = []
    else:
        parallel = ["-n", "8"] if not args.dry_run else ["-n", "2"]
    pytest = [py, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *parallel, *GPU_TESTS]
    if args.dry_run:
        pytest.append("--collect-only")
    else:
        pytest += ["--junitxml", os.path.join(args.out, "tests.xml")]
        if importlib.util.find_spec("pytest_timeout") is not None:
            pytest += ["--timeout", "120"]  # a hung test fails alone
    suite.run("tests", pytest, capture="tests.log")

    # 6. acceptance kernels
    acc = [py, os.path.join(HERE, "bench_acceptance.py"), "--quick", "--out", os.path.join(args.out, "acceptance")]
    acc += ["--device", "cpu", "--reps", "3", "--no-plot", "--tiny"] if args.dry_run else ["--device", "cuda", "--no-plot"]
    suite.run("acceptance", acc)

    steps = suite.summary["steps"]
    bad = {k: v.get("status") for k, v in steps.items() if v.get("status") not in ("ok", "dry run",
                                                                                  "skipped (--skip-build)")}
    suite.summary["result"] = "ok" if not bad else f"failed: {bad}"
    suite.write_summary()
    suite.say(f"\ngpu_suite: {suite.summary['result']} in {time.time() - suite.t0:.0f} s; files in {args.out}: "
              + ", ".join(sorted(os.listdir(args.out))))
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
