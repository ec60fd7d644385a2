"""Where a vLLM decode step's time goes with each speculative method: the
proposer's `propose` calls against the target's forwards (verification, or
the plain decode step without speculation), at one request.

bench_vllm.py measures throughput; this one splits it. In one process per
setting (vLLM's engine core in-process, VLLM_ENABLE_V1_MULTIPROCESSING=0, so
that the model runner is reachable) it wraps the runner's drafter `propose`
and its `_model_forward` with wall-clock timers, then generates --requests
requests of --new-tokens tokens one after another (greedy, ignore_eos) from
random prompts. Rows: per setting, total time, tokens/s, the number of steps
(target forwards) and `propose` calls, and the milliseconds per call of each;
`other_s` is the rest (sampling, scheduling, the runner's bookkeeping).

    python bench/bench_vllm_steps.py --models llama1b     # from the vLLM venv
    python bench/bench_vllm_steps.py --models embedded --settings none layerskip

Settings run one after another (the split of one setting does not need
another's baseline; the tokens/s ratios of bench_vllm.py's interleaved runs
are the ones to compare settings by).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_vllm import MODELS, default_cache_dir, make_llm, model_settings, speculative_configs  # noqa: E402
from common import metadata, print_table, results_path, write_csv  # noqa: E402

SETTINGS = ("none", "draft_model", "layerskip")


def _timed(acc: dict, key: str, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        acc[key + "_s"] += time.perf_counter() - t0
        acc[key + "_calls"] += 1
        return out
    return wrapper


def worker(job: dict) -> dict:
    """One setting in this process: the split of --requests generations."""
    import numpy as np
    from vllm import SamplingParams

    llm = make_llm(job, 1)
    runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    rng = np.random.default_rng(0)
    prompts = [{"prompt_token_ids": rng.integers(1, job["vocab"], size=job["prompt_tokens"]).tolist()}
               for _ in range(job["requests"])]
    params = SamplingParams(temperature=0.0, max_tokens=job["new_tokens"], ignore_eos=True, detokenize=False)
    llm.generate(prompts[:1], params, use_tqdm=False)  # warm-up: compilation, first allocations
    acc = dict(propose_s=0.0, propose_calls=0, forward_s=0.0, forward_calls=0)
    if job["speculative_config"] is not None:
        runner.drafter.propose = _timed(acc, "propose", runner.drafter.propose)
    runner._model_forward = _timed(acc, "forward", runner._model_forward)
    t0 = time.perf_counter()
    for p in prompts:
        llm.generate([p], params, use_tqdm=False)
    total = time.perf_counter() - t0
    tokens = job["requests"] * job["new_tokens"]
    return dict(total_s=total, tokens_per_s=tokens / total, steps=acc["forward_calls"],
                forward_ms=1e3 * acc["forward_s"] / max(acc["forward_calls"], 1),
                propose_calls=acc["propose_calls"],
                propose_ms=1e3 * acc["propose_s"] / acc["propose_calls"] if acc["propose_calls"] else "",
                tokens_per_step=tokens / max(acc["forward_calls"], 1),
                other_s=total - acc["forward_s"] - acc["propose_s"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=["llama1b"])
    ap.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--exit-layer", type=int, default=None, help="default: each model's recorded exit layer")
    ap.add_argument("--num-speculative-tokens", type=int, default=None, help="k; default: the model's recorded k")
    ap.add_argument("--cache-dir", default=default_cache_dir(), help="where bench_vllm writes the 1B-shaped model")
    ap.add_argument("--out", default=None, help="CSV path without extension (default: results_path('vllm_steps'))")
    ap.add_argument("--note", default="", help="conditions of the run, written on every row")
    ap.add_argument("--worker", nargs=2, metavar=("JOB", "RESULT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        with open(args.worker[0]) as f:
            result = worker(json.load(f))
        with open(args.worker[1], "w") as f:
            json.dump(result, f)
        return 0
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    meta = dict(metadata(), dtype=args.dtype, requests=args.requests, prompt_tokens=args.prompt_tokens,
                new_tokens=args.new_tokens, note=args.note)
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="bench_vllm_steps_") as tmp:
        for model in args.models:
            model_dir, E, k = model_settings(model, args)
            with open(os.path.join(model_dir, "config.json")) as f:
                vocab = json.load(f)["vocab_size"]
            configs = speculative_configs(E, k, (2, 4), os.path.join(tmp, f"draft-{model}"))
            for setting in args.settings:
                job = dict(model_dir=model_dir, setting=setting, exit_layer=E, dtype=args.dtype, vocab=vocab,
                           speculative_config=configs[setting], requests=args.requests,
                           prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                           max_model_len=args.prompt_tokens + args.new_tokens + k + 16)
                spec, out = os.path.join(tmp, "job.json"), os.path.join(tmp, "result.json")
                with open(spec, "w") as f:
                    json.dump(job, f)
                print(f"--- {model}, {setting}, E={E} k={k}", flush=True)
                proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", spec, out], env=env)
                if proc.returncode != 0 or not os.path.isfile(out):
                    failed.append(f"{model}/{setting}")
                    continue
                with open(out) as f:
                    r = json.load(f)
                os.remove(out)
                rows.append(dict(meta, model=model, setting=setting, exit_layer=E if configs[setting] else "",
                                 k=k if configs[setting] else "", **r))
    print_table(rows, ["model", "setting", "tokens_per_s", "steps", "tokens_per_step", "forward_ms", "propose_calls",
                       "propose_ms", "other_s"])
    if rows:
        path = (args.out or results_path("vllm_steps")) + ".csv"
        write_csv(path, rows)
        print(f"wrote {path}")
    if failed:
        print("FAILED: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
