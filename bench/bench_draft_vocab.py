"""Would a reduced draft vocabulary (FR-Spec style) pay for this model?

A draft head that scores only the N most frequent training tokens can never
propose any other token, so a greedy draft position is accepted at most when
the full model's own top-1 is one of those N. For N in --sizes this reports,
on the first --tokens positions of the held-out files (teacher-forced, fp32):

- coverage: the fraction of held-out tokens among the top N;
- ceiling: the fraction of positions where the last layer's top-1 is among the
  top N (an upper bound on the per-token acceptance of a reduced draft, relative
  to the full-vocabulary draft: acceptance x ceiling at best);
- agreement: teacher-forced greedy acceptance of a draft from exit E, how
  often its top-1 equals the last layer's, for the full head and for the head
  restricted to the top N (the measure that decides; `ceiling` bounds it);
- head_share: the draft LM head's share of a draft step's weights at exit E
  (embedding-sized head vs E layers), with all V rows and with N rows;
- the same agreement with the int8 draft head (generate(draft_quantization=
  "int8"), per-row scales: half the head's bytes), and how often its top-1
  equals the bf16 (here fp32) head's: `agreement_reduced_int8`,
  `int8_same_top1`.

Token counts and weight counts, not timings: the figures do not depend on
machine load.

    python bench/bench_draft_vocab.py [--model DIR] [--exit-layer E]
Writes bench/results/draft_vocab.csv.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import metadata, print_table, write_csv  # noqa: E402

import layerskip_kernels as lk  # noqa: E402
from layerskip_kernels import reference  # noqa: E402
from layerskip_kernels.generation.config import SpeculationConfig  # noqa: E402
from layerskip_kernels.generation.draft_head import quantize_rows_int8  # noqa: E402
from layerskip_kernels.train import data  # noqa: E402
from layerskip_kernels.train.evaluate import heldout_tokens  # noqa: E402
from layerskip_kernels.train.frequencies import training_token_counts  # noqa: E402


@torch.no_grad()
def exit_and_last_logits(model, E: int, tokens: torch.Tensor, num_tokens: int, seq_len: int):
    """fp32 logits [num_tokens, V] of exit E (with the model's head and with its
    int8 copy) and of the last layer at the first num_tokens positions."""
    exit_l, exit_q, last = [], [], []
    q, scale = quantize_rows_int8(model.lm_head.weight)
    for start in range(0, num_tokens, seq_len):
        x = tokens[start:start + seq_len].long()[None]
        hidden = model.forward_train(x, return_hidden=True)
        exit_l.append(model.exit_head(hidden[E - 1])[0].float())
        exit_q.append(reference.linear_rows_int8(model.model.norm(hidden[E - 1])[0], q, scale).float())
        last.append(model.exit_head(hidden[-1])[0].float())
    return torch.cat(exit_l)[:num_tokens], torch.cat(exit_q)[:num_tokens], torch.cat(last)[:num_tokens]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: the embedded model)")
    p.add_argument("--exit-layer", type=int, default=None, help="draft exit (default: the model's recorded default)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="bench/results/draft_vocab")
    p.add_argument("--note", default="", help="what was measured, written on every row")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.model or lk.default_model_path()
    model = lk.LlamaForCausalLM.from_pretrained(path).eval()
    tok = data.load_tokenizer(path)
    cfg = model.config
    V, L, H = cfg.vocab_size, cfg.num_hidden_layers, cfg.hidden_size
    E = SpeculationConfig.from_model(path, model, drafting=True, speculation="static", draft_vocab=0,
                                     exit_layer=args.exit_layer or None).exit_layer

    freq = training_token_counts(tok)
    order = torch.sort(freq, descending=True, stable=True).indices  # as draft_vocab.frequent_tokens
    held = heldout_tokens(tok)
    n = min(args.tokens, held.numel() - 1)
    targets = held[1:n + 1].long()
    exit_logits, exit_int8, last_logits = exit_and_last_logits(model, E, held, n, cfg.max_position_embeddings)
    top1 = last_logits.argmax(-1)
    layer_params = sum(t.numel() for t in model.model.layers[0].parameters())
    rows = []
    for N in sorted(set(args.sizes + [V])):
        keep = torch.zeros(V, dtype=torch.bool)
        keep[order[:min(N, V)]] = True
        rows.append({
            **metadata(), "note": args.note, "model": os.path.basename(os.path.normpath(path)), "layers": L, "vocab": V,
            "exit_layer": E, "draft_vocab": min(N, V), "tokens": n,
            "coverage": keep[targets].double().mean().item(),
            "ceiling": keep[top1].double().mean().item(),
            "agreement_full": (exit_logits.argmax(-1) == top1).double().mean().item(),
            "agreement_reduced": (exit_logits.masked_fill(~keep, float("-inf")).argmax(-1) == top1)
            .double().mean().item(),
            "agreement_reduced_int8": (exit_int8.masked_fill(~keep, float("-inf")).argmax(-1) == top1)
            .double().mean().item(),
            "int8_same_top1": (exit_int8.masked_fill(~keep, float("-inf")).argmax(-1)
                               == exit_logits.masked_fill(~keep, float("-inf")).argmax(-1)).double().mean().item(),
            "head_share": V * H / (V * H + E * layer_params),
            "head_share_reduced": min(N, V) * H / (min(N, V) * H + E * layer_params),
        })
    write_csv(args.out + ".csv", rows)
    print_table(rows, ["draft_vocab", "coverage", "ceiling", "agreement_full", "agreement_reduced",
                       "agreement_reduced_int8", "int8_same_top1", "head_share", "head_share_reduced"])
    print(f"wrote {args.out}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
