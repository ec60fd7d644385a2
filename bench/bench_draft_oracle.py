"""How much any rule for when to stop drafting could gain at a fixed exit layer:
token counts on the default model, priced at measured step costs.

Greedy self-speculation from exit E accepts a drafted token exactly when the
exit head's top-1 equals the full model's (the autoregressive token) on the
accepted prefix. So one teacher-forced pass over a prompt and its greedy
autoregressive continuation gives, for every generated position, whether a draft
there would be accepted (m[t]) and the exit head's top probability (p[t]). From
them the iterations of a drafting rule are replayed:

- static k: draft k, accept the run of matches (at most k), emit it + 1;
- confidence stop (generation/policy.py's rule): draft until a draft's top
  probability is below the threshold or k_max drafts; the drafts after a
  mismatch use the teacher-forced p (the real ones see a wrong prefix: an
  approximation, checked against bench_adaptive.py's measured tokens per
  iteration);
- oracle: draft exactly the run of matches (capped at k_max) and emit it + 1,
  the most any stop rule can emit per draft step at this exit.

Each iteration costs d c + v autoregressive steps (d drafts, c and v of the
exit from bench/results/e2e_sweep.csv, measured on a quiet machine; an
iteration with no draft costs one autoregressive step), so a rule's modelled
speedup is tokens / cost. The oracle over the best static k bounds what
adaptive drafting at this exit can gain over static drafting on this model.

    python bench/bench_draft_oracle.py [--exit-layer 3] [--out bench/results/draft_oracle]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_e2e import load_prompts  # noqa: E402
from common import RESULTS, metadata, print_table, write_csv  # noqa: E402

import layerskip_kernels as lk  # noqa: E402


def matches_and_confidence(model, prompt: list[int], generated: list[int], exit_layer: int):
    """bool [n], float [n]: whether exit E's top-1 at each generated position is the
    autoregressive token, and its top probability (teacher-forced on prompt + output)."""
    seq = torch.tensor([prompt + generated])
    with torch.no_grad():
        hidden = model.forward_train(seq[:, :-1], return_hidden=True)
        probs = model.exit_head(hidden[exit_layer - 1]).float().softmax(-1)[0]
    P = len(prompt)
    top_p, top = probs[P - 1:].max(-1)
    return (top == torch.tensor(generated)).tolist(), top_p.tolist()


def replay(m: list[bool], p: list[float], c: float, v: float, rule: str, k: int, threshold: float = 0.0):
    """(tokens, draft steps, iterations, cost in autoregressive steps) of the iterations
    after prefill, which emits the first token (not counted)."""
    n, t = len(m), 1
    tokens = drafts = iters = 0
    cost = 0.0
    while t < n:
        run = 0
        while t + run < n and m[t + run] and run < k:
            run += 1
        if rule == "static":
            d = k
        elif rule == "oracle":
            d = run
        else:  # confidence stop: the draft whose probability is below the threshold is the last
            d = 0
            while d < k and t + d < n:
                d += 1
                if p[t + d - 1] < threshold:
                    break
        accepted = min(run, d)
        emitted = min(accepted + 1, n - t)
        tokens, drafts, iters = tokens + emitted, drafts + d, iters + 1
        cost += d * c + v if d else 1.0
        t += emitted
    return tokens, drafts, iters, cost


def sweep_costs(path: str, exit_layer: int) -> tuple[float, float]:
    """Median c and v of the exit's batch-1 cells in bench_e2e.py's sweep CSV."""
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r["batch"] == "1" and int(r["exit_layer"]) == exit_layer]
    if not rows:
        raise ValueError(f"{path} has no batch-1 row for exit layer {exit_layer}")
    return statistics.median(float(r["c"]) for r in rows), statistics.median(float(r["v"]) for r in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: the embedded model)")
    ap.add_argument("--exit-layer", type=int, default=3)
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--costs", default=os.path.join(RESULTS, "e2e_sweep.csv"),
                    help="bench_e2e.py's sweep CSV, for c and v of the exit layer")
    ap.add_argument("--out", default=os.path.join(RESULTS, "draft_oracle"))
    args = ap.parse_args(argv)

    path = args.model or lk.default_model_path()
    model = lk.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    L = model.config.num_hidden_layers
    if not 1 <= args.exit_layer < L:
        ap.error(f"--exit-layer must be in 1..{L - 1} for this {L}-layer model, got {args.exit_layer}")
    c, v = sweep_costs(args.costs, args.exit_layer)
    prompts = load_prompts(os.path.join(path, "tokenizer.json"), args.num_prompts, args.prompt_tokens)
    seqs = []
    for prompt in prompts:
        out = lk.generate(model, [prompt], max_new_tokens=args.max_new_tokens, exit_layer=None)
        seqs.append(matches_and_confidence(model, prompt, out.sequences[0], args.exit_layer))

    rules = [("static", k, 0.0) for k in (1, 2, 3, 4, 6, 8, 12)]
    rules += [("confidence", k, th) for k in (8, 12, 15) for th in (0.3, 0.5, 0.7)]
    rules += [("oracle", 15, 0.0)]
    meta = dict(metadata(), model=os.path.basename(os.path.normpath(path)), dtype="bfloat16",
                exit_layer=args.exit_layer, c=c, v=v, costs_from=os.path.relpath(args.costs),
                num_prompts=len(prompts), max_new_tokens=args.max_new_tokens,
                note="token counts priced at step costs measured earlier on a quiet machine; not a timing")
    rows = []
    for rule, k, th in rules:
        tot = [replay(m, p, c, v, rule, k, th) for m, p in seqs]
        tokens, drafts, iters, cost = (sum(x[i] for x in tot) for i in range(4))
        name = {"static": f"static k={k}", "oracle": f"oracle (stop at the first mismatch), k<={k}",
                "confidence": f"confidence stop {th}, k<={k}"}[rule]
        rows.append(dict(meta, rule=name, tokens_per_iteration=tokens / iters, drafts_per_iteration=drafts / iters,
                         modelled_speedup=tokens / cost))
    best_static = max(r["modelled_speedup"] for r in rows if r["rule"].startswith("static"))
    for r in rows:
        r["x_best_static"] = r["modelled_speedup"] / best_static
    print(f"exit {args.exit_layer}: c = {c:.3f}, v = {v:.3f} ({os.path.relpath(args.costs)})")
    print_table(rows, ["rule", "tokens_per_iteration", "drafts_per_iteration", "modelled_speedup", "x_best_static"])
    write_csv(args.out + ".csv", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
