"""Serving benchmark: continuous batching of many requests, autoregressive vs
self-speculative, and against fixed batches.

64 held-out stdlib prompts (64 tokens each) with ragged budgets (32..128 new
tokens, cycling) and the model's EOS, decoded by `layerskip_kernels.Engine`
with max_batch_size 1, 2, 4, 8, 16. Each configuration runs autoregressive and
self-speculative (the model's recorded default E, k) side by side, interleaved,
in one process. `fixed` runs the same requests as consecutive fixed batches of
max_batch_size prompts (a batch ends with its slowest row: what generate()
did before continuous batching).

Every configuration runs --reps times (default 3), interleaved with the others;
each row is its median-throughput run. Per run: throughput (generated tokens / wall time), p50/p90 per-request latency
(from the start of the run: every request is waiting at t = 0) and per-request
tokens/s. Writes bench/results/serving.csv and serving.png.

    python bench/bench_serving.py [--quick] [--dtype auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import metadata, print_table, results_path, write_csv  # noqa: E402

import layerskip_kernels as lk  # noqa: E402
from bench_e2e import load_prompts  # noqa: E402
from layerskip_kernels.model.dtypes import decode_dtype  # noqa: E402
from layerskip_kernels.generation.config import SpeculationConfig  # noqa: E402


def budgets(n: int) -> list[int]:
    return [32 + (i * 37) % 97 for i in range(n)]  # 32..128, ragged


def run_engine(model, prompts, news, max_batch_size, exit_layer, k, **engine_kw):
    engine = lk.Engine(model, max_batch_size=max_batch_size, exit_layer=exit_layer, num_speculations=k, **engine_kw)
    for p, n in zip(prompts, news):
        engine.add(p, max_new_tokens=n)
    t0 = time.perf_counter()
    outs = engine.run()
    wall = time.perf_counter() - t0
    lat = sorted(o.stats["latency_s"] for o in outs)
    tokens = sum(len(o.tokens) for o in outs)
    st = engine.stats
    return dict(wall_s=wall, tokens=tokens, throughput_tok_s=tokens / wall,
                p50_latency_s=statistics.median(lat), p90_latency_s=lat[int(0.9 * (len(lat) - 1))],
                median_request_tok_s=statistics.median(o.stats["tokens_per_s"] for o in outs),
                acceptance=st["accepted"] / st["drafted"] if st["drafted"] else None,
                iterations=st["steps"]), [o.tokens for o in outs]


def run_fixed(model, prompts, news, batch, exit_layer, k, **generate_kw):
    """Consecutive fixed batches: the next batch starts when the whole previous one is done."""
    t0 = time.perf_counter()
    tokens, lat, seqs = 0, [], []
    for i in range(0, len(prompts), batch):
        out = lk.generate(model, prompts[i:i + batch], max_new_tokens=max(news[i:i + batch]),
                          exit_layer=exit_layer, num_speculations=k, **generate_kw)
        done = time.perf_counter() - t0
        for s, n in zip(out.sequences, news[i:i + batch]):
            seqs.append(s[:n])  # a fixed batch decodes to its largest budget; count each row's own
            tokens += len(s[:n])
            lat.append(done)
    wall = time.perf_counter() - t0
    lat.sort()
    return dict(wall_s=wall, tokens=tokens, throughput_tok_s=tokens / wall,
                p50_latency_s=statistics.median(lat), p90_latency_s=lat[int(0.9 * (len(lat) - 1))]), seqs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--quick", action="store_true", help="16 prompts, batch sizes 1/4/8")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32", "float16"],
                    help="auto: the CLI's default for this CPU level (layerskip_kernels.model.dtypes)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 2 4 8 16")
    ap.add_argument("--compile", action="store_true", help="compiled decode steps (generation/steps.py)")
    ap.add_argument("--speculation", default="static", choices=["static", "adaptive"])
    ap.add_argument("--exit-layer", type=int, default=None, help="default: the model's recorded default")
    ap.add_argument("--num-speculations", type=int, default=None, help="default: the model's recorded default")
    ap.add_argument("--reps", type=int, default=3,
                    help="runs of every configuration, interleaved; each row is the median-throughput run")
    ap.add_argument("--note", default="", help="conditions of the run, written on every row")
    ap.add_argument("--out", default=results_path("serving"))
    args = ap.parse_args(argv)
    kw = dict(compile=args.compile)

    path = args.model or lk.default_model_path()
    if args.dtype == "auto":
        args.dtype = str(decode_dtype("cpu")).removeprefix("torch.")
    model = lk.LlamaForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype))

    # adaptive drafting: its own recorded exit layer and k_max (bench_adaptive.py --record), as in the CLI
    spec = SpeculationConfig.from_model(path, model, drafting=True, speculation=args.speculation, draft_vocab=0,
                                        exit_layer=args.exit_layer or None, num_speculations=args.num_speculations or None)
    E, k = spec.exit_layer, spec.num_speculations
    n_prompts = 16 if args.quick else 64
    prompts = load_prompts(os.path.join(path, "tokenizer.json"), n_prompts, 64)
    news = budgets(len(prompts))
    sizes = args.batch_sizes or ((1, 4, 8) if args.quick else (1, 2, 4, 8, 16))
    meta = dict(metadata(), compiled=args.compile, speculation=args.speculation, note=args.note)
    print(f"{meta['cpu']}, {len(prompts)} requests, {sum(news)} max new tokens, E={E} k={k}, {args.dtype}")
    with torch.inference_mode():  # warm-up (first calls allocate and pick kernels)
        for mbs in sizes:  # and compiles every shape bucket the runs use (reported by bench_compile.py)
            run_engine(model, prompts[:mbs], [48] * mbs, mbs, E, k, speculation=args.speculation, **kw)
            run_engine(model, prompts[:mbs], [8] * mbs, mbs, None, k, **kw)

    rows = []
    for mbs in sizes:
        configs = [(mode, sched, e, kk, fn) for mode, (e, kk) in (("autoregressive", (None, k)), ("self-speculative", (E, k)))
                   for sched, fn in (("continuous", run_engine), ("fixed", run_fixed))
                   if not (sched == "fixed" and mbs == 1)]  # one row at a time is the same schedule
        runs = {(mode, sched): [] for mode, sched, *_ in configs}
        for _ in range(args.reps):  # interleaved: a slow phase of the machine hits every configuration
            for mode, sched, e, kk, fn in configs:
                spec = dict(speculation=args.speculation) if e else {}
                runs[(mode, sched)].append(fn(model, prompts, news, mbs, e, kk, **kw, **spec))
        res = {key: sorted(rs, key=lambda x: x[0]["throughput_tok_s"])[len(rs) // 2] for key, rs in runs.items()}
        for (mode, sched), (r, _) in res.items():
            e = E if mode == "self-speculative" else None
            rows.append({**meta, "max_batch_size": mbs, "mode": mode, "schedule": sched, "E": e or "",
                         "k": k if e else "", "requests": len(prompts), "dtype": args.dtype, "reps": args.reps, **r})
            print(f"B={mbs:2d} {mode:16s} {sched:10s}: {r['throughput_tok_s']:7.1f} tok/s  "
                  f"p50 {r['p50_latency_s']:6.2f} s  p90 {r['p90_latency_s']:6.2f} s (median of {args.reps})",
                  flush=True)
        ar = res[("autoregressive", "continuous")][0]["throughput_tok_s"]
        for r in rows[-len(res):]:
            r["speedup_vs_continuous_ar"] = r["throughput_tok_s"] / ar
        spec_seqs, ar_seqs = res[("self-speculative", "continuous")][1], res[("autoregressive", "continuous")][1]
        agree = sum(a == b for a, b in zip(spec_seqs, ar_seqs)) / len(ar_seqs)
        for r in rows[-len(res):]:
            r["requests_identical_to_ar"] = agree

    write_csv(args.out + ".csv", rows)
    print()
    print_table(rows, ["max_batch_size", "mode", "schedule", "throughput_tok_s", "speedup_vs_continuous_ar",
                       "p50_latency_s", "p90_latency_s", "acceptance", "requests_identical_to_ar"])
    plot(args.out + ".png", rows, meta)
    print(f"wrote {args.out}.csv and {args.out}.png")


def plot(path, rows, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode in ("autoregressive", "self-speculative"):
        for sched, style in (("continuous", "-o"), ("fixed", "--x")):
            pts = sorted((r["max_batch_size"], r["throughput_tok_s"]) for r in rows
                         if r["mode"] == mode and r["schedule"] == sched)
            if pts:
                ax.plot(*zip(*pts), style, label=f"{mode}, {sched} batches")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("max_batch_size (active rows)")
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"Serving {rows[0]['requests']} requests on {meta['cpu']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
