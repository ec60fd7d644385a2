"""Corpus, train/held-out split and tokenizer for training on Python sources.

The default corpus is the running interpreter's standard library
(`sysconfig.get_paths()["stdlib"]`), every `*.py` file outside `site-packages`
(which depends on what the machine has installed). A file is held out when a
hash of its path relative to the corpus root falls in the first
`HELDOUT_PERCENT` of 100 buckets, so the split is the same on every machine and
does not move when files are added elsewhere in the tree.

The tokenizer is a byte-level BPE trained with the `tokenizers` library on the
training split only. Its single special token, `<|endoftext|>` (id 0), separates
documents and is the model's bos and eos.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig

import numpy as np
import torch

__all__ = [
    "EOS_TOKEN",
    "HELDOUT_PERCENT",
    "default_corpus",
    "list_corpus_files",
    "is_heldout",
    "split_files",
    "read_texts",
    "train_tokenizer",
    "load_tokenizer",
    "add_bos",
    "encode_files",
    "TokenStream",
]

EOS_TOKEN = "<|endoftext|>"
HELDOUT_PERCENT = 5


def default_corpus() -> str:
    """The interpreter's standard library directory."""
    return sysconfig.get_paths()["stdlib"]


def list_corpus_files(root: str) -> list[str]:
    """Sorted paths (relative to root, '/'-separated) of the *.py files under root,
    skipping any `site-packages` directory. Raises a clear error when there are none."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"corpus directory not found: {root}")
    rels = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place keeps os.walk out of site-packages entirely.
        dirnames[:] = sorted(d for d in dirnames if d != "site-packages" and not d.startswith("."))
        for name in filenames:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                rels.append(rel.replace(os.sep, "/"))
    if not rels:
        raise ValueError(f"corpus directory {root} contains no .py files (site-packages is excluded)")
    return sorted(rels)


def is_heldout(relpath: str, percent: int = HELDOUT_PERCENT) -> bool:
    """Deterministic split: sha256 of the relative path, taken mod 100."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < percent


def split_files(rels: list[str], percent: int = HELDOUT_PERCENT) -> tuple[list[str], list[str]]:
    """(train, heldout) relative paths, both sorted."""
    train = sorted(r for r in rels if not is_heldout(r, percent))
    held = sorted(r for r in rels if is_heldout(r, percent))
    return train, held


def read_texts(root: str, rels: list[str]) -> list[str]:
    """File contents; undecodable bytes (a few stdlib tests use latin-1) become U+FFFD."""
    texts = []
    for rel in rels:
        with open(os.path.join(root, rel), "rb") as f:
            texts.append(f.read().decode("utf-8", errors="replace"))
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE over `texts`; id 0 is EOS_TOKEN."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + 1:
        raise ValueError(f"vocab_size must be >= 257 for byte-level BPE (256 bytes + eos), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: a file's first token must not depend on a fake space.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    add_bos(tok)
    return tok


def add_bos(tok) -> None:
    """Make `tok.encode(text)` start with EOS_TOKEN, as Llama tokenizers start
    with their BOS: in the training stream every file follows an EOS_TOKEN, so
    a prompt encoded this way reads as the start of a file (a top-level `def`
    at column 0), not as text cut from the middle of one. Training data is
    encoded with add_special_tokens=False and is unaffected."""
    from tokenizers import processors

    eos = tok.token_to_id(EOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOS_TOKEN} $A", pair=f"{EOS_TOKEN} $A $B:1", special_tokens=[(EOS_TOKEN, eos)])


def load_tokenizer(path: str):
    """A tokenizers.Tokenizer from a tokenizer.json file or a model directory."""
    from tokenizers import Tokenizer

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer.json not found: {path}")
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception for any bad file
        raise ValueError(f"tokenizer {path} is not a valid tokenizer.json: {e}") from None
    if tok.token_to_id(EOS_TOKEN) is None:
        raise ValueError(f"tokenizer {path} has no {EOS_TOKEN} token")
    return tok


def encode_files(tok, texts: list[str]) -> torch.Tensor:
    """Concatenate documents as [doc0, eos, doc1, eos, ...]: int32 [N]."""
    eos = tok.token_to_id(EOS_TOKEN)
    encs = tok.encode_batch(texts, add_special_tokens=False)
    total = sum(len(e.ids) + 1 for e in encs)
    out = np.empty(total, dtype=np.int32)
    pos = 0
    for e in encs:
        n = len(e.ids)
        out[pos : pos + n] = e.ids
        out[pos + n] = eos
        pos += n + 1
    return torch.from_numpy(out)


class TokenStream:
    """Random windows of seq_len + 1 tokens from a 1-D token tensor."""

    def __init__(self, tokens: torch.Tensor, seq_len: int):
        if tokens.numel() < seq_len + 2:
            raise ValueError(
                f"corpus has {tokens.numel()} tokens, fewer than seq_len + 2 = {seq_len + 2}; "
                "use a larger corpus or a smaller --seq-len"
            )
        self.tokens = tokens
        self.seq_len = seq_len

    def batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """int64 [B, seq_len + 1]: inputs are [:, :-1], targets [:, 1:]."""
        high = self.tokens.numel() - self.seq_len - 1
        starts = torch.randint(0, high + 1, (batch_size,), generator=generator)
        idx = starts[:, None] + torch.arange(self.seq_len + 1)[None, :]
        return self.tokens[idx].long()
