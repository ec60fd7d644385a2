"""float32 or bfloat16 weights: which decodes faster end to end on this CPU (issue 27)?

On AVX2 fp32 FMAs are native and bf16 weights must be widened in registers,
but bf16 halves the bytes every decode step streams; on avx512_bf16 the
kernels multiply bf16 directly. This runs the embedded model (or --model) in
both dtypes in one process, autoregressive and self-speculative at the
recorded default (E, k), at each batch size, interleaved (the order of the
four engines rotates every repetition), and reports tokens/s of each, the
median over repetitions, and the ratios fp32 / bf16 side by side.

    python bench/bench_dtype.py                    # batch 1 and 8, 8 prompts, 96 new tokens, 3 reps
    LAYERSKIP_CPU_CAPABILITY=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \
        python bench/bench_dtype.py                # an AVX2 machine, emulated on an AVX-512 one

Writes <results for this CPU>/dtype.csv (`_<level>` when a level is forced).
`--dtype auto` (the CLI's default) picks from the table in
`layerskip_kernels.model.dtypes` for the level that runs; that table records
what this script measured, per level.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_e2e import load_prompts, run_ours  # noqa: E402
from common import metadata, print_table, results_path, write_csv  # noqa: E402

import layerskip_kernels as lk  # noqa: E402
from layerskip_kernels.generation.config import SpeculationConfig  # noqa: E402

DTYPES = ("bfloat16", "float32")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="compiled steps (compilation in warm-up, untimed)")
    ap.add_argument("--note", default="", help="conditions of the run (quiet machine?), written on every row")
    ap.add_argument("--out", default=None, help="CSV path without .csv (default: this CPU's results directory)")
    args = ap.parse_args(argv)
    out = args.out or results_path("dtype_compiled" if args.compile else "dtype")

    path = args.model or lk.default_model_path()
    models = {d: lk.LlamaForCausalLM.from_pretrained(path, dtype=getattr(torch, d)) for d in DTYPES}
    spec = SpeculationConfig.from_model(path, models["bfloat16"], drafting=True, speculation="static", draft_vocab=0)
    E, k = spec.exit_layer, spec.num_speculations
    prompts = load_prompts(os.path.join(path, "tokenizer.json"), max(args.num_prompts, max(args.batch_sizes)),
                           args.prompt_tokens)[: args.num_prompts]
    engines = [(d, e) for d in DTYPES for e in (None, E)]  # (dtype, exit layer: None = autoregressive)
    meta = dict(metadata(), model=os.path.basename(os.path.normpath(path)), E=E, k=k, compiled=args.compile,
                max_new_tokens=args.max_new_tokens, prompt_tokens=args.prompt_tokens, note=args.note)
    for d, e in engines:  # first calls (and compilation) outside the measurement
        run_ours(models[d], prompts[:1], 1, 8, e, k, args.compile)

    rows = []
    for B in args.batch_sizes:
        runs = {eng: [] for eng in engines}
        for rep in range(args.reps):
            shift = rep % len(engines)
            for d, e in engines[shift:] + engines[:shift]:
                runs[(d, e)].append(run_ours(models[d], prompts, B, args.max_new_tokens, e, k, args.compile))
        tps = {eng: statistics.median(r["tokens_per_s"] for r in rs) for eng, rs in runs.items()}
        for d in DTYPES:
            ar, ss = tps[(d, None)], tps[(d, E)]
            rows.append({**meta, "batch": B, "dtype": d, "ar_tokens_per_s": ar, "selfspec_tokens_per_s": ss,
                         "selfspec_over_ar": ss / ar, "acceptance": runs[(d, E)][0]["acceptance"],
                         "ar_over_bf16": ar / tps[("bfloat16", None)],
                         "selfspec_over_bf16": ss / tps[("bfloat16", E)],
                         "same_tokens_as_bf16": runs[(d, E)][0]["sequences"] == runs[("bfloat16", E)][0]["sequences"]})
    write_csv(out + ".csv", rows)
    print_table(rows, ["batch", "dtype", "cpu_level", "ar_tokens_per_s", "selfspec_tokens_per_s",
                       "selfspec_over_ar", "acceptance", "ar_over_bf16", "selfspec_over_bf16"])
    print(f"wrote {out}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
