"""Compile evidence for the GPU kernels on a machine without a GPU.

Triton: every kernel is compiled for sm_80 and sm_90 through the real
launchers (so the tile choices are the ones a GPU would get), with a stand-in
active driver whose target is GPUTarget("cuda", arch, 32) and launches turned
into `warmup=True` compiles. `ptxas -v` (Triton's own, from
triton/backends/nvidia/bin) then reports registers and spills of each PTX.

CUDA: the objects of the CMake target `layerskip_cuda_check` (csrc/cuda, built
for sm_80 and sm_90) are read with `cuobjdump --dump-resource-usage` and
`cuobjdump -sass`.

Writes bench/results/gpu_compile.csv, one row per (kernel, arch, shape): compile
evidence only, nothing in it ran on a GPU (no timings). Exits non-zero when a
16-bit attention kernel of either backend (Triton: `_draft_verify_attention_kernel`;
CUDA: `attention_mma_kernel` / `attention_split_kernel` instantiated for
c10::Half or c10::BFloat16) has no tensor-core instruction (Triton PTX: mma /
wgmma; CUDA SASS: HMMA / HGMMA) or spills (Triton: ptxas spill bytes; CUDA: any
local memory or stack frame, where spills would go); other spills are listed
as warnings. ptxas results are cached by the hash of the PTX, Triton's
compiles by Triton's own cache.

    python -m bench.gpu_compile [--cuda-build DIR | --skip-cuda] [--out CSV]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHS = (80, 90)
ATTN_D = (64, 128)
ATTN_S = (1, 5, 9, 16)
# Llama-3 style GQA (Hq=32, Hkv=8), a 2048-token cache: verify/draft shapes.
ATTN_HQ, ATTN_HKV, ATTN_T = 32, 8, 2048
ACCEPT_SHAPES = ((1, 4, 128256), (8, 4, 32000))  # (B, k, V)
FIELDS = [
    "kernel", "arch", "dtype", "D", "S", "B", "V", "variant", "num_warps", "num_stages",
    "registers", "spill_store_bytes", "spill_load_bytes", "stack_bytes", "shared_bytes",
    "tensor_cores", "source",
]


# --------------------------------------------------------------------------- Triton


def _ptxas_path() -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not path.exists():
        raise SystemExit(f"gpu_compile: ptxas not found at {path} (it ships with triton's nvidia backend)")
    return str(path)


class _Cache:
    """ptxas -v results keyed by the hash of the PTX (JSON file)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def get(self, key):
        return self.data.get(key)

    def put(self, key, value):
        self.data[key] = value

    def save(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, sort_keys=True))


def ptxas_usage(ptx: str, ptxas: str, cache: _Cache) -> dict:
    """Registers, spills, stack of the single entry of `ptx` (ptxas -v)."""
    key = hashlib.sha256(ptx.encode()).hexdigest()
    hit = cache.get(key)
    if hit is not None:
        return hit
    target = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1).rstrip(",")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run(
            [ptxas, "-v", f"--gpu-name={target}", "-O3", str(src), "-o", str(Path(tmp) / "k.cubin")],
            capture_output=True, text=True,
        )
    if proc.returncode:
        raise RuntimeError(f"ptxas failed on a {target} kernel:\n{proc.stderr}")
    log = proc.stderr + proc.stdout
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    result = {
        "registers": int(regs.group(1)) if regs else 0,
        "stack_bytes": int(spill.group(1)) if spill else 0,
        "spill_store_bytes": int(spill.group(2)) if spill else 0,
        "spill_load_bytes": int(spill.group(3)) if spill else 0,
    }
    cache.put(key, result)
    return result


def _tensor_core_ops(ptx: str) -> str:
    ops = []
    if "wgmma.mma_async" in ptx:
        ops.append("wgmma")
    if re.search(r"\bmma\.sync", ptx):
        ops.append("mma")
    return "+".join(ops) or "none"


@contextlib.contextmanager
def fake_gpu(arch: int, sms: int = 132):
    """Triton compiles for `arch` on a machine without a GPU; launches compile only.

    Yields the list that collects (kernel name, compiled kernel, launch options)
    of every launch inside the block.
    """
    from unittest import mock

    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase
    from triton.runtime.driver import driver
    from triton.runtime.jit import KernelInterface

    from layerskip_kernels.triton import _utils

    class CompileOnlyDriver(DriverBase):
        @classmethod
        def is_active(cls):
            return False  # never picked by Triton's own driver discovery

        def map_python_to_cpp_type(self, ty):
            from triton.backends.nvidia.driver import ty_to_cpp

            return ty_to_cpp(ty)

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        # One "device" per arch: JITFunction caches its binder (and target) per device.
        def get_current_device(self):
            return arch

        def get_current_stream(self, device=None):
            return 0

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_benchmarker(self):
            raise RuntimeError("compile-only driver: nothing can run")

    launches = []

    def compile_only(self, grid):
        def launch(*args, **kwargs):
            kernel = self.run(*args, grid=grid, warmup=True, **kwargs)
            launches.append((self.fn.__name__, kernel, kwargs))
            return kernel

        return launch

    # No real driver may exist here: put back whatever was there (None
    # included) instead of reset_active(), which would go looking for one.
    previous = driver._active
    driver.set_active(CompileOnlyDriver())
    try:
        with (
            mock.patch.object(KernelInterface, "__getitem__", compile_only),
            mock.patch.object(_utils, "interpreting", lambda device: False),
            mock.patch.object(_utils, "gpu_arch", lambda device: arch),
            mock.patch.object(_utils, "sm_count", lambda device: sms),
        ):
            yield launches
    finally:
        driver._active = previous


def _attention_cases():
    import torch

    from layerskip_kernels.model.config import LlamaConfig
    from layerskip_kernels.model.llama import rope_tables

    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for D in ATTN_D:
            cfg = LlamaConfig(hidden_size=D, num_attention_heads=1, head_dim=D)
            cos, sin = rope_tables(cfg, ATTN_T)
            for S in ATTN_S:
                # Contents never matter (nothing runs); shapes, strides, dtypes do.
                B = 1
                q = torch.empty(B, S, ATTN_HQ, D, dtype=dtype)
                kc = torch.empty(B, ATTN_HKV, ATTN_T, D, dtype=dtype)
                kn = torch.empty(B, S, ATTN_HKV, D, dtype=dtype)
                lens = torch.zeros(B, dtype=torch.int32)
                meta = {"dtype": str(dtype).removeprefix("torch."), "D": D, "S": S, "B": B, "V": ""}
                # num_splits=None: the GPU heuristic (4 splits for these shapes at 132 SMs);
                # 1: the single-pass variant the heuristic picks for big batches.
                for splits in (None, 1):
                    args = (q, kc, kc.clone(), kn, kn.clone(), lens, cos, sin)
                    yield meta, args, {"num_splits": splits}


def _acceptance_cases():
    """(op, meta, args, variant): each op without and with per-row draft lengths
    (the kernels specialize on whether draft_lens is given)."""
    import torch

    for B, k, V in ACCEPT_SHAPES:
        draft = torch.zeros(B, k, dtype=torch.int64)
        lens = torch.zeros(B, dtype=torch.int32)
        for dtype in (torch.bfloat16, torch.float32):
            logits = torch.empty(B, k + 1, V, dtype=dtype)
            meta = {"dtype": str(dtype).removeprefix("torch."), "D": "", "S": k + 1, "B": B, "V": V}
            yield "verify_greedy", meta, (draft, logits), "verify_greedy"
            yield "verify_greedy", meta, (draft, logits, lens), "verify_greedy+draft_lens"
        probs_t = torch.empty(B, k + 1, V)
        probs_d = torch.empty(B, k, V)
        meta = {"dtype": "float32", "D": "", "S": k + 1, "B": B, "V": V}
        yield "verify_sampling", meta, (draft, probs_d, probs_t, 0, 0), "verify_sampling"
        yield "verify_sampling", meta, (draft, probs_d, probs_t, 0, 0, lens), "verify_sampling+draft_lens"


def compile_triton(cache: _Cache) -> list[dict]:
    from layerskip_kernels.triton import acceptance, attention

    ptxas = _ptxas_path()
    rows = []
    seen = set()

    def record(launches, meta, variant):
        for name, kernel, kwargs in launches:
            ptx = kernel.asm["ptx"]
            row = dict(meta, kernel=name, variant=variant)
            key = (name, row["arch"], row["dtype"], row["D"], row["S"], row["B"], row["V"], hashlib.sha1(ptx.encode()).hexdigest())
            if key in seen:
                continue
            seen.add(key)
            row.update(ptxas_usage(ptx, ptxas, cache))
            row.update(
                num_warps=kernel.metadata.num_warps,
                num_stages=kernel.metadata.num_stages,
                shared_bytes=kernel.metadata.shared,
                tensor_cores=_tensor_core_ops(ptx),
                source="triton",
            )
            rows.append(row)

    for arch in ARCHS:
        with fake_gpu(arch) as launches:
            for meta, args, kw in _attention_cases():
                launches.clear()
                attention.draft_verify_attention(*args, **kw)
                variant = "single_pass" if kw["num_splits"] == 1 else "split_kv"
                record(launches, dict(meta, arch=arch), variant)
            for op, meta, args, variant in _acceptance_cases():
                launches.clear()
                getattr(acceptance, op)(*args)
                record(launches, dict(meta, arch=arch), variant)
        print(f"gpu_compile: triton sm_{arch}: {sum(r['arch'] == arch for r in rows)} kernel rows", flush=True)
    return rows


# --------------------------------------------------------------------------- CUDA


def _cuda_home() -> str | None:
    for cand in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if cand and os.path.exists(os.path.join(cand, "bin", "nvcc")):
            return cand
    nvcc = shutil.which("nvcc")
    return str(Path(nvcc).resolve().parent.parent) if nvcc else None


def _cuobjdump(cuda_home: str | None) -> str | None:
    # Some toolkit installs (this machine's included) ship nvcc without
    # cuobjdump; Triton's nvidia backend carries one.
    cands = [os.path.join(cuda_home, "bin", "cuobjdump")] if cuda_home else []
    with contextlib.suppress(ImportError):
        import triton

        cands.append(str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    return next((c for c in cands if os.path.exists(c)), None)


_CUDA_OBJECTS = "CMakeFiles/layerskip_cuda_check.dir/csrc/cuda/*.cu.o"


def _build_cuda_objects(build: Path, cuda_home: str) -> list[Path]:
    print(f"gpu_compile: building the CUDA objects in {build} (cmake target layerskip_cuda_check)", flush=True)
    env = dict(os.environ, CUDACXX=os.path.join(cuda_home, "bin", "nvcc"))
    subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), f"-DPython_EXECUTABLE={sys.executable}"],
        check=True, env=env, stdout=subprocess.DEVNULL,
    )
    subprocess.run(["cmake", "--build", str(build), "--target", "layerskip_cuda_check", "-j2"], check=True, env=env)
    return sorted(Path(p) for p in glob.glob(str(build / _CUDA_OBJECTS)))


def _demangle(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def _short_cuda_name(demangled: str) -> tuple[str, str]:
    """('attention_split_kernel', 'float,128,...'): function name and template arguments."""
    m = re.match(r"(?:void\s+)?(?:[\w:]+::)?(\w+)(?:<(.*)>)?\(", demangled)
    if not m:
        return demangled, ""
    return m.group(1), (m.group(2) or "")


_CUDA_DTYPES = {"float": "float32", "c10::Half": "float16", "c10::BFloat16": "bfloat16"}
# CUDA kernels that compute attention scores and P V: the gated ones in 16 bits.
CUDA_ATTENTION_KERNELS = ("attention_mma_kernel", "attention_split_kernel")


def _cuda_meta(name: str, targs: str) -> dict:
    """dtype (first template argument) and, for the attention kernels, D and
    the query tile R (`variant` keeps the full template arguments)."""
    args = [a.strip() for a in targs.split(",")] if targs else []
    meta = {"dtype": _CUDA_DTYPES.get(args[0], "") if args else ""}
    if name in CUDA_ATTENTION_KERNELS and len(args) == 3:
        meta["D"] = args[1]
    return meta


def compile_cuda(build: Path) -> list[dict]:
    cuda_home = _cuda_home()
    cuobjdump = _cuobjdump(cuda_home)
    objs = sorted(Path(p) for p in glob.glob(str(build / _CUDA_OBJECTS)))
    if not objs and cuda_home:
        objs = _build_cuda_objects(build, cuda_home)
    if not objs or cuobjdump is None:
        raise SystemExit(
            f"gpu_compile: no CUDA objects in {build} and no nvcc to build them, or no cuobjdump "
            "(CUDA toolkit or triton); pass --skip-cuda to leave the CUDA kernels out"
        )
    rows = []
    for obj in objs:
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", str(obj)], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True, text=True, check=True).stdout
        # Tensor-core SASS per (arch, function).
        tc = {}
        arch = None
        func = None
        for line in sass.splitlines():
            if m := re.match(r"\s*arch = sm_(\d+)", line):
                arch = int(m.group(1))
            elif m := re.match(r"\s*Function : (\S+)", line):
                func = m.group(1)
                tc.setdefault((arch, func), set())
            elif func and (m := re.search(r"\b(HMMA|HGMMA|IMMA|DMMA)\b", line)):
                tc[(arch, func)].add(m.group(1))
        arch = None
        entries = []
        for line in usage.splitlines():
            if m := re.match(r"\s*arch = sm_(\d+)", line):
                arch = int(m.group(1))
            elif m := re.match(r"\s*Function (\S+):", line):
                entries.append([arch, m.group(1), None])
            elif entries and entries[-1][2] is None and "REG:" in line:
                entries[-1][2] = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line))
        names = _demangle([e[1] for e in entries])
        for arch, func, res in entries:
            if res is None or arch is None:
                continue
            name, targs = _short_cuda_name(names[func])
            stack = int(res.get("STACK", 0))
            local = int(res.get("LOCAL", 0))
            rows.append({
                "kernel": name, "arch": arch, "dtype": "", "D": "", "S": "", "B": "", "V": "",
                **_cuda_meta(name, targs),
                "variant": targs, "num_warps": "", "num_stages": "",
                "registers": int(res.get("REG", 0)),
                # cuobjdump has no separate spill count: local memory (spills and
                # local arrays) and the stack frame are what a spill would show.
                "spill_store_bytes": local, "spill_load_bytes": local, "stack_bytes": stack,
                "shared_bytes": int(res.get("SHARED", 0)),
                "tensor_cores": "+".join(sorted(tc.get((arch, func), ()))) or "none",
                "source": f"cuda:{obj.name.removesuffix('.o')}",
            })
    if not rows:
        raise SystemExit(f"gpu_compile: no CUDA kernels found in {build}")
    return rows


# --------------------------------------------------------------------------- checks


def is_gated(r: dict) -> bool:
    """A 16-bit attention kernel of either backend: the decode path on a GPU."""
    if r["dtype"] not in ("bfloat16", "float16"):
        return False
    if str(r["source"]).startswith("cuda:"):
        return r["kernel"] in CUDA_ATTENTION_KERNELS
    return r["kernel"] == "_draft_verify_attention_kernel"


def failures(rows: list[dict]) -> list[str]:
    """The gate: the 16-bit attention kernels of both backends must use tensor
    cores and must not spill (for CUDA, cuobjdump reports no spill count: any
    local memory or stack frame fails, spills would live there). Spills
    elsewhere (fp32 attention under tf32x3, which holds three operand tiles
    per dot; the fp32 CUDA tiles of 128 query rows, which cap registers at 128)
    are reported by `warnings` and in the CSV, with their reasons in README."""
    bad = []
    for r in rows:
        if not is_gated(r):
            continue
        where = f"{r['kernel']} sm_{r['arch']} {r['dtype']} D={r['D']} S={r['S']} {r['variant']}".strip()
        if r["spill_store_bytes"] or r["spill_load_bytes"] or (r["source"] != "triton" and r["stack_bytes"]):
            bad.append(f"spills: {where}: {r['spill_store_bytes']} B stores, {r['spill_load_bytes']} B loads, "
                       f"{r['stack_bytes']} B stack")
        if r["tensor_cores"] == "none":
            bad.append(f"no tensor-core instruction: {where}")
    return bad


def warnings(rows: list[dict]) -> list[str]:
    return [f"spills (reported, not gated): {r['kernel']} sm_{r['arch']} {r['dtype']} D={r['D']} S={r['S']} "
            f"{r['variant']}: {r['spill_store_bytes']} B stores".strip()
            for r in rows if (r["spill_store_bytes"] or r["spill_load_bytes"]) and not failures([r])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_compile.csv"))
    ap.add_argument("--cuda-build", default=str(ROOT / "build-gpu-compile"),
                    help="CMake build dir holding the layerskip_cuda_check objects (built there if missing)")
    ap.add_argument("--skip-cuda", action="store_true", help="Triton kernels only")
    ap.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "layerskip", "gpu_compile.json"))
    args = ap.parse_args(argv)

    # The real compiler, not the interpreter, must handle @triton.jit: decided
    # when the kernel modules are imported, so before any of them is.
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") == "1":
        print("gpu_compile: run it in a fresh process without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    os.environ.pop("TRITON_INTERPRET", None)
    try:
        import triton  # noqa: F401
    except ImportError:
        print("gpu_compile: triton is not installed (pip install -e '.[triton]'); nothing to compile", file=sys.stderr)
        return 2

    cache = _Cache(Path(args.cache))
    rows = compile_triton(cache)
    cache.save()
    if not args.skip_cuda:
        rows += compile_cuda(Path(args.cuda_build))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})
    worst = max((r["registers"] for r in rows), default=0)
    gated = [r for r in rows if is_gated(r)]
    print(f"gpu_compile: {len(rows)} rows -> {out} (compile evidence, no GPU run; max {worst} registers); "
          f"{len(gated)} gated 16-bit attention rows "
          f"({sum(r['source'] == 'triton' for r in gated)} Triton, {sum(r['source'] != 'triton' for r in gated)} CUDA)")
    for line in warnings(rows):
        print("gpu_compile: warning", line)
    bad = failures(rows)
    # A renamed kernel must not pass the gate by dropping out of it.
    for backend, present in (("triton", any(r["source"] == "triton" for r in gated)),
                             ("cuda", args.skip_cuda or any(r["source"] != "triton" for r in gated))):
        if not present:
            bad.append(f"no 16-bit {backend} attention kernel found to check")
    for line in bad:
        print("gpu_compile: FAIL", line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
