"""Adaptive drafting (generation/policy.py) against static self-speculation at its
best fixed (E, k) and against our autoregressive decoding, side by side in one
run: default model, bf16, greedy, batch 1, held-out stdlib prompts.

1. A static sweep over exit layers and k picks the best fixed (E, k) of this run.
2. Autoregressive, that best static configuration and the adaptive variants run
   interleaved `--reps` times; each engine's tokens/s is its median.
3. The analytic limit generalized to variable draft lengths: with c_E and v_E
   the measured costs of a draft step and a verify pass at exit E relative to an
   autoregressive step, a run that emitted N tokens in iterations that ran
   s_E batched draft steps and i_E verify passes at exit E can be at most
   N / sum_E (s_E c_E + i_E v_E) times faster than autoregressive decoding
   (every other cost zero); for a fixed k this is (1 - a^(k+1)) / ((1 - a)(k c + v)).

    python bench/bench_adaptive.py [--quick] [--note "..."]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_e2e import load_prompts, step_costs, token_agreement  # noqa: E402
from common import RESULTS, metadata, plot_bars, print_table, write_csv  # noqa: E402

import layerskip_kernels as lk  # noqa: E402
from layerskip_kernels.generation.policy import AdaptiveDrafting  # noqa: E402


def run(model, prompts, n_new, exit_layer=None, k=4, speculation="static", compile=False):
    """One generate per prompt (batch 1); tokens/s over all, and the work done per exit layer."""
    seqs, tokens, t, drafted, accepted, iters = [], 0, 0.0, 0, 0, 0
    by_exit, steps_by_exit = {}, {}
    for p in prompts:
        spec = speculation() if callable(speculation) else speculation
        out = lk.generate(model, [p], max_new_tokens=n_new, exit_layer=exit_layer, num_speculations=k,
                          eos_token_id=[], speculation=spec, compile=compile)
        s = out.stats
        seqs += out.sequences
        tokens, t = tokens + s["new_tokens"], t + s["time_s"]
        drafted, accepted, iters = drafted + s["drafted"], accepted + s["accepted"], iters + s["steps"]
        for e, n in s["iterations_by_exit"].items():
            by_exit[e] = by_exit.get(e, 0) + n
            steps_by_exit[e] = steps_by_exit.get(e, 0) + s["draft_steps_by_exit"][e]
    return dict(sequences=seqs, tokens=tokens, tokens_per_s=tokens / t,
                acceptance=accepted / drafted if drafted else None, iterations=iters,
                iterations_by_exit=by_exit, draft_steps_by_exit=steps_by_exit)


def limit(r, costs) -> float | None:
    """The generalized analytic limit of the module docstring (None for autoregressive)."""
    if not r["iterations_by_exit"]:
        return None
    work = sum(r["draft_steps_by_exit"][e] * costs[e]["c"] + n * costs[e]["v"]
               for e, n in r["iterations_by_exit"].items())
    return r["tokens"] / work


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: the embedded model)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sweep-k", type=int, nargs="+", default=[1, 2, 3, 4, 6])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    ap.add_argument("--k-max", type=int, default=8)
    ap.add_argument("--compile", action="store_true", help="every engine with compiled steps")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=os.path.join(RESULTS, "adaptive"))
    args = ap.parse_args(argv)
    if args.quick:
        args.num_prompts, args.max_new_tokens, args.reps, args.sweep_k = 2, 32, 1, [2, 4]

    path = args.model or lk.default_model_path()
    model = lk.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    L = model.num_layers
    defaults = model.config.extra["layerskip"]
    prompts = load_prompts(os.path.join(path, "tokenizer.json"), args.num_prompts, args.prompt_tokens)
    meta = dict(metadata(), model=os.path.basename(os.path.normpath(path)), dtype="bfloat16", batch=1,
                max_new_tokens=args.max_new_tokens, prompt_tokens=args.prompt_tokens, num_prompts=len(prompts),
                compiled=args.compile, note=args.note)
    n, cmp = args.max_new_tokens, args.compile

    # Costs per exit layer (c: draft step, v: verify pass at k_max, relative to an AR step).
    context = args.prompt_tokens + n // 2
    costs = {}
    for e in range(1, L):
        c = step_costs(model, 1, context, e, args.k_max, reps=15, compile=cmp)
        costs[e] = dict(c=c["draft"] / c["ar"], v=c["verify"] / c["ar"])

    run(model, prompts[:1], 8, compile=cmp)  # warm-up
    sweep = []
    for e in range(1, L):
        for k in args.sweep_k:
            r = run(model, prompts, n, e, k, compile=cmp)
            sweep.append(dict(exit_layer=e, k=k, tokens_per_s=r["tokens_per_s"], acceptance=r["acceptance"]))
    best = max(sweep, key=lambda r: r["tokens_per_s"])
    E0, k0 = best["exit_layer"], best["k"]
    print(f"best static of the sweep: E={E0} k={k0}")

    engines = {"autoregressive": lambda: run(model, prompts, n, compile=cmp),
               f"static E={E0} k={k0} (best of sweep)": lambda: run(model, prompts, n, E0, k0, compile=cmp)}
    # Each mechanism alone and together: the confidence stop at the best static E
    # (exit_layers=[E0]: no bandit), then with the exit-layer bandit, then with per-row k.
    for th in args.thresholds:
        for bandit, per_row_k in ((False, False), (True, False), (True, True)):
            policy = lambda th=th, pk=per_row_k, b=bandit: AdaptiveDrafting(
                model, E0, args.k_max, threshold=th, per_row_k=pk, exit_layers=None if b else [E0])
            name = (f"adaptive E{'~' if bandit else '='}{E0} k<={args.k_max} threshold {th}"
                    + (" per-row k" if per_row_k else ""))
            engines[name] = lambda policy=policy: run(model, prompts, n, E0, args.k_max, speculation=policy,
                                                      compile=cmp)
    engines[f"adaptive (generate default) E~{E0} k<={args.k_max}"] = (
        lambda: run(model, prompts, n, E0, args.k_max, speculation="adaptive", compile=cmp))
    runs = {name: [] for name in engines}
    for _ in range(args.reps):
        for name, fn in engines.items():
            runs[name].append(fn())
    med = {name: sorted(rs, key=lambda r: r["tokens_per_s"])[len(rs) // 2] for name, rs in runs.items()}
    ar, static = med["autoregressive"], med[f"static E={E0} k={k0} (best of sweep)"]
    rows = []
    for name, r in med.items():
        lim = limit(r, costs)
        x_ar = r["tokens_per_s"] / ar["tokens_per_s"]
        rows.append(dict(meta, engine=name, tokens_per_s=r["tokens_per_s"], acceptance=r["acceptance"],
                         tokens_per_iteration=r["tokens"] / r["iterations"] if r["iterations_by_exit"] else 1.0,
                         draft_steps_per_iteration=(sum(r["draft_steps_by_exit"].values()) / r["iterations"]
                                                    if r["iterations_by_exit"] else None),
                         exits_used=" ".join(f"E{e}:{c}" for e, c in sorted(r["iterations_by_exit"].items())),
                         x_autoregressive=x_ar, x_best_static=r["tokens_per_s"] / static["tokens_per_s"],
                         analytic_limit=lim, fraction_of_limit=x_ar / lim if lim else None,
                         same_tokens_as_ar=token_agreement(r["sequences"], ar["sequences"])))
    for r in sweep:
        r.update(meta, engine=f"sweep static E={r['exit_layer']} k={r['k']}",
                 x_autoregressive=None)
    cols = ["engine", "tokens_per_s", "acceptance", "tokens_per_iteration", "draft_steps_per_iteration", "exits_used",
            "x_autoregressive", "x_best_static", "analytic_limit", "fraction_of_limit", "same_tokens_as_ar"]
    print_table(rows, cols)
    write_csv(args.out + ".csv", rows + [dict(r, **{f"c_E{e}": costs[e]["c"] for e in costs}) for r in sweep])
    plot_bars(args.out + ".png", rows, label=lambda r: "batch 1", series="engine", value="tokens_per_s",
              ylabel="tokens/s", title=f"{meta['model']} bf16 greedy, held-out prompts, CPU {meta['cpu'][:30]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
