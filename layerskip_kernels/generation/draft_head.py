"""The LM head the draft scores with: the model's own, or a cheaper copy of it.

A draft step runs E layers and the LM head; on a small model the head is a
large share of those bytes (the default model: 2 MB of the 6.6 MB a draft step
reads at E = 3), and with a Llama-3 vocabulary (128k rows) it is most of them.
The draft only proposes, so its head may be an approximation: verification
always scores the full vocabulary with the model's own head, so greedy output
is unchanged and sampling keeps the full model's distribution (a different
draft q is just another proposal; see ops.verify_sampling). Two
approximations, alone or together:

- `ids`: a subset of the vocabulary (generation.draft_vocab): every other token
  gets logit -inf, so the draft proposes from the subset only.
- `quantization="int8"`: the head's rows as int8 with one fp32 scale per row
  (symmetric, absmax / 127), scored by `ops.linear_rows_int8` on a CPU (our
  kernel) and by ATen's GEMM on the int8 rows widened to the activations'
  dtype on a GPU (model.linear.decode_linear_int8): half the bytes of bf16. On the default model's held-out text the int8 head's greedy choice
  agrees with the bf16 head's on 99.2% of positions and with the full model as
  often as the bf16 head does (bench/bench_draft_vocab.py,
  bench/results/draft_vocab.csv).

    generate(model, prompts, exit_layer=3, draft_quantization="int8")

`draft_head_for` makes the copy once per model and setting, and again only
when the LM head's weight changes (the int8 copy of a Llama-3 head takes
seconds to make); an engine built with another setting replaces it.
"""

from __future__ import annotations

import weakref

import torch

from ..model.linear import decode_linear, decode_linear_int8
from .validation import DRAFT_QUANTIZATIONS, check_draft_quantization

__all__ = ["DRAFT_QUANTIZATIONS", "check_draft_quantization", "quantize_rows_int8", "DraftHead", "draft_head_for"]


def quantize_rows_int8(weight: torch.Tensor, block_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 of weight [N, K]: (int8 [N, K], fp32 scale [N]) with
    weight ~ q * scale[:, None]; a row of zeros gets scale 1 (and q = 0).

    Rows are quantized `block_rows` at a time: the fp32 temporaries are one
    block's, not the whole matrix's (a Llama-3 head in one piece would take
    three 1 GB fp32 copies). Each row's result does not depend on the block."""
    if weight.dim() != 2 or not weight.dtype.is_floating_point:
        raise ValueError(f"weight must be a floating-point [N, K] tensor, got {weight.dtype} {tuple(weight.shape)}")
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    weight = weight.detach()
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for r0 in range(0, weight.shape[0], block_rows):
        w = weight[r0:r0 + block_rows].to(torch.float32, copy=True)  # the model's own weight stays as is
        amax = w.abs().amax(dim=1)
        if not bool(torch.isfinite(amax).all()):
            raise ValueError("weight has non-finite values: an int8 copy would be meaningless")
        s = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        q[r0:r0 + block_rows] = w.div_(s[:, None]).round_().clamp_(-127, 127)
        scale[r0:r0 + block_rows] = s
    return q, scale


class DraftHead:
    """The draft's head: rows `ids` of the LM head (None: all) as they are, or
    int8 (`quantization`); copied once, contiguous, on the model's device."""

    def __init__(self, model, ids: torch.Tensor | None = None, quantization: str | None = None):
        quantization = check_draft_quantization(quantization)
        w = model.lm_head.weight.detach()
        self.ids = None if ids is None else ids.to(w.device)
        if self.ids is not None:
            w = w.index_select(0, self.ids)
        self.vocab_size = model.config.vocab_size
        self.quantization = quantization
        if quantization == "int8":
            self.weight, self.scale = quantize_rows_int8(w)
        else:
            self.weight, self.scale = w.contiguous(), None

    def tensors(self) -> tuple:
        """The copies a draft step reads: static inputs of captured CUDA graphs
        (generation.steps.StepFunctions.mark_static)."""
        return tuple(t for t in (self.weight, self.scale, self.ids) if t is not None)

    def signature(self) -> tuple:
        """What a compiled step that scores with this head depends on (generation.steps)."""
        return ("DraftHead", tuple(self.weight.shape), self.weight.dtype, self.quantization,
                None if self.ids is None else tuple(self.ids.shape))

    def logits(self, model, h: torch.Tensor) -> torch.Tensor:
        """Draft logits [..., V] of hidden states h [..., H] (before the final norm)."""
        x = model.model.norm(h)
        sub = decode_linear(x, self.weight) if self.scale is None else decode_linear_int8(x, self.weight, self.scale)
        if self.ids is None:
            return sub
        full = sub.new_full((*sub.shape[:-1], self.vocab_size), float("-inf"))
        return full.index_copy(-1, self.ids, sub)


# model -> (key, DraftHead) of the last head made for it: one copy per model at a
# time (an int8 Llama-3 head is 262 MB), freed with the model.
_LAST_HEAD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _head_key(model, ids: torch.Tensor | None, quantization: str | None) -> tuple:
    w = model.lm_head.weight
    ids_bytes = None if ids is None else ids.detach().cpu().numpy().tobytes()
    return (quantization, ids_bytes, w.data_ptr(), w._version, w.dtype, w.device, tuple(w.shape))


def draft_head_for(model, ids: torch.Tensor | None = None, quantization: str | None = None) -> DraftHead:
    """The model's DraftHead for (ids, quantization): the one made by the last
    call for this model if the setting and the LM head's weight (its storage,
    version counter, dtype, device and shape) are the same, else a new one
    that replaces it."""
    quantization = check_draft_quantization(quantization)
    key = _head_key(model, ids, quantization)
    last = _LAST_HEAD.get(model)
    if last is not None and last[0] == key:
        return last[1]
    _LAST_HEAD.pop(model, None)  # free the old copy before making the new one
    head = DraftHead(model, ids, quantization)
    _LAST_HEAD[model] = (key, head)
    return head
