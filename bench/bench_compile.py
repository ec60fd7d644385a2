"""Compiled decode steps (generation/steps.py) against eager ones and against
transformers, side by side in one run on the default model, bf16, greedy,
held-out stdlib prompts.

Writes three CSVs (and one PNG) under bench/results/:

  compile_e2e.csv    tokens/s of ours eager/compiled autoregressive and
                     self-speculative, transformers greedy, assistant_early_exit
                     (batch 1) and transformers with a static cache + torch.compile;
                     each engine's repetitions interleaved with the others. Our
                     engines' speedups over our autoregressive decoding in the
                     same mode are medians of per-repetition ratios (the two
                     ran back to back), with their range, for the whole run and
                     for the steps after the prompts' prefill (which both pay).
  compile_steps.csv  the engine's greedy steps, eager and compiled (bench_e2e.
                     step_costs: an autoregressive step, a whole self-speculative
                     iteration, what one draft step adds to it and the rest, also
                     with the int8 draft head; bench_e2e.step_costs says what each
                     is), in ms and as a multiple of their
                     weight-streaming time (bytes of the weights read / this
                     machine's copy bandwidth, the physical limit of a
                     memory-bound step); c and v as the analytic limit uses them.
  compile_cost.csv   one-time compile seconds per step function and shape bucket,
                     in a fresh process with an empty inductor cache ("cold") and
                     again in a second process ("warm", inductor's on-disk cache),
                     and `layerskip generate` wall time with and without --compile.

    python bench/bench_compile.py [--quick] [--note "quiet machine ..."]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_e2e import (acceptance_from_tokens_per_step, analytic_limit, load_hf, load_prompts,  # noqa: E402
                       run_hf, run_ours, step_costs, token_agreement)
from common import copy_bandwidth_gbs, metadata, plot_bars, print_table, results_path, write_csv  # noqa: E402

import layerskip_kernels as lk  # noqa: E402
from layerskip_kernels.generation.config import SpeculationConfig  # noqa: E402


def weight_bytes(model, E: int, k: int) -> dict[str, int]:
    """Bytes of weights one step reads: the linear layers of the layers it runs and
    the LM head (the embedding reads one row per token: negligible)."""
    per_layer = [sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in model.model.layers]
    head = model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    head_int8 = model.lm_head.weight.numel() + 4 * model.lm_head.weight.shape[0]  # int8 rows, fp32 scales
    b = dict(ar=sum(per_layer) + head, draft=sum(per_layer[:E]) + head, draft_int8=sum(per_layer[:E]) + head_int8,
             verify=sum(per_layer) + head)  # verify: layers [0, E) for one token, [E, L) for k+1, one head
    b.update(iteration=k * b["draft"] + b["verify"], iteration_int8=k * b["draft_int8"] + b["verify"])
    return b


_COMPILE_PROBE = r"""
import json, sys, time, torch
import layerskip_kernels as lk
from layerskip_kernels.generation import steps
m = lk.LlamaForCausalLM.from_pretrained(dtype=torch.bfloat16)
E, k, B, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
prompts = [[5 + b, 6, 7, 8] for b in range(B)]
res = {}
for name, e in (("autoregressive", None), ("self-speculative", E)):
    out = lk.generate(m, prompts, max_new_tokens=n, exit_layer=e, num_speculations=k, eos_token_id=[], compile=True)
    res[name] = out.stats["compile_s"]
res["per_step"] = steps.compile_stats
print(json.dumps(res))
"""


def compile_costs(E: int, k: int, batch_sizes, meta) -> list[dict]:
    """Cold and warm compile seconds per step function and shape bucket (fresh processes)."""
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir)
        for B in batch_sizes:
            for state in ("cold", "warm"):  # the first process fills the on-disk cache, the second reads it
                res = subprocess.run([sys.executable, "-c", _COMPILE_PROBE, str(E), str(k), str(B), "32"],
                                     capture_output=True, text=True, env=env, timeout=1200, check=True)
                got = json.loads(res.stdout.strip().splitlines()[-1])
                for step, s in got["per_step"].items():
                    rows.append(dict(meta, kind="compile", batch_bucket=B, cache_bucket=256, state=state, what=step,
                                     seconds=s))
    return rows


def cli_costs(meta, n_new: int = 128) -> list[dict]:
    """`layerskip generate` (README's first command) wall time, eager vs --compile,
    with inductor's cache as this machine has it (warm after compile_costs...)."""
    rows = []
    prompt = "def fibonacci(n):\n"
    for flags in ([], ["--compile"]):
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "layerskip_kernels.cli", "generate", "--prompt", prompt,
                              "--max-new-tokens", str(n_new)] + flags, capture_output=True, text=True, timeout=1200,
                             check=True)
        wall = time.perf_counter() - t0
        stats = res.stderr.strip().splitlines()[-1]
        rows.append(dict(meta, kind="cli", what="layerskip generate " + " ".join(flags), seconds=wall,
                         stats_line=stats))
    return rows


def ours_ar(engine: str) -> str:
    """Our autoregressive engine in the same mode (eager or compiled) as `engine`."""
    return "ours autoregressive (compiled)" if "compiled" in engine else "ours autoregressive (eager)"


def paired_ratios(runs: list[dict], ar_runs: list[dict]) -> dict:
    """Speedup over our autoregressive decoding, repetition by repetition (each
    pair ran back to back, so a slow phase of the machine hits both): the median
    and range of those ratios, for all of decoding and for the steps after the
    prompts alone (prefill excluded)."""
    whole = [r["tokens_per_s"] / a["tokens_per_s"] for r, a in zip(runs, ar_runs)]
    steps = [r["decode_tokens_per_s"] / a["decode_tokens_per_s"] for r, a in zip(runs, ar_runs)]
    return dict(x_ours_ar_same_mode=statistics.median(whole), x_ours_ar_min=min(whole), x_ours_ar_max=max(whole),
                x_ours_ar_after_prefill=statistics.median(steps))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: the embedded model)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-cost", action="store_true", help="skip the compile-cost and CLI subprocess runs")
    ap.add_argument("--cost-only", action="store_true", help="only the compile-cost and CLI subprocess runs")
    ap.add_argument("--note", default="", help="conditions of the run, written on every row")
    ap.add_argument("--out", default=results_path("compile"))
    args = ap.parse_args(argv)
    if args.quick:
        args.num_prompts, args.max_new_tokens, args.reps = 2, 32, 1
    import transformers

    path = args.model or lk.default_model_path()
    model = lk.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    static = SpeculationConfig.from_model(path, model, drafting=True, speculation="static", draft_vocab=0)
    E, k = static.exit_layer, static.num_speculations
    # adaptive drafting at its recorded exit layer and k_max (bench_adaptive.py --record), as the CLI runs it
    adaptive = SpeculationConfig.from_model(path, model, drafting=True, speculation="adaptive", draft_vocab=0)
    E_ad, k_ad = adaptive.exit_layer, adaptive.num_speculations
    prompts = load_prompts(os.path.join(path, "tokenizer.json"), max(args.num_prompts, max(args.batch_sizes)),
                           args.prompt_tokens)
    hf = load_hf(path)
    cc = transformers.CompileConfig(fullgraph=True, mode="default")
    cc._compile_all_devices = True  # transformers compiles only on CUDA unless told
    hf_static = dict(cache_implementation="static", compile_config=cc)
    meta = dict(metadata(), model=os.path.basename(os.path.normpath(path)), dtype="bfloat16", exit_layer=E, k=k,
                max_new_tokens=args.max_new_tokens, prompt_tokens=args.prompt_tokens, note=args.note)
    if args.cost_only:
        return write_costs(args.out, E, k, args.batch_sizes, meta)

    engines = {
        "ours autoregressive (eager)": lambda ps, B: run_ours(model, ps, B, args.max_new_tokens, None, k),
        "ours self-speculative (eager)": lambda ps, B: run_ours(model, ps, B, args.max_new_tokens, E, k),
        "ours autoregressive (compiled)": lambda ps, B: run_ours(model, ps, B, args.max_new_tokens, None, k, True),
        "ours self-speculative (compiled)": lambda ps, B: run_ours(model, ps, B, args.max_new_tokens, E, k, True),
        "ours self-speculative, int8 draft head (eager)": lambda ps, B: run_ours(
            model, ps, B, args.max_new_tokens, E, k, draft_quantization="int8"),
        "ours self-speculative, int8 draft head (compiled)": lambda ps, B: run_ours(
            model, ps, B, args.max_new_tokens, E, k, True, draft_quantization="int8"),
        f"ours self-speculative adaptive E~{E_ad} k<={k_ad} (compiled)": lambda ps, B: run_ours(
            model, ps, B, args.max_new_tokens, E_ad, k_ad, True, speculation="adaptive"),
        "transformers greedy": lambda ps, B: run_hf(hf, ps, B, args.max_new_tokens),
        f"transformers assistant_early_exit={E}": lambda ps, B: run_hf(hf, ps, B, args.max_new_tokens, early_exit=E),
        "transformers static cache + torch.compile": lambda ps, B: run_hf(hf, ps, B, args.max_new_tokens,
                                                                          **hf_static),
    }
    e2e = []
    for B in args.batch_sizes:
        ps = prompts[: max(B, args.num_prompts if B == 1 else B)]
        names = [n for n in engines if B == 1 or "early_exit" not in n]  # transformers: batch 1 only
        for n in names:  # warm-up: compiles (reported below, not timed here) and lazy initialization
            engines[n](ps[:B], B)
        runs = {n: [] for n in names}
        for _ in range(args.reps):
            for n in names:
                runs[n].append(engines[n](ps, B))
        med = {n: sorted(r, key=lambda x: x["tokens_per_s"])[len(r) // 2] for n, r in runs.items()}
        ref = med["ours autoregressive (eager)"]["sequences"]
        for n in names:
            r = med[n]
            row = dict(meta, kind="e2e", batch=B, engine=n, tokens_per_s=r["tokens_per_s"],
                       same_tokens_as_ours_ar=token_agreement(r["sequences"], ref))
            if "adaptive" in n:
                row.update(exit_layer=E_ad, k=k_ad)  # the bandit's centre and k_max
            if "acceptance" in r and "self-speculative" in n:
                row.update(acceptance=r["acceptance"], tokens_per_step=r["tokens_per_step"])
            if n.startswith("ours"):
                row.update(paired_ratios(runs[n], runs[ours_ar(n)]), decode_tokens_per_s=r["decode_tokens_per_s"],
                           prefill_share=r["prefill_s"] / r["time_s"])
            e2e.append(row)
        tps = {n: med[n]["tokens_per_s"] for n in names}
        for row in e2e[-len(names):]:
            row["x_transformers_greedy"] = row["tokens_per_s"] / tps["transformers greedy"]
            if B == 1:
                row["x_assistant_early_exit"] = row["tokens_per_s"] / tps[f"transformers assistant_early_exit={E}"]
    print_table(e2e, ["batch", "engine", "tokens_per_s", "acceptance", "x_ours_ar_same_mode", "x_ours_ar_min",
                      "x_ours_ar_max", "x_ours_ar_after_prefill", "prefill_share", "x_transformers_greedy",
                      "x_assistant_early_exit", "same_tokens_as_ours_ar"])
    write_csv(args.out + "_e2e.csv", e2e)
    plot_bars(args.out + "_e2e.png", e2e, label=lambda r: f"batch {r['batch']}", series="engine", value="tokens_per_s",
              ylabel="tokens/s (all rows)", title=f"{meta['model']} bf16 E={E} k={k}, CPU {meta['cpu'][:30]}")

    bw = copy_bandwidth_gbs()
    wb = weight_bytes(model, E, k)
    steps_rows = []
    context = args.prompt_tokens + args.max_new_tokens // 2
    for B in args.batch_sizes:
        for compiled in (False, True):
            c = step_costs(model, B, context, E, k, compile=compiled)
            for step in ("ar", "draft", "verify", "iteration", "draft_int8", "iteration_int8"):
                stream_s = wb[step] / (bw * 1e9)
                steps_rows.append(dict(meta, kind="step", batch=B, compiled=compiled, step=step, ms=c[step] * 1e3,
                                       weight_mb=wb[step] / 1e6, copy_gbs=bw, x_weight_streaming=c[step] / stream_s,
                                       ratio_to_ar=c[step] / c["ar"]))
    # Analytic limit with each mode's c and v and the measured acceptance.
    for row in e2e:
        if "acceptance" in row and "adaptive" not in row["engine"]:  # the limit of a fixed k
            compiled = "compiled" in row["engine"]
            cv = {r["step"]: r["ratio_to_ar"] for r in steps_rows if r["batch"] == row["batch"]
                  and r["compiled"] == compiled}
            a = acceptance_from_tokens_per_step(row["tokens_per_step"], k)
            int8 = "int8" in row["engine"]
            it = cv["iteration_int8" if int8 else "iteration"]  # k c + v, measured whole
            row.update(c=cv["draft_int8" if int8 else "draft"], v=cv["verify"], iteration_over_ar=it, a=a,
                       analytic_limit=analytic_limit(a, k, 0.0, it))
            # The limit is that of the decode steps: compared with the ratio after the prompts' prefill.
            row["fraction_of_limit"] = row["x_ours_ar_after_prefill"] / row["analytic_limit"]
    write_csv(args.out + "_e2e.csv", e2e)
    print_table(steps_rows, ["batch", "compiled", "step", "ms", "weight_mb", "x_weight_streaming", "ratio_to_ar"])
    write_csv(args.out + "_steps.csv", steps_rows)
    print_table([r for r in e2e if "c" in r], ["batch", "engine", "a", "c", "v", "iteration_over_ar",
                                                 "analytic_limit", "fraction_of_limit"])

    return 0 if args.no_cost else write_costs(args.out, E, k, args.batch_sizes, meta)


def write_costs(out: str, E: int, k: int, batch_sizes, meta) -> int:
    cost = compile_costs(E, k, batch_sizes, meta) + cli_costs(meta)
    print_table(cost, ["kind", "batch_bucket", "state", "what", "seconds", "stats_line"])
    write_csv(out + "_cost.csv", cost)
    return 0


if __name__ == "__main__":
    sys.exit(main())
