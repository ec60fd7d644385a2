"""End-to-end decoding benchmark: ours (autoregressive, self-speculative) against
transformers (greedy generate, and generate(assistant_early_exit=E) at batch 1),
on the same weights, bf16, greedy, held-out Python stdlib code as prompts.

For every self-speculative run it also reports the analytic limit of the speedup,
(1 - a^(k+1)) / ((1 - a) (k c + v)), from the measured per-token acceptance a
(solved from the measured tokens per iteration) and the measured costs c (one
draft step) and v (one verify step, acceptance included) relative to one
autoregressive step, and the fraction of that limit reached.

    python bench/bench_e2e.py                 # default model, batch 1 and 8, plus the E x k sweep
    python bench/bench_e2e.py --quick         # fewer prompts/tokens, small sweep
    python bench/bench_e2e.py --compile --no-hf --batch-sizes 1 --sweep-exit-layers 2 3 4 \
        --sweep-k 2 3 4 6 --out bench/results/e2e_compiled   # the sweep with compiled steps
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, metadata, print_table, results_path, sync, write_csv  # noqa: E402

import layerskip_kernels as lk  # noqa: E402
from layerskip_kernels.cache import StaticKVCache  # noqa: E402
from layerskip_kernels.generation.config import SpeculationConfig  # noqa: E402
from layerskip_kernels.generation.steps import StepFunctions  # noqa: E402


# --------------------------------------------------------------------------- setup


def load_prompts(tokenizer_path: str, n: int, prompt_tokens: int) -> list[list[int]]:
    """The first `prompt_tokens` tokens of the first n held-out stdlib files that are long enough."""
    from tokenizers import Tokenizer

    from layerskip_kernels.train.data import default_corpus, list_corpus_files, read_texts, split_files

    tok = Tokenizer.from_file(tokenizer_path)
    root = default_corpus()
    _, held = split_files(list_corpus_files(root))
    prompts = []
    for text in read_texts(root, sorted(held)):
        ids = tok.encode(text).ids
        if len(ids) >= prompt_tokens + 64:
            prompts.append(ids[:prompt_tokens])
        if len(prompts) == n:
            break
    return prompts


def tiny_random_model(path: str):
    """Fallback when no trained model exists: a random 8-layer model (acceptance is meaningless)."""
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=8,
                                   num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                                   tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


# --------------------------------------------------------------------------- step costs


def step_costs(model, B: int, context: int, E: int, k: int, reps: int = 30, compile: bool = False) -> dict:
    """Median seconds of the engine's greedy steps (eager or compiled), as it runs them:

    - ar: one autoregressive step with its argmax (steps.greedy_token);
    - iteration: one greedy self-speculative iteration, k drafts, verify and
      acceptance (steps.speculate_greedy, one call); iteration / ar is the
      `k c + v` of the analytic limit, measured whole;
    - draft, verify: a draft step (with its argmax) and the early + verify
      pass with acceptance, each as a call of its own (as adaptive drafting
      runs them); c = draft / ar and v = verify / ar. Inside the one graph
      of an iteration they cost less than as separate calls, by a call's fixed
      cost each: that is why iteration < k * draft + verify when compiled;
    - draft_int8, iteration_int8: the same with the int8 draft head.
    """
    from layerskip_kernels.generation.draft_head import DraftHead

    sf = StepFunctions(compile, model.lm_head.weight.device)
    cache = StaticKVCache.for_model(model, B, context + k + 2)
    cache.seqlens.fill_(context)
    model.rope(cache.max_len, cache.k.device)
    model.refresh_decode_weights()  # as the engine does before its steps
    tok = torch.zeros(B, dtype=torch.long)
    hidden = torch.zeros(B, k + 1, model.config.hidden_size, dtype=model.lm_head.weight.dtype)
    drafts = torch.zeros(B, k, dtype=torch.long)
    lens = cache.seqlens
    head = DraftHead(model, quantization="int8")

    def verify():
        hidden[:, k] = sf.early(model, E, tok, cache, lens)
        sf.verify_accept(model, E, hidden, cache, lens, drafts, None)

    fns = dict(
        ar=lambda: sf.greedy_token(model, tok, cache),
        iteration=lambda: sf.speculate_greedy(model, E, k, tok, cache, lens, None),
        draft=lambda: sf.draft(model, E, tok, cache, lens)[1].argmax(-1),
        verify=verify,
        iteration_int8=lambda: sf.speculate_greedy(model, E, k, tok, cache, lens, head),
        draft_int8=lambda: sf.draft(model, E, tok, cache, lens, head)[1].argmax(-1),
    )
    device = model.lm_head.weight.device
    samples = {name: [] for name in fns}
    with torch.inference_mode(), lk.ops.trusted_inputs():
        for fn in fns.values():  # warm-up: first calls compile and allocate
            for _ in range(3):
                fn()
        # Round-robin, one call of each per round: a slow phase of a shared
        # machine hits every step alike, so the ratios hold.
        for _ in range(reps):
            for name, fn in fns.items():
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in samples.items()}


def token_agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Fraction of generated tokens before the first difference of each row pair.

    1.0 means identical output. In bf16, one verify pass over k+1 positions and k+1
    single-position steps round differently (other GEMM blockings, other
    summation orders), so a near-tie of the argmax can flip; in fp32 the tests
    require exact equality.
    """
    same = total = 0
    for x, y in zip(a, b):
        n = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
        same += n
        total += max(len(x), len(y))
    return same / total if total else 1.0


def acceptance_from_tokens_per_step(tau: float, k: int) -> float:
    """Solve (1 - a^(k+1)) / (1 - a) = tau for a in [0, 1] by bisection."""
    lo, hi = 0.0, 1.0
    f = lambda a: sum(a**i for i in range(k + 1))
    tau = min(max(tau, 1.0), k + 1.0)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < tau else (lo, mid)
    return (lo + hi) / 2


def analytic_limit(a: float, k: int, c: float, v: float) -> float:
    """(1 - a^(k+1)) / ((1 - a)(k c + v)); pass c = 0 and v = iteration / ar
    for the cost of a whole iteration measured at once."""
    tokens = sum(a**i for i in range(k + 1))
    return tokens / (k * c + v)


# --------------------------------------------------------------------------- runs


def run_ours(model, prompts, B, n_new, exit_layer, k, compile=False, speculation="static", draft_quantization=None):
    """tokens/s and stats of lk.generate over all prompts in batches of B."""
    seqs, tokens, t, drafted, accepted, emitted_steps, row_steps = [], 0, 0.0, 0, 0, 0.0, 0
    prefill = 0.0
    for i in range(0, len(prompts), B):
        out = lk.generate(model, prompts[i:i + B], max_new_tokens=n_new, exit_layer=exit_layer, num_speculations=k,
                          eos_token_id=[], compile=compile, speculation=speculation,
                          draft_quantization=draft_quantization)
        seqs += out.sequences
        tokens += out.stats["new_tokens"]
        t += out.stats["time_s"]
        prefill += out.stats["prefill_s"]
        drafted += out.stats["drafted"]
        accepted += out.stats["accepted"]
        emitted_steps += (out.stats["tokens_per_step"] or 1.0) * out.stats["steps"]
        row_steps += out.stats["steps"]
    # Decoding after the prompts: the tokens and time of the steps alone (each
    # prompt's prefill, the same work in every engine of ours, makes its first token).
    return dict(sequences=seqs, tokens_per_s=tokens / t, time_s=t, prefill_s=prefill,
                decode_tokens_per_s=(tokens - len(prompts)) / (t - prefill),
                acceptance=accepted / drafted if drafted else float("nan"),
                tokens_per_step=emitted_steps / row_steps if row_steps else float("nan"))


def run_paired(model, prompts, B, n_new, exit_layer, k, reps, compile=False):
    """Autoregressive and self-speculative runs interleaved `reps` times; the
    tokens/s of each is the median, so slow phases of a shared machine hit both."""
    ars, specs = [], []
    for _ in range(reps):
        ars.append(run_ours(model, prompts, B, n_new, None, k, compile))
        specs.append(run_ours(model, prompts, B, n_new, exit_layer, k, compile))
    med = lambda runs: sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]
    return med(ars), med(specs)


def load_hf(path: str):
    """transformers' Llama on the checkpoint, bf16, decoding as ours does in these
    benchmarks: plain greedy. The checkpoint's generation_config.json turns on
    the decoding aids (repetition penalty, no repeated 4-grams) that our CLI
    applies; `lk.generate` applies none unless asked, so they are switched off
    here (with them transformers would pay for the aids, and its early-exit
    assistant would accept less, in a comparison ours does not take part in)."""
    import transformers

    hf = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    hf.generation_config.repetition_penalty = 1.0
    hf.generation_config.no_repeat_ngram_size = 0
    return hf


def run_hf(hf, prompts, B, n_new, early_exit=None, **generate_kw):
    """transformers' generate over all prompts in batches of B; generate_kw go to it."""
    seqs, tokens, t = [], 0, 0.0
    for i in range(0, len(prompts), B):
        batch = prompts[i:i + B]
        T = max(map(len, batch))
        ids = torch.zeros(len(batch), T, dtype=torch.long)
        mask = torch.zeros(len(batch), T, dtype=torch.long)
        for b, p in enumerate(batch):  # left padding, as transformers expects for generation
            ids[b, T - len(p):] = torch.tensor(p)
            mask[b, T - len(p):] = 1
        kw = dict(generate_kw, **(dict(assistant_early_exit=early_exit) if early_exit else {}))
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                              eos_token_id=None, pad_token_id=0, **kw)
        t += time.perf_counter() - t0
        seqs += out[:, T:].tolist()
        tokens += out[:, T:].numel()
    return dict(sequences=seqs, tokens_per_s=tokens / t, time_s=t)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    ap.add_argument("--exit-layer", type=int, default=None, help="default: the model's recorded default")
    ap.add_argument("--num-speculations", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--sweep-exit-layers", type=int, nargs="*", default=None, help="default: 1 .. L-1")
    ap.add_argument("--sweep-k", type=int, nargs="*", default=[1, 2, 3, 4, 6, 8])
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers runs")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions of each ours-vs-ours pair")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true",
                    help="our engines with compiled steps (generate(compile=True)); their compilation is done in "
                         "warm-up runs, outside the timings")
    ap.add_argument("--out", default=results_path("e2e"))
    ap.add_argument("--note", default="", help="conditions of the run, written on every row")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.num_prompts, args.max_new_tokens = 2, 48
        args.sweep_k = [2, 4]

    note = args.note
    path = args.model
    if path is None:
        try:
            path = lk.default_model_path()
        except FileNotFoundError:
            path = tiny_random_model(os.path.join(RESULTS, "_tiny_random_model"))
            note = "; ".join(filter(None, [note, "tiny RANDOM model (no trained default model): acceptance and "
                                                 "speedups are meaningless"]))
            print("NOTE:", note)
    model = lk.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    L = model.num_layers
    # The model's recorded static defaults (the CLI's), or the flags.
    spec = SpeculationConfig.from_model(path, model, drafting=True, speculation="static", draft_vocab=0,
                                        exit_layer=args.exit_layer or None, num_speculations=args.num_speculations or None)
    E, k = spec.exit_layer, spec.num_speculations
    tok_path = os.path.join(path, "tokenizer.json")
    if os.path.exists(tok_path):
        prompts = load_prompts(tok_path, max(args.num_prompts, max(args.batch_sizes)), args.prompt_tokens)
    else:
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(3, model.config.vocab_size, (max(args.num_prompts, max(args.batch_sizes)),
                                                             args.prompt_tokens), generator=g).tolist()
    meta = dict(metadata(), model=os.path.basename(os.path.normpath(path)), dtype="bfloat16", note=note,
                backend=lk.backends.resolve(torch.device("cpu")), max_new_tokens=args.max_new_tokens,
                prompt_tokens=args.prompt_tokens, compiled=args.compile)
    cc = args.compile
    hf = None if args.no_hf else load_hf(path)

    # Warm-up: first calls pay for lazy initialization (kernels, allocator, rope tables).
    for e in (None, E):
        run_ours(model, prompts[:1], 1, 8, e, k, cc)
    if hf is not None:
        run_hf(hf, prompts[:1], 1, 8)

    rows = []
    context = args.prompt_tokens + args.max_new_tokens // 2
    for B in args.batch_sizes:
        ps = prompts[: max(B, args.num_prompts if B == 1 else B)]
        for e in (None, E):  # warm-up at this batch size (with compile: its shape bucket's graphs)
            run_ours(model, ps[:B], B, 8, e, k, cc)
        ar, spec = run_paired(model, ps, B, args.max_new_tokens, E, k, args.reps, cc)
        agree = token_agreement(spec["sequences"], ar["sequences"])
        costs = step_costs(model, B, context, E, k, compile=cc)
        c, v = costs["draft"] / costs["ar"], costs["verify"] / costs["ar"]
        it = costs["iteration"] / costs["ar"]  # k c + v, as the engine runs an iteration
        a = acceptance_from_tokens_per_step(spec["tokens_per_step"], k)
        limit = analytic_limit(a, k, 0.0, it)
        speedup = spec["tokens_per_s"] / ar["tokens_per_s"]
        base = dict(meta, batch=B, exit_layer=E, k=k, num_prompts=len(ps))
        rows.append(dict(base, engine="ours autoregressive", tokens_per_s=ar["tokens_per_s"]))
        rows.append(dict(base, engine="ours self-speculative", tokens_per_s=spec["tokens_per_s"],
                         acceptance=spec["acceptance"], tokens_per_step=spec["tokens_per_step"], a=a, c=c, v=v,
                         iteration_over_ar=it, speedup_vs_ours_ar=speedup, analytic_limit=limit, fraction_of_limit=speedup / limit,
                         same_tokens=agree))
        if hf is not None:
            hg = run_hf(hf, ps, B, args.max_new_tokens)
            rows.append(dict(base, engine="transformers greedy", tokens_per_s=hg["tokens_per_s"],
                             same_tokens=token_agreement(hg["sequences"], ar["sequences"])))
            if B == 1:
                he = run_hf(hf, ps, 1, args.max_new_tokens, early_exit=E)
                rows.append(dict(base, engine=f"transformers assistant_early_exit={E}", tokens_per_s=he["tokens_per_s"],
                                 same_tokens=token_agreement(he["sequences"], hg["sequences"]),
                                 ours_selfspec_over_this=spec["tokens_per_s"] / he["tokens_per_s"]))
    cols = ["batch", "engine", "tokens_per_s", "acceptance", "tokens_per_step", "c", "v", "iteration_over_ar",
            "speedup_vs_ours_ar",
            "analytic_limit", "fraction_of_limit", "ours_selfspec_over_this", "same_tokens"]
    print(f"model {meta['model']}  E={E} k={k}  bf16  {args.max_new_tokens} new tokens  {meta['cpu']}")
    print_table(rows, cols)
    write_csv(args.out + ".csv", rows)
    _plot_engines(rows, args.out + ".png")

    if not args.no_sweep:
        sweep = []
        exits = args.sweep_exit_layers or list(range(1, L))
        ps = prompts[: max(1, args.num_prompts // 2)]
        for e in exits:
            for kk in args.sweep_k:
                run_ours(model, ps[:1], 1, 8, e, kk, cc)  # warm-up (with compile: this (E, k)'s graphs)
                ar, spec = run_paired(model, ps, 1, args.max_new_tokens, e, kk, args.reps, cc)
                costs = step_costs(model, 1, context, e, kk, reps=15, compile=cc)
                c, v = costs["draft"] / costs["ar"], costs["verify"] / costs["ar"]
                it = costs["iteration"] / costs["ar"]
                a = acceptance_from_tokens_per_step(spec["tokens_per_step"], kk)
                limit = analytic_limit(a, kk, 0.0, it)
                speedup = spec["tokens_per_s"] / ar["tokens_per_s"]
                sweep.append(dict(meta, batch=1, exit_layer=e, k=kk, acceptance=spec["acceptance"],
                                  same_tokens=token_agreement(spec["sequences"], ar["sequences"]),
                                  tokens_per_step=spec["tokens_per_step"], a=a, c=c, v=v, iteration_over_ar=it,
                                  speedup=speedup,
                                  analytic_limit=limit, fraction_of_limit=speedup / limit))
        print_table(sweep, ["exit_layer", "k", "acceptance", "tokens_per_step", "c", "v", "speedup", "analytic_limit",
                            "fraction_of_limit", "same_tokens"])
        write_csv(args.out + "_sweep.csv", sweep)
        _plot_heatmap(sweep, exits, args.sweep_k, args.out + "_sweep.png", meta)
    return 0


def _plot_engines(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = [f"B={r['batch']}\n{r['engine']}" for r in rows]
    ax.barh(range(len(rows)), [r["tokens_per_s"] for r in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("tokens/s (all rows)")
    r0 = rows[0]
    mode = ", compiled steps" if r0.get("compiled") else ""
    ax.set_title(f"{r0['model']} bf16, E={r0['exit_layer']} k={r0['k']}{mode}, CPU: {r0['cpu'][:40]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_heatmap(sweep, exits, ks, path, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [[next(r["speedup"] for r in sweep if r["exit_layer"] == e and r["k"] == k) for k in ks] for e in exits]
    fig, ax = plt.subplots(figsize=(1.2 * len(ks) + 2, 0.6 * len(exits) + 1.8))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i in range(len(exits)):
        for j in range(len(ks)):
            ax.text(j, i, f"{grid[i][j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(ks)))
    ax.set_xticklabels(ks)
    ax.set_yticks(range(len(exits)))
    ax.set_yticklabels(exits)
    ax.set_xlabel("num_speculations k")
    ax.set_ylabel("exit layer E")
    mode = "compiled steps" if meta.get("compiled") else "eager steps"
    ax.set_title(f"self-spec / autoregressive speedup, batch 1, bf16, {mode}\n{meta['model']}, {meta['cpu'][:40]}",
                 fontsize=9)
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
