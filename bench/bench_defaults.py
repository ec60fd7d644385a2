"""What `layerskip generate` could default to: decoding aids and sampling settings
measured for speed and output quality on held-out prompts (issue 29).

For each setting (greedy with no aids; greedy with repetition_penalty 1.05-1.2
and/or no_repeat_ngram_size 3-6; sampling at temperature 0.6-0.9 and top-p
0.9-0.95, lossless speculative sampling) the model completes N held-out stdlib
prompts (their first `--prompt-tokens` tokens), one at a time (batch 1, as the
CLI), self-speculatively at the recorded default (E, k) and autoregressively
with the same settings, interleaved prompt by prompt (the order alternates) in
one process. Per setting:

- acceptance (accepted / drafted over all prompts), tokens per iteration;
- tokens/s of self-spec and of autoregressive decoding (tokens / decode time,
  summed over prompts, median over --reps), and their ratio;
- output quality of the self-speculative completions: distinct-1/2/3, the
  repeated-4-gram rate and the longest run of one repeated token
  (bench_quality's definitions), the longest loop and the share of
  completions with a loop of 24+ tokens, and the share that parse as
  Python (`ast.parse` of prompt + continuation cut at its last complete line);
- for greedy settings, whether self-spec output equals autoregressive output
  (it must in float32, `--dtype float32`: the aids are exact under
  self-speculation; in bfloat16, what `--dtype auto` (the CLI's default and
  this script's) picks on every vector CPU level, the k+1-row verify pass and
  the one-row step may round a near tie apart).

    python bench/bench_defaults.py [--prompts 16] [--new-tokens 128] [--reps 3] [--model DIR]
    python bench/bench_defaults.py --smoke          # 2 prompts, 32 tokens, 1 rep, 3 settings: does it run
    python bench/bench_defaults.py --quality-only   # all settings, no timing: runs on a busy machine
    python bench/bench_defaults.py --only "greedy penalty=1.0 ngram=12" --only ...   # a shortlist, timed
    python bench/bench_defaults.py --only ... --draft-vocab 2048 --draft-quantization int8   # a cheaper draft head
Writes <results for this CPU>/defaults.csv (--out). Timings need a quiet
machine; the ratio is measured side by side, so it is the figure to compare.
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import metadata, print_table, results_path, write_csv  # noqa: E402

import layerskip_kernels as lk  # noqa: E402
from layerskip_kernels.generation.config import SpeculationConfig  # noqa: E402
from layerskip_kernels.model.dtypes import decode_dtype  # noqa: E402
from bench_e2e import load_prompts  # noqa: E402
from bench_quality import distinct, longest_loop, longest_run, repeated_ngram_rate  # noqa: E402

GREEDY = [(1.0, 0), (1.02, 0), (1.05, 0), (1.1, 0), (1.2, 0), (1.0, 3), (1.0, 4), (1.0, 5), (1.0, 6),
          (1.0, 8), (1.0, 10), (1.0, 12), (1.0, 16), (1.05, 4), (1.1, 4), (1.2, 4), (1.05, 6), (1.1, 6), (1.05, 8)]
SAMPLING = [(t, p) for t in (0.6, 0.7, 0.8, 0.9) for p in (0.9, 0.95)]


def settings(smoke: bool, only: list[str] | None = None) -> list[tuple[str, dict]]:
    greedy = [(f"greedy penalty={r} ngram={n}", dict(repetition_penalty=r, no_repeat_ngram_size=n))
              for r, n in GREEDY]
    sampling = [(f"sample T={t} top_p={p}", dict(do_sample=True, temperature=t, top_p=p)) for t, p in SAMPLING]
    if smoke:
        return [greedy[0], greedy[13], sampling[3]]
    if only:
        return [(name, kw) for name, kw in greedy + sampling if name in only]
    return greedy + sampling


def parses(text: str) -> bool:
    """Does the text, cut at its last complete line, parse as Python?"""
    cut = text[: text.rfind("\n") + 1]
    try:
        ast.parse(cut)
    except (SyntaxError, ValueError):
        return False
    return True


def run_setting(model, prompts, kw, E, k, new_tokens, reps, seed=0, modes=("spec", "ar"), draft=None):
    """Both modes on every prompt, interleaved; returns per-mode decode times per rep and the outputs.
    draft: the self-speculative run's draft head settings (draft_vocab, draft_quantization)."""
    times = {m: [0.0] * reps for m in modes}
    tokens = {m: [0] * reps for m in modes}
    outs, stats = {m: [] for m in modes}, {"drafted": 0, "accepted": 0, "steps": 0, "emitted": 0}
    modes = {m: kws for m, kws in (("spec", dict(exit_layer=E, num_speculations=k, **(draft or {}))),
                                                   ("ar", dict(exit_layer=None)))
             if m in modes}
    for rep in range(reps):
        for i, p in enumerate(prompts):
            order = list(modes) if (rep + i) % 2 == 0 else list(modes)[::-1]
            for mode in order:
                out = lk.generate(model, [p], max_new_tokens=new_tokens, eos_token_id=[], seed=seed + i,
                                  **modes[mode], **kw)
                times[mode][rep] += out.stats["time_s"]
                tokens[mode][rep] += out.stats["new_tokens"]
                if rep == 0:
                    outs[mode].append(out.sequences[0])
                    if mode == "spec":
                        stats["drafted"] += out.stats["drafted"]
                        stats["accepted"] += out.stats["accepted"]
                        stats["steps"] += out.stats["steps"]
                        stats["emitted"] += out.stats["new_tokens"] - 1  # the first token comes from prefill
    tps = {m: statistics.median(n / t for n, t in zip(tokens[m], times[m])) for m in times}
    return tps, outs, stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                    help="auto: the CLI's default for this CPU level (layerskip_kernels.model.dtypes)")
    ap.add_argument("--smoke", action="store_true", help="2 prompts, 32 new tokens, 1 rep, 3 settings")
    ap.add_argument("--exit-layer", type=int, default=None, help="default: the model's recorded default")
    ap.add_argument("--num-speculations", type=int, default=None, help="default: the model's recorded default")
    ap.add_argument("--draft-vocab", type=int, default=0,
                    help="the draft scores only the N most frequent tokens (0: the full vocabulary)")
    ap.add_argument("--draft-quantization", default="none", choices=["none", "int8"],
                    help="the draft's LM head as it is, or int8 (per-row scales)")
    ap.add_argument("--note", default="", help="conditions of the run (quiet machine?), written on every row")
    ap.add_argument("--quality-only", action="store_true",
                    help="self-speculative runs only, one repetition: acceptance and output quality (which do "
                         "not depend on the machine's load); no timing columns")
    ap.add_argument("--only", action="append", default=None, metavar="SETTING",
                    help="run only this setting, named as in the table (repeatable)")
    ap.add_argument("--out", default=None, help="CSV path without .csv (default: this CPU's results directory)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.prompts, args.new_tokens, args.reps = 2, 32, 1
    chosen = settings(args.smoke, args.only)
    if args.only and len(chosen) != len(set(args.only)):
        ap.error(f"--only: unknown setting among {args.only}; known: {[n for n, _ in settings(False)]}")
    args.out = args.out or results_path("defaults")
    from tokenizers import Tokenizer

    path = args.model or lk.default_model_path()
    if args.dtype == "auto":
        args.dtype = str(decode_dtype("cpu")).removeprefix("torch.")
    model = lk.LlamaForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype))
    spec = SpeculationConfig.from_model(path, model, drafting=True, speculation="static",
                                        draft_vocab=args.draft_vocab, draft_quantization=args.draft_quantization,
                                        exit_layer=args.exit_layer, num_speculations=args.num_speculations)
    E, k = spec.exit_layer, spec.num_speculations
    draft = dict(draft_vocab=spec.draft_vocab, draft_quantization=spec.draft_quantization)
    tok_path = os.path.join(path, "tokenizer.json")
    tok = Tokenizer.from_file(tok_path)
    prompts = load_prompts(tok_path, args.prompts, args.prompt_tokens)
    for kw in (dict(exit_layer=E, num_speculations=k, **draft), {}):  # first-call costs outside the measurement
        lk.generate(model, prompts[:1], max_new_tokens=8, **kw)
    meta = metadata()
    rows = []
    mean = lambda xs: sum(xs) / len(xs)
    t_start = time.perf_counter()
    for name, kw in chosen:
        if args.quality_only:
            tps, outs, st = run_setting(model, prompts, kw, E, k, args.new_tokens, 1, modes=("spec",), draft=draft)
            tps["ar"] = outs["ar"] = None
        else:
            tps, outs, st = run_setting(model, prompts, kw, E, k, args.new_tokens, args.reps, draft=draft)
        seqs = outs["spec"]
        rows.append({
            **{c: meta[c] for c in ("cpu", "cpu_level", "torch", "layerskip")}, "note": args.note,
            "model": os.path.basename(os.path.normpath(path)), "dtype": args.dtype, "setting": name,
            "repetition_penalty": kw.get("repetition_penalty", 1.0),
            "no_repeat_ngram_size": kw.get("no_repeat_ngram_size", 0),
            "temperature": kw.get("temperature", ""), "top_p": kw.get("top_p", ""),
            "prompts": len(prompts), "new_tokens": args.new_tokens, "reps": args.reps, "E": E, "k": k,
            "draft_vocab": args.draft_vocab, "draft_quantization": args.draft_quantization,
            "acceptance": st["accepted"] / st["drafted"] if st["drafted"] else None,
            "tokens_per_iteration": st["emitted"] / st["steps"] if st["steps"] else None,
            "selfspec_tokens_per_s": tps["spec"], "ar_tokens_per_s": tps["ar"],
            **({} if args.quality_only else {
                "speedup": tps["spec"] / tps["ar"],
                # the aids' cost: one iteration (draft k + verify) and one autoregressive step, in ms
                "selfspec_ms_per_iteration": 1e3 * st["emitted"] / st["steps"] / tps["spec"],
                "ar_ms_per_token": 1e3 / tps["ar"]}),
            "distinct_1": mean([distinct(s, 1) for s in seqs]),
            "distinct_2": mean([distinct(s, 2) for s in seqs]),
            "distinct_3": mean([distinct(s, 3) for s in seqs]),
            "repeated_4gram_rate": mean([repeated_ngram_rate(p, s) for p, s in zip(prompts, seqs)]),
            "max_token_run": max(longest_run(s) for s in seqs),
            "longest_loop_tokens": max(longest_loop(s) for s in seqs),
            "completions_with_loop": mean([longest_loop(s) >= 24 for s in seqs]),
            "parses": mean([parses(tok.decode(p + s)) for p, s in zip(prompts, seqs)]),
            "selfspec_equals_ar": "" if kw.get("do_sample") or args.quality_only else outs["spec"] == outs["ar"],
        })
        r = rows[-1]
        speed = "" if args.quality_only else f", {r['speedup']:.2f}x"
        print(f"{name}: acceptance {r['acceptance']:.1%}{speed}, distinct-2 {r['distinct_2']:.2f}, "
              f"loops {r['completions_with_loop']:.0%}, parses {r['parses']:.0%} ({time.perf_counter() - t_start:.0f} s)",
              flush=True)
    write_csv(args.out + ".csv", rows)
    print()
    timing = [] if args.quality_only else ["selfspec_tokens_per_s", "ar_tokens_per_s", "speedup",
                                           "selfspec_ms_per_iteration"]
    print_table(rows, ["setting", "acceptance", "tokens_per_iteration", *timing, "distinct_2",
                       "repeated_4gram_rate", "longest_loop_tokens", "completions_with_loop", "parses",
                       "selfspec_equals_ar"])
    print(f"wrote {args.out}.csv")


if __name__ == "__main__":
    main()
