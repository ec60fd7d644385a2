"""Token frequencies of a model's training split, and the reduced draft
vocabulary built from them: the draft's LM head scores a subset of tokens.

This module is shared by training (which records the frequencies) and
generation (generation.draft_vocab re-exports it with the draft_vocab check),
so that train/ never imports generation/.

Drafting from exit E costs E layers plus the LM head, and the head is a large
share of that when the vocabulary is large (Llama 3: 128k rows). FR-Spec (2025)
drafts over the most frequent tokens only. Here the draft head is the rows
`ids` of the LM head; every other token gets logit -inf, so the draft can only
propose tokens of the subset. Verification always scores the full vocabulary:
greedy output is unchanged (a draft is a proposal; the full model decides) and
sampling stays lossless (the draft distribution q is just another q, zero
outside the subset; see ops.verify_sampling).

    ids = frequent_tokens(model_dir, 1024)          # from token_frequencies.npy
    generate(model, prompts, exit_layer=3, draft_vocab=ids)

The model directory records how often each token occurs in its training split
(`FREQUENCIES_FILE`, written by the trainer, or by
`python -m layerskip_kernels.train.frequencies MODEL_DIR` for older models).
The file is a NumPy `.npy` array, not safetensors: serving engines (vLLM)
load every `*.safetensors` file of a model directory as weights and refuse a
directory with an extra one. Directories written before keep their
`LEGACY_FREQUENCIES_FILE` (a safetensors file holding one tensor `counts`),
which is still read; saving replaces it.
`bench/bench_draft_vocab.py` measures whether a subset size pays. The head that
scores the subset is generation.draft_head.DraftHead (which can also be int8).
"""

from __future__ import annotations

import os

import torch

__all__ = ["FREQUENCIES_FILE", "LEGACY_FREQUENCIES_FILE", "save_frequencies", "load_frequencies",
           "frequent_tokens"]

FREQUENCIES_FILE = "token_frequencies.npy"
LEGACY_FREQUENCIES_FILE = "token_frequencies.safetensors"


def save_frequencies(model_dir: str, counts: torch.Tensor) -> None:
    """Write int64 [V] token counts to MODEL_DIR/token_frequencies.npy (and
    remove a legacy token_frequencies.safetensors, which vLLM would load as weights)."""
    import numpy as np

    if counts.dim() != 1 or counts.dtype != torch.int64 or bool((counts < 0).any()):
        raise ValueError(f"counts must be a 1-D int64 tensor of non-negative counts, got {counts.dtype} "
                         f"{tuple(counts.shape)}")
    path = os.path.join(model_dir, FREQUENCIES_FILE)
    tmp = os.path.join(model_dir, "." + FREQUENCIES_FILE + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, counts.contiguous().cpu().numpy(), allow_pickle=False)
    os.chmod(tmp, 0o644)  # a shipped model must be readable by all, whatever the umask
    os.replace(tmp, path)
    legacy = os.path.join(model_dir, LEGACY_FREQUENCIES_FILE)
    if os.path.lexists(legacy):
        os.remove(legacy)


def _read_npy(path: str) -> torch.Tensor:
    import numpy as np

    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npy array: {e}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype != np.int64:
        raise ValueError(f"{path}: counts must be a 1-D int64 array of non-negative counts, got "
                         f"{getattr(arr, 'dtype', type(arr).__name__)} {tuple(getattr(arr, 'shape', ()))}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _read_legacy_safetensors(path: str) -> torch.Tensor:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "pt") as f:
            if list(f.keys()) != ["counts"]:
                raise ValueError(f"{path} must hold exactly one tensor named 'counts', has {list(f.keys())}")
            return f.get_tensor("counts")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None


def load_frequencies(model_dir: str, vocab_size: int | None = None) -> torch.Tensor:
    """int64 [V] token counts recorded in the model directory (FREQUENCIES_FILE, or
    LEGACY_FREQUENCIES_FILE of older directories); ValueError naming the file
    when it is missing or not one 1-D int64 array of V counts."""
    from .model.loading import model_file

    path = model_file(model_dir, FREQUENCIES_FILE)
    legacy = model_file(model_dir, LEGACY_FREQUENCIES_FILE)
    if os.path.lexists(path):
        counts = _read_npy(path)
    elif os.path.lexists(legacy):
        path = legacy
        counts = _read_legacy_safetensors(path)
    else:
        raise ValueError(f"{model_dir} has no {FREQUENCIES_FILE} (token frequencies of the training split); "
                         f"write it with `python -m layerskip_kernels.train.frequencies {model_dir}`")
    if counts.dim() != 1 or counts.dtype != torch.int64 or bool((counts < 0).any()):
        raise ValueError(f"{path}: 'counts' must be a 1-D int64 tensor of non-negative counts, got {counts.dtype} "
                         f"{tuple(counts.shape)}")
    if vocab_size is not None and counts.numel() != vocab_size:
        raise ValueError(f"{path}: {counts.numel()} counts for a vocabulary of {vocab_size}")
    return counts


def frequent_tokens(model_dir: str, n: int, vocab_size: int | None = None) -> torch.Tensor:
    """The ids of the n most frequent training tokens (ties: lower id first), sorted: int64 [n]."""
    counts = load_frequencies(model_dir, vocab_size)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= counts.numel():
        raise ValueError(f"draft vocabulary size must be an int in [1, {counts.numel()}], got {n!r}")
    order = torch.sort(counts, descending=True, stable=True).indices
    return torch.sort(order[:n]).values
