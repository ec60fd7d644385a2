"""Per-layer early-exit accuracy of trained models on the held-out split.

    python -m layerskip_kernels.train.evaluate \
        --models layerskip_kernels/assets/stdlib-llama runs/baseline-model \
        --labels layerskip baseline --out bench/results/early_exit_eval

For every model and every exit E = 1..L (run layers 0..E-1, then the model's
own final norm and LM head) it measures top-1 next-token accuracy, mean
cross-entropy, and agreement: how often the exit's top-1 token equals the last
layer's (teacher-forced greedy acceptance of a draft from exit E), on the first `--tokens` predicted tokens of the held-out files
(data.split_files), read as consecutive non-overlapping windows of
`--seq-len` + 1 tokens: deterministic, no sampling. Each model is scored with
its own tokenizer. Writes OUT.csv, OUT.png and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys

import torch
import torch.nn.functional as F

from . import data

__all__ = ["heldout_tokens", "evaluate_model", "main"]


def heldout_tokens(tokenizer, corpus: str | None = None) -> torch.Tensor:
    """The held-out files of `corpus` (default: the stdlib), encoded and joined by eos."""
    corpus = corpus or data.default_corpus()
    _, held = data.split_files(data.list_corpus_files(corpus))
    if not held:
        raise ValueError(f"corpus {corpus} has no held-out files")
    return data.encode_files(tokenizer, data.read_texts(corpus, held))


@torch.no_grad()
def evaluate_model(model, tokens: torch.Tensor, num_tokens: int, seq_len: int, batch_size: int = 8) -> list[dict]:
    """[{exit_layer, tokens, accuracy, loss, agreement}] for exit_layer = 1..L, on the first
    `num_tokens` predictions of `tokens` (int [N]) in windows of seq_len."""
    n_windows = -(-num_tokens // seq_len)
    if tokens.numel() < n_windows * seq_len + 1:
        n_windows = (tokens.numel() - 1) // seq_len
        if n_windows < 1:
            raise ValueError(f"only {tokens.numel()} held-out tokens; need more than seq_len={seq_len}")
    L = model.num_layers
    correct = torch.zeros(L, dtype=torch.float64)
    ce = torch.zeros(L, dtype=torch.float64)
    agree = torch.zeros(L, dtype=torch.float64)
    counted = 0
    for w0 in range(0, n_windows, batch_size):
        starts = torch.arange(w0, min(w0 + batch_size, n_windows)) * seq_len
        idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
        batch = tokens[idx].long()  # [b, seq_len + 1]
        inputs, targets = batch[:, :-1], batch[:, 1:]
        # Trim the last windows so exactly num_tokens predictions count.
        valid = (starts[:, None] + torch.arange(seq_len)[None, :]) < num_tokens
        hidden = model.forward_train(inputs, return_hidden=True)
        v = valid.reshape(-1)
        top1 = []
        for l, h in enumerate(hidden):
            logits = model.exit_head(h).float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
            top1.append(logits.argmax(-1).reshape(-1))
            correct[l] += (top1[l] == targets.reshape(-1))[v].double().sum()
            ce[l] += loss[v].double().sum()
        for l in range(L):
            agree[l] += (top1[l] == top1[-1])[v].double().sum()
        counted += int(valid.sum())
    return [{"exit_layer": l + 1, "tokens": counted, "accuracy": (correct[l] / counted).item(),
             "loss": (ce[l] / counted).item(), "agreement": (agree[l] / counted).item()} for l in range(L)]


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for label in dict.fromkeys(r["label"] for r in rows):
        rs = [r for r in rows if r["label"] == label]
        x = [r["exit_layer"] for r in rs]
        ax1.plot(x, [100 * r["accuracy"] for r in rs], marker="o", label=label)
        ax2.plot(x, [r["loss"] for r in rs], marker="o", label=label)
    ax1.set(xlabel="exit after layer E", ylabel="top-1 next-token accuracy (%)", title="early-exit accuracy (held-out)")
    ax2.set(xlabel="exit after layer E", ylabel="cross-entropy (nats)", title="early-exit loss (held-out)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m layerskip_kernels.train.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="model directories")
    p.add_argument("--labels", nargs="+", default=None, help="names for the models (default: directory names)")
    p.add_argument("--out", default="bench/results/early_exit_eval", help="output prefix for .csv and .png")
    p.add_argument("--corpus", default=None, help="corpus root (default: this Python's stdlib)")
    p.add_argument("--tokens", type=int, default=100_000, help="predicted tokens to score (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=None, help="window length (default: the model's max_position_embeddings)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    labels = args.labels or [os.path.basename(os.path.normpath(m)) for m in args.models]
    if len(labels) != len(args.models):
        p.error(f"--labels has {len(labels)} names for {len(args.models)} models")
    if args.tokens < 1:
        p.error("--tokens must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    from ..model import LlamaForCausalLM

    rows = []
    for path, label in zip(args.models, labels):
        model = LlamaForCausalLM.from_pretrained(path)  # fp32: the bf16 weights, exactly
        tok = data.load_tokenizer(path)
        seq_len = args.seq_len or model.config.max_position_embeddings
        toks = heldout_tokens(tok, args.corpus)
        res = evaluate_model(model, toks, args.tokens, seq_len, args.batch_size)
        trained = model.config.extra.get("layerskip", {})
        for r in res:
            rows.append({"label": label, "model": path, "layers": model.num_layers, **r,
                         "train_steps": trained.get("steps", ""), "train_tokens": trained.get("tokens", ""),
                         "seq_len": seq_len, "torch": torch.__version__, "machine": platform.machine()})

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{'model':>14s} " + " ".join(f"{'E=' + str(r['exit_layer']):>13s}" for r in rows if r["label"] == labels[0]))
    for label in labels:
        rs = [r for r in rows if r["label"] == label]
        print(f"{label[:14]:>14s} " + " ".join(f"{100 * r['accuracy']:6.2f}%/{r['loss']:5.2f}" for r in rs))
        print(f"{'agreement':>14s} " + " ".join(f"{100 * r['agreement']:12.2f}%" for r in rs))
    print(f"(top-1 accuracy / cross-entropy on {rows[0]['tokens']} held-out tokens; agreement: top-1 equals the last layer's)")
    if not args.no_plot:
        _plot(rows, args.out + ".png")
        print(f"wrote {args.out}.csv and {args.out}.png")
    else:
        print(f"wrote {args.out}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
