"""Greedy output quality on held-out prompts, with and without the decoding aids.

For each setting (none, repetition_penalty, no_repeat_ngram_size, both) the
default model completes N held-out stdlib prompts (their first 64 tokens)
greedily with 128 new tokens, self-speculatively at the recorded default
(E, k), and reports:

- distinct-n (n = 1, 2, 3): unique n-grams / n-grams of the generated tokens,
  per completion, averaged (higher = less repetitive);
- repeated-4-gram rate: the fraction of generated 4-grams that already
  occurred earlier in the same prompt + completion (0 = no loops);
- longest run of one repeated token;
- whether self-speculative output equals autoregressive output (the aids are
  exact, so it must in fp32; this runs in fp32 for that reason).

Token counts, not timings: the figures do not depend on machine load.

    python bench/bench_quality.py [--prompts 32] [--model DIR]
Writes bench/results/quality.csv.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, metadata, print_table, write_csv  # noqa: E402

import layerskip_kernels as lk  # noqa: E402
from layerskip_kernels.generation.config import SpeculationConfig  # noqa: E402
from bench_e2e import load_prompts  # noqa: E402

SETTINGS = {
    "none": dict(),
    "repetition_penalty=1.2": dict(repetition_penalty=1.2),
    "no_repeat_ngram_size=4": dict(no_repeat_ngram_size=4),
    "both": dict(repetition_penalty=1.2, no_repeat_ngram_size=4),
}


def distinct(tokens: list[int], n: int) -> float:
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repeated_ngram_rate(prompt: list[int], gen: list[int], n: int = 4) -> float:
    seq = prompt + gen
    seen = {tuple(seq[i:i + n]) for i in range(len(prompt) - n + 1)}
    rep = total = 0
    for t in range(len(prompt), len(seq)):
        if t - n + 1 < 0:
            continue
        g = tuple(seq[t - n + 1:t + 1])
        rep += g in seen
        total += 1
        seen.add(g)
    return rep / total if total else 0.0


def longest_loop(gen: list[int], max_period: int = 32) -> int:
    """The longest stretch of tokens that only repeats what came p tokens
    earlier (some period p <= max_period): 0 for loop-free text, about
    (r - 1) * p for a phrase of p tokens said r times in a row."""
    best = 0
    for p in range(1, max_period + 1):
        run = 0
        for i in range(p, len(gen)):
            run = run + 1 if gen[i] == gen[i - p] else 0
            best = max(best, run)
    return best


def longest_run(gen: list[int]) -> int:
    best = run = 0
    for i, t in enumerate(gen):
        run = run + 1 if i and t == gen[i - 1] else 1
        best = max(best, run)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--out", default=os.path.join(RESULTS, "quality"))
    args = ap.parse_args(argv)
    path = args.model or lk.default_model_path()
    model = lk.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    spec = SpeculationConfig.from_model(path, model, drafting=True, speculation="static", draft_vocab=0)
    E, k = spec.exit_layer, spec.num_speculations
    prompts = load_prompts(os.path.join(path, "tokenizer.json"), args.prompts, 64)
    meta = metadata()
    rows = []
    for name, kw in SETTINGS.items():
        spec = lk.generate(model, prompts, max_new_tokens=args.new_tokens, exit_layer=E, num_speculations=k, **kw)
        ar = lk.generate(model, prompts, max_new_tokens=args.new_tokens, **kw)
        seqs = spec.sequences
        mean = lambda xs: sum(xs) / len(xs)
        rows.append({
            **{k_: meta[k_] for k_ in ("cpu", "torch", "layerskip")},
            "model": os.path.basename(os.path.normpath(path)), "setting": name, "prompts": len(prompts),
            "new_tokens": args.new_tokens, "E": E, "k": k,
            "distinct_1": mean([distinct(s, 1) for s in seqs]),
            "distinct_2": mean([distinct(s, 2) for s in seqs]),
            "distinct_3": mean([distinct(s, 3) for s in seqs]),
            "repeated_4gram_rate": mean([repeated_ngram_rate(p, s) for p, s in zip(prompts, seqs)]),
            "max_token_run": max(longest_run(s) for s in seqs),
            "acceptance": spec.stats["acceptance_rate"],
            "selfspec_equals_ar": spec.sequences == ar.sequences,
        })
        print(rows[-1]["setting"], {c: rows[-1][c] for c in ("distinct_2", "repeated_4gram_rate", "acceptance",
                                                              "selfspec_equals_ar")}, flush=True)
    write_csv(args.out + ".csv", rows)
    print()
    print_table(rows, ["setting", "distinct_1", "distinct_2", "distinct_3", "repeated_4gram_rate", "max_token_run",
                       "acceptance", "selfspec_equals_ar"])
    print(f"wrote {args.out}.csv")


if __name__ == "__main__":
    main()
