"""Record how often each token occurs in a model's training split.

    python -m layerskip_kernels.train.frequencies MODEL_DIR [--corpus DIR]

Writes MODEL_DIR/token_frequencies.npy (int64 [V], the model's own
tokenizer over the training files of the corpus, the hash split of
`data.split_files`; held-out files are not counted), which
`generation.draft_vocab.frequent_tokens` reads to pick a reduced draft
vocabulary. The trainer writes the same file with every model it saves; this
is for models trained before it did.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..vocab import FREQUENCIES_FILE, save_frequencies
from . import data

__all__ = ["training_token_counts", "main"]


def training_token_counts(tokenizer, corpus: str | None = None) -> torch.Tensor:
    """int64 [V]: occurrences of each token in the training split of `corpus` (default: the stdlib)."""
    corpus = corpus or data.default_corpus()
    train_files, _ = data.split_files(data.list_corpus_files(corpus))
    ids = data.encode_files(tokenizer, data.read_texts(corpus, sorted(train_files)))
    return torch.bincount(ids.long(), minlength=tokenizer.get_vocab_size())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m layerskip_kernels.train.frequencies", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model directory (its tokenizer.json is used)")
    p.add_argument("--corpus", default=None, help="corpus root (default: this Python's stdlib)")
    args = p.parse_args(argv)
    counts = training_token_counts(data.load_tokenizer(args.model), args.corpus)
    save_frequencies(args.model, counts)
    print(f"wrote {args.model}/{FREQUENCIES_FILE}: {int(counts.sum()):,} tokens, {int((counts > 0).sum())} distinct")
    return 0


if __name__ == "__main__":
    sys.exit(main())
