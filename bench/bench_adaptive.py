"""Adaptive drafting (generation/policy.py) against static self-speculation at its
best fixed (E, k) and against our autoregressive decoding, side by side in one
run: default model, bf16, greedy, batch 1, held-out stdlib prompts.

1. Screening, one pass each: a static sweep over exit layers and k picks the
   best fixed (E, k); adaptive settings (k_max x threshold x exit-layer bandit
   x per-row k) at that E; reduced draft vocabularies (--draft-vocab) for the
   best adaptive settings and for the static configuration the CLI runs.
2. The winners are re-measured with autoregressive decoding, interleaved
   `--reps` times; each engine's tokens/s is its median (a one-pass maximum is
   biased upwards by noise, a median of interleaved runs is not).
3. The analytic limit generalized to variable draft lengths: with c_E and v_E
   the measured costs of a draft step and a verify pass at exit E relative to an
   autoregressive step, a run that emitted N tokens in iterations that ran
   s_E batched draft steps and i_E verify passes at exit E can be at most
   N / sum_E (s_E c_E + i_E v_E) times faster than autoregressive decoding
   (every other cost zero); for a fixed k this is (1 - a^(k+1)) / ((1 - a)(k c + v)).
4. --record: the fastest of static / adaptive, each with or without the reduced
   draft vocabulary, becomes the CLI's default in the model's config.json
   (layerskip.default_speculation, default_draft_vocab), with the best adaptive
   settings (layerskip.adaptive) that generate(speculation="adaptive") uses.

    python bench/bench_adaptive.py [--quick] [--record] [--note "..."]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_e2e import load_prompts, step_costs, token_agreement  # noqa: E402
from common import metadata, plot_bars, print_table, results_path, write_csv  # noqa: E402

import layerskip_kernels as lk  # noqa: E402
from layerskip_kernels.generation.config import SpeculationConfig  # noqa: E402
from layerskip_kernels.generation.policy import adaptive_policy  # noqa: E402
from layerskip_kernels.vocab import FREQUENCIES_FILE, LEGACY_FREQUENCIES_FILE, frequent_tokens  # noqa: E402


def run(model, prompts, n_new, exit_layer=None, k=4, speculation="static", compile=False, draft_vocab=None):
    """One generate per prompt (batch 1); tokens/s over all, and the work done per exit layer."""
    seqs, tokens, t, drafted, accepted, iters = [], 0, 0.0, 0, 0, 0
    by_exit, steps_by_exit = {}, {}
    for p in prompts:
        spec = speculation() if callable(speculation) else speculation
        out = lk.generate(model, [p], max_new_tokens=n_new, exit_layer=exit_layer, num_speculations=k,
                          eos_token_id=[], speculation=spec, compile=compile, draft_vocab=draft_vocab)
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


def record_defaults(path: str, adaptive: dict, speculation: str, draft_vocab: int, how: str) -> None:
    """Write the CLI's defaults into the model's config.json (layerskip section):
    the adaptive settings, the speculation mode and the draft vocabulary size."""
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    ls = cfg.setdefault("layerskip", {})
    ls["adaptive"] = {key: adaptive[key] for key in ("exit_layer", "num_speculations", "threshold", "per_row_k",
                                                     "bandit")}
    ls["default_speculation"], ls["default_draft_vocab"] = speculation, draft_vocab
    ls["speculation_chosen_by"] = how
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    print(f"recorded in {cfg_path}: speculation {speculation}, draft vocab {draft_vocab or 'all'}, "
          f"adaptive {ls['adaptive']}")


def check_args(args) -> None:
    from layerskip_kernels.generation.validation import MAX_SPECULATIONS, check_int

    for k in args.k_max + args.sweep_k:
        check_int("--k-max / --sweep-k", k, 1, MAX_SPECULATIONS)
    for N in args.draft_vocab:
        check_int("--draft-vocab", N, 1)
    for th in args.thresholds:
        if not 0.0 <= th <= 1.0:
            raise SystemExit(f"--thresholds must be in [0, 1], got {th}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: the embedded model)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sweep-k", type=int, nargs="+", default=[1, 2, 3, 4, 6])
    ap.add_argument("--sweep-exit-layers", type=int, nargs="*", default=None, help="default: 1 .. L-1")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--k-max", type=int, nargs="+", default=[8, 12, 15], help="adaptive k_max values screened")
    ap.add_argument("--draft-vocab", type=int, nargs="*", default=[1024, 2048],
                    help="reduced draft vocabularies screened with the best static and adaptive settings")
    ap.add_argument("--compile", action="store_true", help="every engine with compiled steps")
    ap.add_argument("--record", action="store_true",
                    help="write the fastest adaptive settings, and whichever of static/adaptive (and draft "
                         "vocabulary) was faster, into the model's config.json as the CLI's defaults")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=results_path("adaptive"))
    args = ap.parse_args(argv)
    if args.quick:
        args.num_prompts, args.max_new_tokens, args.reps, args.sweep_k = 2, 32, 1, [2, 4]
        args.thresholds, args.k_max, args.draft_vocab = [0.5], [8], [1024]

    check_args(args)
    path = args.model or lk.default_model_path()
    model = lk.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    L = model.num_layers
    defaults = model.config.extra["layerskip"]
    # A bad record fails now, not mid-run.
    SpeculationConfig.from_model(path, model, speculation="adaptive", draft_vocab=0)
    prompts = load_prompts(os.path.join(path, "tokenizer.json"), args.num_prompts, args.prompt_tokens)
    meta = dict(metadata(), model=os.path.basename(os.path.normpath(path)), dtype="bfloat16", batch=1,
                max_new_tokens=args.max_new_tokens, prompt_tokens=args.prompt_tokens, num_prompts=len(prompts),
                compiled=args.compile, note=args.note)
    n, cmp = args.max_new_tokens, args.compile
    exits = args.sweep_exit_layers or list(range(1, L))
    k_top = max(args.k_max)

    # Costs per exit layer (c: draft step, v: verify pass at the largest k_max, relative to an AR step).
    context = args.prompt_tokens + n // 2
    costs = {}
    for e in range(1, L):
        c = step_costs(model, 1, context, e, k_top, reps=15, compile=cmp)
        # Adaptive drafting calls each draft step and the verify pass separately,
        # as step_costs times "draft" and "verify".
        costs[e] = dict(c=c["draft"] / c["ar"], v=c["verify"] / c["ar"])

    run(model, prompts[:1], 8, compile=cmp)  # warm-up
    # Screening, one pass each (a noisy maximum, so the winners are re-measured
    # below, interleaved): the static sweep, then the adaptive settings at the best
    # static E, then reduced draft vocabularies for the best of each.
    sweep = []
    for e in exits:
        for k in args.sweep_k:
            r = run(model, prompts, n, e, k, compile=cmp)
            sweep.append(dict(exit_layer=e, k=k, tokens_per_s=r["tokens_per_s"], acceptance=r["acceptance"]))
    best = max(sweep, key=lambda r: r["tokens_per_s"])
    E0, k0 = best["exit_layer"], best["k"]
    print(f"best static of the sweep: E={E0} k={k0}")

    def adaptive(s, dv=None):
        policy = lambda: adaptive_policy(model, E0, s["num_speculations"], s)
        return lambda: run(model, prompts, n, E0, s["num_speculations"], speculation=policy, compile=cmp,
                           draft_vocab=dv)

    def describe(s):
        return (f"adaptive E{'~' if s['bandit'] else '='}{E0} k<={s['num_speculations']} threshold {s['threshold']}"
                + (" per-row k" if s["per_row_k"] else ""))

    screened = []
    for km in args.k_max:
        for th in args.thresholds:
            for bandit in (False, True):
                for per_row_k in (False, True):
                    s = dict(num_speculations=km, threshold=th, bandit=bandit, per_row_k=per_row_k)
                    r = adaptive(s)()
                    screened.append(dict(settings=s, tokens_per_s=r["tokens_per_s"], acceptance=r["acceptance"]))
                    print(f"screen {describe(s)}: {r['tokens_per_s']:.1f} tok/s", flush=True)
    best_ad = max(screened, key=lambda r: r["tokens_per_s"])["settings"]
    # The static configuration the CLI runs: the recorded default (bench_e2e.py's
    # sweep, finish.sh's defaults step), else this run's best.
    recorded = SpeculationConfig.from_model(path, model, speculation="static", draft_vocab=0)
    Ed, kd = recorded.exit_layer or E0, recorded.num_speculations if "default_num_speculations" in defaults else k0
    vocabs = {}
    if not any(os.path.exists(os.path.join(path, f)) for f in (FREQUENCIES_FILE, LEGACY_FREQUENCIES_FILE)):
        print(f"no {FREQUENCIES_FILE} in {path}: no reduced draft vocabulary screened")
        args.draft_vocab = []
    for N in args.draft_vocab:
        if N < model.config.vocab_size:
            ids = vocabs[N] = frequent_tokens(path, N, model.config.vocab_size)
            for kind, fn in (("static", lambda: run(model, prompts, n, Ed, kd, compile=cmp, draft_vocab=ids)),
                             ("adaptive", adaptive(best_ad, ids))):
                r = fn()
                screened.append(dict(settings=dict(kind=kind, draft_vocab=N), tokens_per_s=r["tokens_per_s"],
                                     acceptance=r["acceptance"]))
                print(f"screen {kind} draft vocab {N}: {r['tokens_per_s']:.1f} tok/s", flush=True)
    best_dv = {kind: max((r for r in screened if r["settings"].get("kind") == kind),
                         key=lambda r: r["tokens_per_s"], default=None) for kind in ("static", "adaptive")}

    static_name = f"static E={E0} k={k0} (best of sweep)"
    cli_static_name = static_name if (Ed, kd) == (E0, k0) else f"static E={Ed} k={kd} (recorded default)"
    ad_name = describe(best_ad) + " (best screened)"
    engines = {"autoregressive": lambda: run(model, prompts, n, compile=cmp),
               static_name: lambda: run(model, prompts, n, E0, k0, compile=cmp),
               cli_static_name: lambda: run(model, prompts, n, Ed, kd, compile=cmp),
               ad_name: adaptive(best_ad)}
    # what --record chooses among: (mode, draft vocabulary size) -> engine name
    candidates = {("static", 0): cli_static_name, ("adaptive", 0): ad_name}
    for kind, r in best_dv.items():
        if r is not None:
            N = r["settings"]["draft_vocab"]
            name = candidates[(kind, N)] = (cli_static_name if kind == "static" else ad_name) + f", draft vocab {N}"
            engines[name] = (adaptive(best_ad, vocabs[N]) if kind == "adaptive" else
                             lambda ids=vocabs[N]: run(model, prompts, n, Ed, kd, compile=cmp, draft_vocab=ids))
    recorded = "recorded settings" if "adaptive" in defaults else "built-in settings"
    engines[f"adaptive ({recorded}) E~{E0} k<={k_top}"] = (
        lambda: run(model, prompts, n, E0, k_top, speculation="adaptive", compile=cmp))
    runs = {name: [] for name in engines}
    for _ in range(args.reps):
        for name, fn in engines.items():
            runs[name].append(fn())
    med = {name: sorted(rs, key=lambda r: r["tokens_per_s"])[len(rs) // 2] for name, rs in runs.items()}
    ar, static = med["autoregressive"], med[f"static E={E0} k={k0} (best of sweep)"]
    rows = []
    for name, r in med.items():
        # c was measured with the full draft head: no limit for a reduced one
        lim = None if "draft vocab" in name else limit(r, costs)
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
    for r in screened:
        st = r.pop("settings")
        r.update(meta, engine="screen " + (f"{st['kind']} draft vocab {st['draft_vocab']}" if "kind" in st
                                           else describe(st)))
    cols = ["engine", "tokens_per_s", "acceptance", "tokens_per_iteration", "draft_steps_per_iteration", "exits_used",
            "x_autoregressive", "x_best_static", "analytic_limit", "fraction_of_limit", "same_tokens_as_ar"]
    print_table(rows, cols)
    write_csv(args.out + ".csv", rows + [dict(r, **{f"c_E{e}": costs[e]["c"] for e in costs}) for r in sweep]
              + screened)
    if args.record:  # the fastest of what the CLI can run by default
        mode, N = max(candidates, key=lambda c: med[candidates[c]]["tokens_per_s"])
        record_defaults(path, dict(best_ad, exit_layer=E0), mode, N,
                        f"bench/bench_adaptive.py ({os.path.relpath(args.out + '.csv')}): fastest median of {args.reps} interleaved "
                        f"runs at batch 1, bf16")
    plot_bars(args.out + ".png", rows, label=lambda r: "batch 1", series="engine", value="tokens_per_s",
              ylabel="tokens/s", title=f"{meta['model']} bf16 greedy, held-out prompts, CPU {meta['cpu'][:30]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
