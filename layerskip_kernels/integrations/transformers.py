"""Swap our kernels and self-speculative decoding into transformers' Llama.

Two independent pieces:

* ``register_attention()`` registers ``draft_verify_attention`` as the
  transformers attention implementation ``"layerskip"``, so
  ``LlamaForCausalLM.from_pretrained(..., attn_implementation="layerskip")`` (or
  ``model.set_attn_implementation("layerskip")``) runs transformers' own forward
  pass with our kernel.
* ``apply_layerskip(model, exit_layer, num_speculations)`` gives a transformers
  ``LlamaForCausalLM`` our batched self-speculative ``generate``, running on
  that model's own parameters (no copy). ``remove_layerskip(model)`` (or
  ``handle.remove()``) undoes it.
"""

from __future__ import annotations

import torch

from .. import ops
from ..generation import MAX_SPECULATIONS, generate
from ..model import LlamaConfig, LlamaForCausalLM

__all__ = ["register_attention", "apply_layerskip", "remove_layerskip", "LayerSkipHandle", "ATTN_NAME"]

ATTN_NAME = "layerskip"


def layerskip_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                                scaling: float | None = None, **kwargs):
    """transformers attention function backed by draft_verify_attention.

    query: [B, Hq, S, D], key/value: [B, Hkv, T, D] with RoPE applied and the
    new positions already appended by transformers' cache (they are the last S).
    Returns ([B, S, Hq, D], None) as transformers' sdpa implementation does.
    """
    if attention_mask is not None:
        # Only the causal pattern is supported. register_attention gives
        # "layerskip" transformers' sdpa mask builder, which returns None for a
        # purely causal mask; anything else (padding) is refused, not ignored.
        raise NotImplementedError(
            "attn_implementation='layerskip' supports unpadded causal attention only "
            "(got an explicit attention mask); use apply_layerskip(...).generate for ragged batches"
        )
    if dropout:
        raise NotImplementedError("attn_implementation='layerskip' does not implement attention dropout")
    B, Hq, S, D = query.shape
    T = key.shape[2]
    # k_new/v_new are copies of the last S rows: the op writes them back into the
    # same positions of `key`/`value` (identical values), and an op input must
    # not alias the tensor it mutates.
    # (clone, not contiguous(): the transposed slice may already be contiguous,
    # e.g. at prefill where it is the whole projection output.)
    k_new = key[:, :, T - S:].transpose(1, 2).clone(memory_format=torch.contiguous_format)  # [B, S, Hkv, D]
    v_new = value[:, :, T - S:].transpose(1, 2).clone(memory_format=torch.contiguous_format)
    k_cache = key if key.stride(-1) == 1 else key.contiguous()  # [B, Hkv, T, D]
    v_cache = value if value.stride(-1) == 1 else value.contiguous()
    seqlens = torch.full((B,), T - S, dtype=torch.int32, device=query.device)
    out = ops.draft_verify_attention(query.transpose(1, 2), k_cache, v_cache, k_new, v_new, seqlens,
                                     softmax_scale=scaling)
    return out, None


def register_attention() -> str:
    """Register ``"layerskip"`` with transformers' AttentionInterface (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTN_NAME, layerskip_attention_forward)
    # Without a mask function transformers would pass no mask at all, and a
    # padded batch would be attended to silently.
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)
    return ATTN_NAME


# --------------------------------------------------------------------------- engine swap


def _check_llama(model):
    try:
        from transformers import LlamaForCausalLM as HFLlama
    except ImportError as e:  # pragma: no cover - transformers is a test dependency
        raise ImportError("apply_layerskip needs transformers installed") from e
    if not isinstance(model, HFLlama):
        raise TypeError(f"apply_layerskip expects a transformers LlamaForCausalLM, got {type(model).__name__}")


class LayerSkipHandle:
    """Our engine on a transformers model's weights. Created by apply_layerskip."""

    def __init__(self, hf_model, exit_layer: int, num_speculations: int):
        self.hf_model = hf_model
        self.exit_layer = exit_layer
        self.num_speculations = num_speculations
        cfg = LlamaConfig.from_dict(hf_model.config.to_dict())
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg)
        # assign=True makes our parameters the very tensors of the HF model.
        state = {k: v for k, v in hf_model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
        model.load_state_dict(state, strict=True, assign=True)
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        self.model = model.eval()

    def generate(self, input_ids, attention_mask=None, **kwargs):
        """layerskip_kernels.generate on the shared weights; exit_layer and
        num_speculations default to those given to apply_layerskip."""
        kwargs.setdefault("exit_layer", self.exit_layer)
        kwargs.setdefault("num_speculations", self.num_speculations)
        return generate(self.model, input_ids, attention_mask=attention_mask, **kwargs)

    def remove(self) -> None:
        remove_layerskip(self.hf_model)


def apply_layerskip(model, exit_layer: int, num_speculations: int = 4) -> LayerSkipHandle:
    """Attach batched self-speculative decoding to a transformers LlamaForCausalLM.

    After this, ``model.layerskip.generate(input_ids, max_new_tokens=...)`` runs
    our engine and kernels on the model's own parameters (shared storage; nothing
    is copied), for any batch size. The model itself is otherwise unchanged;
    ``remove_layerskip(model)`` detaches it. Invalid arguments raise before the
    model is touched.
    """
    _check_llama(model)
    L = model.config.num_hidden_layers
    if not (isinstance(exit_layer, int) and 1 <= exit_layer <= L - 1):
        raise ValueError(f"exit_layer must be an int in [1, {L - 1}] for a {L}-layer model, got {exit_layer!r}")
    if not (isinstance(num_speculations, int) and 1 <= num_speculations <= MAX_SPECULATIONS):
        raise ValueError(f"num_speculations must be an int in [1, {MAX_SPECULATIONS}], got {num_speculations!r}")
    if getattr(model, "layerskip", None) is not None:
        raise RuntimeError("apply_layerskip was already applied to this model; call remove_layerskip first")
    handle = LayerSkipHandle(model, exit_layer, num_speculations)
    model.layerskip = handle
    return handle


def remove_layerskip(model) -> None:
    """Undo apply_layerskip: the model no longer carries our engine."""
    if getattr(model, "layerskip", None) is None:
        raise RuntimeError("remove_layerskip: apply_layerskip was not applied to this model")
    del model.layerskip
