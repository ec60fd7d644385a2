"""A reduced draft vocabulary (FR-Spec style): the draft head scores the most
frequent training tokens only; verification scores all of them, so output is
unchanged. The frequencies live in layerskip_kernels.vocab (shared with
training); the argument's check in generation.validation.

    ids = frequent_tokens(model_dir, 1024)          # from token_frequencies.npy
    generate(model, prompts, exit_layer=3, draft_vocab=ids)
"""

from ..vocab import FREQUENCIES_FILE, frequent_tokens, load_frequencies, save_frequencies
from .validation import check_draft_vocab

__all__ = ["FREQUENCIES_FILE", "save_frequencies", "load_frequencies", "frequent_tokens", "check_draft_vocab"]
