"""Paired before/after: the same decode workload under two checkouts of this
package, run alternately (A B A B ...) in fresh processes, so that a slow phase
of a shared machine hits both alike.

Each worker process imports the package from its checkout (PYTHONPATH), loads
the embedded model in bf16 and times `generate` on held-out prompts:
autoregressive and self-speculative, eager and compiled, at each batch size.
Compilation happens in the worker's warm-up, outside the timings. A checkout
must have its extension built (layerskip_kernels/_C*.so) and the same
`generate` keywords as this one (exit_layer, num_speculations, compile).

    python bench/bench_ab.py --a ../old-checkout --b . --label-a before --label-b after \
        --out bench/results/<cpu kind>/ab_engine

Rows: one per (round, checkout, batch, mode, engine) with tokens/s, and a
summary per (batch, mode, engine): median tokens/s of each side and b / a.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(args) -> int:
    """Runs inside a checkout: prints one JSON line per measurement."""
    import torch

    sys.path.insert(0, os.path.join(args.checkout, "bench"))
    from bench_e2e import load_prompts  # the checkout's own helpers

    import layerskip_kernels as lk

    torch.set_num_threads(args.threads or torch.get_num_threads())
    path = lk.default_model_path()
    model = lk.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    prompts = load_prompts(os.path.join(path, "tokenizer.json"), max(args.batch_sizes + [args.num_prompts]),
                           args.prompt_tokens)
    E, k = args.exit_layer, args.num_speculations

    def run(batch, B, exit_layer, compile, n_new):
        tokens = t = 0.0
        for i in range(0, len(batch), B):
            out = lk.generate(model, batch[i:i + B], max_new_tokens=n_new, exit_layer=exit_layer, num_speculations=k,
                              eos_token_id=[], compile=compile)
            tokens += out.stats["new_tokens"]
            t += out.stats["time_s"]
        return tokens / t

    for mode in args.modes:
        compile = mode == "compiled"
        for B in args.batch_sizes:
            batch = prompts[: max(B, args.num_prompts if B == 1 else B)]
            for e in (None, E):  # warm-up (compiled: this bucket's graphs)
                run(batch[:B], B, e, compile, 8)
            for rep in range(args.reps):
                for name, e in (("autoregressive", None), ("self-speculative", E)):
                    tps = run(batch, B, e, compile, args.max_new_tokens)
                    print(json.dumps(dict(batch=B, mode=mode, engine=name, rep=rep, tokens_per_s=tps)), flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", help="checkout A (before)")
    ap.add_argument("--b", help="checkout B (after)")
    ap.add_argument("--label-a", default="a")
    ap.add_argument("--label-b", default="b")
    ap.add_argument("--rounds", type=int, default=2, help="A B rounds (fresh processes each)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions inside each process")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    ap.add_argument("--exit-layer", type=int, default=3)
    ap.add_argument("--num-speculations", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--num-prompts", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=None, help="CSV path without extension (default: per CPU kind)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--checkout", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    sys.path.insert(0, HERE)
    from common import metadata, print_table, results_path, write_csv

    passthrough = ["--batch-sizes", *map(str, args.batch_sizes), "--modes", *args.modes, "--reps", str(args.reps),
                   "--exit-layer", str(args.exit_layer), "--num-speculations", str(args.num_speculations),
                   "--max-new-tokens", str(args.max_new_tokens), "--prompt-tokens", str(args.prompt_tokens),
                   "--num-prompts", str(args.num_prompts)] + (["--threads", str(args.threads)] if args.threads else [])
    rows = []
    for rnd in range(args.rounds):
        for label, checkout in ((args.label_a, args.a), (args.label_b, args.b)):
            checkout = os.path.abspath(checkout)
            env = dict(os.environ, PYTHONPATH=checkout)
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--checkout", checkout] + passthrough
            out = subprocess.run(cmd, env=env, cwd=checkout, capture_output=True, text=True)
            if out.returncode:
                sys.stderr.write(out.stderr)
                raise SystemExit(f"worker for {checkout} failed ({out.returncode})")
            for line in out.stdout.splitlines():
                if line.startswith("{"):
                    rows.append(dict(json.loads(line), round=rnd, side=label, checkout=checkout))
                    print(label, rows[-1], flush=True)
    meta = dict(metadata(), note=args.note, exit_layer=args.exit_layer, k=args.num_speculations,
                max_new_tokens=args.max_new_tokens)
    summary = []
    for key in sorted({(r["batch"], r["mode"], r["engine"]) for r in rows}):
        med = {side: statistics.median(r["tokens_per_s"] for r in rows
                                       if (r["batch"], r["mode"], r["engine"]) == key and r["side"] == side)
               for side in (args.label_a, args.label_b)}
        summary.append(dict(meta, batch=key[0], mode=key[1], engine=key[2],
                            **{f"tokens_per_s_{s}": v for s, v in med.items()},
                            ratio=med[args.label_b] / med[args.label_a]))
    print_table(summary, ["batch", "mode", "engine", f"tokens_per_s_{args.label_a}", f"tokens_per_s_{args.label_b}",
                          "ratio"])
    out = args.out or results_path("ab")
    write_csv(out + "_runs.csv", [dict(meta, **r) for r in rows])
    write_csv(out + ".csv", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
