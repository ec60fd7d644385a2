"""Microbenchmark of draft_verify_attention on shapes of real models.

Draft (S = 1) and verify (S = k+1) steps of Llama-3.2-1B (Hq 32, Hkv 8, D 64)
and Llama-3-8B (Hq 32, Hkv 8, D 128) over a static cache holding `context`
tokens; every backend that runs here, side by side in one run. GB/s counts the
bytes a single pass must move: K and V of the attended context, plus q and out.

    python bench/bench_attention.py            # full grid (long on a small CPU)
    python bench/bench_attention.py --quick    # a subset
Writes bench/results/attention.csv and attention.png (or --out PREFIX).
"""

from __future__ import annotations

import itertools

import torch

import common  # noqa: E402  (puts the checkout on sys.path)
from layerskip_kernels import ops
from layerskip_kernels.model.config import LlamaConfig
from layerskip_kernels.model.llama import rope_tables

MODELS = {"llama-3.2-1b": (32, 8, 64), "llama-3-8b": (32, 8, 128)}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def grid(quick: bool):
    if quick:
        return itertools.product(MODELS, (1, 4), (1, 5), (2048,), DTYPES)
    return itertools.product(MODELS, (1, 4, 16), (1, 5, 9), (512, 2048, 8192), DTYPES)


def make_inputs(model, B, S, context, dtype, device):
    Hq, Hkv, D = MODELS[model]
    g = torch.Generator().manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
    q = rnd(B, S, Hq, D)
    k_cache, v_cache = rnd(B, Hkv, context, D), rnd(B, Hkv, context, D)
    k_new, v_new = rnd(B, S, Hkv, D), rnd(B, S, Hkv, D)
    # The cache holds context - S tokens; the S new ones make `context` attended keys.
    lens = torch.full((B,), context - S, dtype=torch.int32, device=device)
    cfg = LlamaConfig(hidden_size=D, num_attention_heads=1, head_dim=D, rope_theta=500000.0)
    cos, sin = (t.to(device) for t in rope_tables(cfg, context))
    return q, k_cache, v_cache, k_new, v_new, lens, cos, sin


def main(argv=None):
    args = common.kernel_bench_args(__doc__, "attention", 10, argv)
    meta, pairs, bw = common.start_run(args.device)

    rows = []
    for model, B, S, context, dname in grid(args.quick):
        Hq, Hkv, D = MODELS[model]
        dtype = DTYPES[dname]
        nbytes = (2 * B * Hkv * context * D + 2 * B * S * Hq * D) * dtype.itemsize
        base = {}
        for backend, device in pairs:
            # The backend's implementation itself: the Python input checks of
            # layerskip_kernels.ops (the same for every backend) are left out.
            fn = ops._impl("draft_verify_attention", backend)
            call = common.rotating_calls(fn, lambda: make_inputs(model, B, S, context, dtype, device), nbytes)
            # One probe call sizes the repetitions: slow baselines get fewer.
            probe = common.time_fn(call, warmup=1, reps=1, device=device)["median_s"]
            reps = max(3, min(args.reps, int(2.0 / max(probe, 1e-9))))
            t = common.time_fn(call, warmup=1, reps=reps, min_time_s=0.2, device=device)
            del call
            if backend == "torch":
                base[device] = t["median_s"]
            rows.append({
                **meta,
                "op": "draft_verify_attention",
                "backend": backend,
                "device": device,
                "impl": f"{backend}@{device}",
                "model": model,
                "B": B, "S": S, "Hq": Hq, "Hkv": Hkv, "D": D, "context": context, "dtype": dname,
                **common.timing_columns(t, nbytes, bw[device], base[device]),
            })
            r = rows[-1]
            print(f"{model:13s} B={B:2d} S={S} ctx={context:5d} {dname:4s} {backend:6s}@{device}: "
                  f"{r['median_ms']:9.3f} ms  {r['gbs']:6.1f} GB/s ({100 * r['frac_of_copy']:5.1f}% of copy)  "
                  f"x{r['speedup_vs_torch']:.2f} vs torch", flush=True)

    common.write_csv(args.out + ".csv", rows)
    print()
    common.print_table(rows, ["model", "B", "S", "context", "dtype", "backend", "device", "median_ms",
                              "p20_ms", "p80_ms", "gbs", "frac_of_copy", "speedup_vs_torch"])
    common.plot_bars(
        args.out + ".png", rows,
        label=lambda r: f"{r['model'][6:]} B{r['B']} S{r['S']} T{r['context']} {r['dtype']}",
        series="impl", value="gbs", ylabel="GB/s (K/V + q/out bytes)",
        title=f"draft_verify_attention on {meta['gpu'] if args.device == 'cuda' else meta['cpu']}",
        hline=bw.get("cpu", bw.get("cuda")), hline_label=("CPU" if "cpu" in bw else "GPU") + " copy bandwidth",
    )
    print(f"wrote {args.out}.csv and {args.out}.png")


if __name__ == "__main__":
    main()
