"""Shared helpers of the kernel microbenchmarks: timing, copy bandwidth,
machine metadata, CSV rows and PNG plots.

Every script measures the machine's copy bandwidth in the same run as its
kernels, so that GB/s numbers can be read against what this machine can do at
that moment (the CPU may be shared with other jobs).
"""

from __future__ import annotations

import csv
import os
import platform
import re
import statistics
import sys
import time
from typing import Callable, Iterable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
if ROOT not in sys.path:  # run as `python bench/x.py` from a checkout
    sys.path.insert(0, ROOT)


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], *, warmup: int = 2, reps: int = 10, min_time_s: float = 0.0,
            device: str = "cpu") -> dict[str, float]:
    """Median / p20 / p80 time of fn() in seconds.

    CPU: wall time of each call (time.perf_counter). CUDA: see `_time_cuda`.
    Runs at least `reps` timed calls, and more until `min_time_s` has passed,
    so that fast kernels are not timed on a handful of noisy samples.
    """
    if torch.device(device).type == "cuda":
        return _time_cuda(fn, warmup=warmup, reps=reps, min_time_s=min_time_s)
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start < min_time_s and len(times) < 1000):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return _summary(times, "wall")


def _summary(times: list[float], method: str) -> dict[str, object]:
    times = sorted(times)
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]
    return {"median_s": statistics.median(times), "p20_s": q(0.2), "p80_s": q(0.8), "reps": len(times),
            "timing": method}


def _time_cuda(fn: Callable[[], object], *, warmup: int, reps: int, min_time_s: float) -> dict[str, object]:
    """GPU time per call, launch overhead excluded where possible.

    First choice: capture `burst` back-to-back calls in a CUDA graph and time its
    replays with CUDA events ("cuda_graph"): the device time of the kernels
    alone, as in a graph-captured decode step. An implementation that cannot be
    captured (it reads values on the host, say) is timed as bursts of eager
    calls between two events ("events_burst"), which includes whatever launch
    and host overhead the GPU waits for.
    """
    # One burst covers every rotating input set, so replays stream from HBM, not L2.
    burst = max(8, min(1024, getattr(fn, "copies", 32)))
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    graph = None
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(burst):
                fn()
        run, method = graph.replay, "cuda_graph"
    except Exception:  # noqa: BLE001 -- any capture failure falls back to eager bursts
        graph = None
        torch.cuda.synchronize()

        def run():
            for _ in range(burst):
                fn()

        method = "events_burst"
    run()
    torch.cuda.synchronize()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start < min_time_s and len(times) < 200):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        run()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) / 1e3 / burst)
    return _summary(times, method)


def copy_bandwidth_gbs(nbytes: int = 256 << 20, reps: int = 10, device: str = "cpu") -> float:
    """Median GB/s of a large tensor copy, counting bytes read plus bytes written.

    256 MiB per buffer is far beyond any last-level cache, so this is DRAM
    bandwidth with torch's own threads: the ceiling a streaming kernel can reach.
    """
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), warmup=2, reps=reps, device=device)
    return 2 * nbytes / t["median_s"] / 1e9


def rotating_calls(fn: Callable, make_inputs: Callable[[], tuple], nbytes: int,
                   min_total: int = 256 << 20, max_copies: int = 1024) -> Callable[[], object]:
    """A call of fn that cycles through enough copies of its inputs that their
    total exceeds `min_total` (several times any last-level cache), so small
    shapes are timed from DRAM as in a real model rather than from cache."""
    copies = max(1, min(max_copies, -(-min_total // max(nbytes, 1))))
    sets = [make_inputs() for _ in range(copies)]
    state = {"i": 0}

    def call():
        args = sets[state["i"]]
        state["i"] = (state["i"] + 1) % copies
        return fn(*args)

    call.copies = copies  # a CUDA-graph burst captures every input set once
    return call


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_kind() -> str:
    """A directory name per kind of CPU: the model name and the best CPU level
    our kernels can run on it ('AMD EPYC' with AVX-512-BF16 ->
    'amd-epyc-avx512_bf16'). Virtual machines often report only the vendor's
    family name, so the level is what tells an AVX2 machine from an AVX-512 one."""
    from layerskip_kernels import backends

    native = backends.native()
    levels = native.supported_cpu_levels() if native is not None and hasattr(native, "supported_cpu_levels") else []
    slug = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-") or "unknown-cpu"
    return f"{slug}-{levels[-1]}" if levels else slug


def results_path(name: str) -> str:
    """bench/results/<cpu kind>/<name>: one directory per CPU kind, so that a run
    on another machine never overwrites this one's results; `_<level>` is added
    when our CPU kernels run below the best level of this CPU
    (LAYERSKIP_CPU_CAPABILITY), so a forced-level run keeps its own files."""
    from layerskip_kernels import backends

    native = backends.native()
    level = native.cpu_level() if native is not None and hasattr(native, "cpu_level") else ""
    best = native.supported_cpu_levels()[-1] if level else ""
    return os.path.join(RESULTS, cpu_kind(), name + (f"_{level}" if level != best else ""))


def metadata() -> dict[str, object]:
    """Machine and version columns repeated on every CSV row."""
    import layerskip_kernels as lk
    from layerskip_kernels import backends

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    native = backends.native()
    info = native.build_info() if native is not None else {}
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "",
        "torch": torch.__version__,
        "triton": triton_version,
        "layerskip": lk.__version__,
        "build_isa": "+".join(info.get("cpu_isa", [])),
        "cpu_level": info.get("cpu_level", ""),  # the level our CPU kernels ran at
        "cpu_levels": "+".join(info.get("cpu_levels", [])),  # the levels compiled
        "build_openmp": info.get("openmp", ""),
        "build_cuda": info.get("cuda", ""),
    }


def bench_backends(include_gpu: bool = True) -> list[tuple[str, str]]:
    """(backend, device) pairs that run here: torch and cpu on CPU tensors, and
    torch, triton and cuda on CUDA tensors when a GPU is present. Each device's
    `torch` comes first: it is the baseline of that device's ratios."""
    from layerskip_kernels import backends

    # The registry's backends in its order (torch first): the compiled CPU ones on
    # CPU tensors; on CUDA tensors every one that runs there (Triton under the
    # interpreter is left out: it is a test vehicle, not a CPU backend).
    pairs = [(name, "cpu") for name in backends.BACKENDS
             if name != "triton" and backends.why_unavailable(name, "cpu") is None]
    if include_gpu and torch.cuda.is_available():
        pairs += [(name, "cuda") for name in backends.BACKENDS if backends.why_unavailable(name, "cuda") is None]
    return pairs


def write_csv(path: str, rows: list[dict[str, object]]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def print_table(rows: list[dict[str, object]], columns: Iterable[str]) -> None:
    columns = list(columns)
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def plot_bars(path: str, rows: list[dict[str, object]], *, label: Callable[[dict], str], series: str,
              value: str, ylabel: str, title: str, hline: float | None = None, hline_label: str = "") -> None:
    """Grouped bar chart: one group per configuration label, one bar per `series` value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels: list[str] = []
    names: list[str] = []
    for r in rows:
        if label(r) not in labels:
            labels.append(label(r))
        if r[series] not in names:
            names.append(r[series])
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(labels) * len(names)), 5))
    for i, name in enumerate(names):
        vals = {label(r): r[value] for r in rows if r[series] == name}
        xs = [j + i * width for j, lab in enumerate(labels) if lab in vals]
        ax.bar(xs, [vals[lab] for lab in labels if lab in vals], width, label=str(name))
    if hline is not None:
        ax.axhline(hline, color="k", linestyle="--", linewidth=1, label=hline_label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def kernel_bench_args(doc: str, name: str, default_reps: int, argv=None):
    """The command line shared by the kernel microbenchmarks."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a subset of the grid")
    ap.add_argument("--out", default=results_path(name),
                    help="output path prefix (.csv and .png are appended)")
    ap.add_argument("--reps", type=int, default=default_reps,
                    help="timed calls per configuration (fewer for slow ones)")
    ap.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                    help="time only the backends of this device (default: every device here)")
    ap.add_argument("--no-plot", action="store_true", help="the CSV only (no PNG)")
    ap.add_argument("--tiny", action="store_true", help="one small configuration per case (dry runs: the script runs)")
    return ap.parse_args(argv)


def start_run(device: str = "all") -> tuple[dict[str, object], list[tuple[str, str]], dict[str, float]]:
    """Metadata, the (backend, device) pairs to time (those of `device`, or all)
    and each device's copy bandwidth measured now; prints them as the header of
    the run."""
    meta = metadata()
    pairs = [p for p in bench_backends() if device in ("all", p[1])]
    if not pairs:
        raise SystemExit(f"no backend runs on device {device!r} here")
    bw = {dev: copy_bandwidth_gbs(device=dev) for dev in sorted({d for _, d in pairs})}
    print(f"{meta['cpu']} ({meta['cores']} cores, {meta['torch_threads']} torch threads); "
          + ", ".join(f"copy bandwidth {dev}: {v:.1f} GB/s" for dev, v in bw.items()))
    print("backends:", ", ".join(f"{b}@{d}" for b, d in pairs))
    return meta, pairs, bw


def timing_columns(t: dict[str, float], nbytes: int, copy_gbs: float, torch_s: float) -> dict[str, object]:
    """The CSV columns every kernel row shares: times in ms, GB/s, the fraction
    of the copy bandwidth and the ratio to the torch backend's median `torch_s`."""
    gbs = nbytes / t["median_s"] / 1e9
    return {
        "median_ms": t["median_s"] * 1e3,
        "p20_ms": t["p20_s"] * 1e3,
        "p80_ms": t["p80_s"] * 1e3,
        "reps": t["reps"],
        "bytes": nbytes,
        "gbs": gbs,
        "copy_gbs": copy_gbs,
        "frac_of_copy": gbs / copy_gbs,
        "speedup_vs_torch": torch_s / t["median_s"],
        "timing": t.get("timing", "wall"),
    }
