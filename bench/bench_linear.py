"""Microbenchmark of linear_rows (and linear_rows_int8): the few-row products of a decode step.

Each weight matrix of the default model (its decode path: q/k/v and gate/up
concatenated, o, down, the LM head) and of Llama-3.2-1B, times 1 to 32 rows
(a draft step has 1 per sequence, a verify pass k+1: 32 at batch 8, k = 3), bf16. Side by side in one
run: ATen's bf16 linear (what the model called before, oneDNN here) and
linear_rows (the cpu backend's kernel; other backends run
ATen's GEMM for this op, so they are the first column). Each is timed twice:
with the weights rotating through copies larger than the last-level cache, so
they stream from DRAM as in a decode step of a model larger than the cache
(`weights` = "dram"), and with one copy that stays in cache, as the default
model's whole 20 MB does in this machine's 32 MB L3 while it decodes ("cache").
GB/s counts the weight bytes. The crossovers set model/linear.py's
ROWS_ALWAYS, ROWS_MAX and ROWS_X_BYTES. For the LM heads (the default model's,
and Llama-3.2-1B's 128k-row one at the row counts of draft steps) a third
column, "cpu-int8", is linear_rows_int8 on the int8 copy a quantized draft
head scores with (generation/draft_head.py), still as a ratio to ATen's bf16.

fp32 x with fp32 weights is timed the same way (rows with dtype "fp32", their
ratio to ATen's fp32 linear): the question on AVX2 is whether fp32 weights
(native FMAs) or bf16 ones (half the bytes) decode faster.

Every row names the CPU model and the CPU level our kernels ran at; results go
to one directory per CPU kind, bench/results/<cpu kind>/linear_rows.csv (and
.png; common.results_path), so a run on another machine never overwrites these.

    python bench/bench_linear.py [--quick] [--cpu-level avx2] [--note "quiet machine ..."]
        [--rows 1,2,3,4,5,8,16] [--shapes stdlib,llama-1b qkv] [--dtypes bf16]

--rows, --shapes (name prefixes, comma-separated) and --dtypes time a part of
the grid (the row-count probes that set ROWS_ALWAYS_BY_LEVEL: the verify
passes' 5-32 rows, and prompts' 64-256, on the default model's and
Llama-3.2-1B's matrices); its
results go to linear_rows_probe.csv instead, so the full grid's file stays.
The 525 MB LM head is timed at its draft-step row counts only (<= 8).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

import common  # noqa: E402  (puts the checkout on sys.path)
from layerskip_kernels import ops

SHAPES = {  # name: (K, N)
    "stdlib qkv": (256, 384), "stdlib o": (256, 256), "stdlib gate_up": (256, 1536),
    "stdlib down": (768, 256), "stdlib head": (256, 4096),
    "llama-1b qkv": (2048, 3072), "llama-1b o": (2048, 2048), "llama-1b gate_up": (2048, 16384),
    "llama-1b down": (8192, 2048), "llama-1b head": (2048, 128256),
}
HEADS = ("stdlib head", "llama-1b head")  # also timed with int8 weights (linear_rows_int8)
DRAFT_ROWS = (1, 4, 8)  # the only row counts of the 525 MB head (a draft step's rows, batch 1-8)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    note = _take(argv, "--note") or ""
    level = _take(argv, "--cpu-level")
    only_rows, only_shapes, only_dtypes = (_take(argv, f) for f in ("--rows", "--shapes", "--dtypes"))
    probe = any(v is not None for v in (only_rows, only_shapes, only_dtypes))
    from layerskip_kernels import backends

    native = backends.native()
    if level is not None:
        native.set_cpu_level(level)  # raises, naming the levels, when this CPU cannot run it
    # Default --out: common.results_path, per CPU kind (and _<level> when forced lower).
    args = common.kernel_bench_args(__doc__, "linear_rows_probe" if probe else "linear_rows", 200, argv)
    meta, pairs, bw = common.start_run(args.device)  # meta["cpu_level"]: the level that runs
    print(f"cpu kernels at level {meta['cpu_level']}")
    # Only the cpu backend has a kernel of ours; elsewhere linear_rows is ATen's GEMM.
    impls = [("aten", device) for device in sorted({d for _, d in pairs})] + [p for p in pairs if p[0] == "cpu"]
    shapes = {k: v for k, v in SHAPES.items() if not args.quick or k.startswith("stdlib")}
    if only_shapes is not None:
        prefixes = [p.strip() for p in only_shapes.split(",")]
        shapes = {k: v for k, v in shapes.items() if any(k.startswith(p) for p in prefixes)}
    row_counts = (1, 4, 8, 16) if args.quick else (1, 2, 4, 8, 9, 12, 16, 24, 32)
    if only_rows is not None:
        row_counts = tuple(int(r) for r in only_rows.split(","))
    dtypes = [d for d in (torch.bfloat16, torch.float32)
              if only_dtypes is None or ("bf16" if d == torch.bfloat16 else "fp32") in only_dtypes.split(",")]

    rows = []
    for name, (K, N) in shapes.items():
        head_rows = [r for r in row_counts if r <= max(DRAFT_ROWS)] if only_rows is not None else DRAFT_ROWS
        for M in (row_counts if name != "llama-1b head" else head_rows):
            for dtype in dtypes:
                if dtype == torch.float32 and name == "llama-1b head":
                    continue  # 1 GB of fp32 weights
                rows += _time_shape(name, K, N, M, dtype, impls, args, meta, bw, note)

    common.write_csv(args.out + ".csv", rows)
    common.print_table(rows, ["shape", "rows", "dtype", "impl", "weights", "median_ms", "gbs", "speedup_vs_aten"])
    common.plot_bars(
        args.out + ".png", [r for r in rows if r["weights"] == "dram" and r["dtype"].startswith("bf16")],
        label=lambda r: f"{r['shape']} x{r['rows']}", series="impl", value="speedup_vs_aten",
        ylabel="speedup over ATen bf16 linear (median)",
        title=f"linear_rows, bf16, weights from DRAM, on "
              f"{meta['gpu'] if args.device == 'cuda' else meta['cpu'] + ' (' + meta['cpu_level'] + ')'}",
        hline=1.0, hline_label="ATen",
    )
    print(f"wrote {args.out}.csv and {args.out}.png")


def _take(argv, flag):
    """The value after `flag` in argv (removed from it), or None."""
    if flag not in argv:
        return None
    i = argv.index(flag)
    value = argv[i + 1]
    del argv[i:i + 2]
    return value


def _time_shape(name, K, N, M, dtype, impls, args, meta, bw, note):
    """Rows of one (shape, rows, dtype): ATen, our kernel, and for the heads in
    bf16 the int8 kernel, each with weights from DRAM and from cache."""
    rows, base = [], {}
    esize = torch.tensor([], dtype=dtype).element_size()
    extra = [("cpu-int8", d) for i, d in impls if i == "cpu"] if name in HEADS and dtype == torch.bfloat16 else []
    for impl, device in impls + extra:
        g = torch.Generator().manual_seed(0)
        if impl == "cpu-int8":
            nbytes = N * K + 4 * N
            fn = ops._impl_linear_rows_int8("cpu")
            make = lambda: (torch.randn(M, K, generator=g).to(device, dtype),  # noqa: E731
                            torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8).to(device),
                            torch.rand(N, generator=g).to(device) / 127)
        else:
            nbytes = N * K * esize
            fn = F.linear if impl == "aten" else ops._impl_linear_rows(impl)
            make = lambda: (torch.randn(M, K, generator=g).to(device, dtype),  # noqa: E731
                            torch.randn(N, K, generator=g).to(device, dtype))
        for weights, total in (("dram", 64 << 20), ("cache", 0)):
            if weights == "cache" and nbytes > 8 << 20:
                continue  # does not stay in cache
            call = common.rotating_calls(fn, make, nbytes, min_total=total)
            t = common.time_fn(call, warmup=3, reps=args.reps, min_time_s=0.2, device=device)
            del call
            if impl == "aten":
                base[weights] = t["median_s"]
            cols = common.timing_columns(t, nbytes, bw[device], base[weights])
            cols["speedup_vs_aten"] = cols.pop("speedup_vs_torch")
            op = "linear_rows_int8" if impl == "cpu-int8" else "linear_rows"
            dname = "bf16" if dtype == torch.bfloat16 else "fp32"
            rows.append({**meta, "note": note, "op": op, "impl": f"{impl}@{device}", "shape": name, "K": K,
                         "N": N, "rows": M, "dtype": f"{dname} x, int8 weight" if op != "linear_rows" else dname,
                         "weights": weights, **cols})
            r = rows[-1]
            print(f"{name:14s} rows={M:2d} {dname} {impl:8s}@{device} {weights:5s}: {r['median_ms'] * 1e3:8.1f} us "
                  f"{r['gbs']:6.1f} GB/s  x{r['speedup_vs_aten']:.2f} vs aten", flush=True)
    return rows


if __name__ == "__main__":
    main()
