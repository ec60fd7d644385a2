"""A minimal Llama whose forward pass is split for self-speculative decoding.

Parameter names follow transformers' LlamaForCausalLM, so a Hugging Face
checkpoint loads as is. The engine drives three pieces:

  embed(ids)                                  -> hidden [B, S, H]
  forward_layers(h, start, end, cache, rope)  -> hidden after layers [start, end)
  exit_head(h)                                -> logits (final norm + lm_head)

Draft = layers [0, E) + exit_head; verify = layers [E, L) + exit_head. Attention
is the draft_verify_attention op (RoPE, cache write and attention in one op),
called through model/attention.py's decode_attention. `forward_train` is the differentiable full-sequence path
(SDPA) used for training.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cache import StaticKVCache
from .attention import decode_attention
from .config import LlamaConfig
from .linear import ConcatWeight, decode_linear

__all__ = ["LlamaForCausalLM", "rope_inv_freq", "rope_tables"]


# --------------------------------------------------------------------------- RoPE


def rope_inv_freq(config: LlamaConfig) -> torch.Tensor:
    """Inverse frequencies [D/2] fp32, with llama3 rope scaling when configured."""
    D = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    rs = config.rope_scaling
    if rs is None:
        return inv_freq
    # llama3: long wavelengths are slowed by `factor`, short ones kept, and the
    # band between low_freq_factor and high_freq_factor is interpolated.
    factor = rs["factor"]
    low, high = rs["low_freq_factor"], rs["high_freq_factor"]  # LlamaConfig checked they are there
    old_len = rs["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    low_wavelen, high_wavelen = old_len / low, old_len / high
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


def rope_tables(config: LlamaConfig, max_len: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: fp32 [max_len, D/2] for positions 0 .. max_len-1."""
    inv_freq = rope_inv_freq(config).to(device)
    freqs = torch.outer(torch.arange(max_len, device=device, dtype=torch.float32), inv_freq)
    return freqs.cos(), freqs.sin()


def _rope_full(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, H, T, D]; cos/sin: [T, D/2]; rotate-half, in x's dtype (training path).
    half = x.shape[-1] // 2
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


# --------------------------------------------------------------------------- modules


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32, cast back before the weight (as transformers does).
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        H = cfg.hidden_size
        self.q_proj = nn.Linear(H, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(H, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(H, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, H, bias=False)
        self.qkv = ConcatWeight(self.q_proj, self.k_proj, self.v_proj)  # decode path: one product

    def forward(self, x, k_cache, v_cache, seqlens, cos, sin):
        B, S, _ = x.shape
        q, k, v = decode_linear(x, self.qkv()).split(self.qkv.sizes, dim=-1)
        q = q.view(B, S, self.n_heads, self.head_dim)  # q: [B, S, Hq, D]
        k = k.view(B, S, self.n_kv, self.head_dim)  # k: [B, S, Hkv, D]
        v = v.view(B, S, self.n_kv, self.head_dim)
        out = decode_attention(q, k_cache, v_cache, k, v, seqlens, cos, sin)
        return decode_linear(out.reshape(B, S, self.n_heads * self.head_dim), self.o_proj.weight)

    def forward_train(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # [B, Hq, T, D]
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = _rope_full(q, cos, sin), _rope_full(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_heads)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up = ConcatWeight(self.gate_proj, self.up_proj)  # decode path: one product

    def forward(self, x):
        """Decode path (Block.forward)."""
        gate, up = decode_linear(x, self.gate_up()).split(self.gate_up.sizes, dim=-1)
        return decode_linear(F.silu(gate) * up, self.down_proj.weight)

    def forward_train(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, k_cache, v_cache, seqlens, cos, sin):
        h = x + self.self_attn(self.input_layernorm(x), k_cache, v_cache, seqlens, cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))

    def forward_train(self, x, cos, sin):
        h = x + self.self_attn.forward_train(self.input_layernorm(x), cos, sin)
        return h + self.mlp.forward_train(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    def rope(self, max_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 cos/sin tables covering max_len positions, cached and grown on demand.

        Sized by what the caller needs (the cache length), never by the
        config's max_position_embeddings, which may be far larger than any call.
        """
        device = torch.device(device)
        if self._rope is None or self._rope[0].shape[0] < max_len or self._rope[0].device != device:
            self._rope = rope_tables(self.config, max_len, device)
        return self._rope

    # --- the pieces the engine drives ---------------------------------------------

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)  # [B, S, H]

    def forward_layers(self, h: torch.Tensor, start: int, end: int, cache: StaticKVCache,
                       seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """Run layers [start, end) on h [B, S, H] at positions seqlens[b] + s.

        Writes those layers' K/V into `cache`; does not advance cache.seqlens
        (the engine decides how many positions are kept). `seqlens` defaults to
        cache.seqlens.
        """
        seqlens = cache.seqlens if seqlens is None else seqlens
        cos, sin = self.rope(cache.max_len, h.device)
        for idx in range(start, end):
            k_cache, v_cache = cache.layer(idx)
            h = self.model.layers[idx](h, k_cache, v_cache, seqlens, cos, sin)
        return h

    def exit_head(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head on any layer's output: [B, S, H] -> [B, S, V]."""
        return decode_linear(self.model.norm(h), self.lm_head.weight)

    def refresh_decode_weights(self) -> None:
        """Rebuild the concatenated q/k/v and gate/up weights of the decode path
        where a weight changed (model/linear.py). Eager calls do it themselves;
        run it before compiled decode steps (the engine does, once per generate)."""
        for layer in self.model.layers:
            layer.self_attn.qkv.refresh()
            layer.mlp.gate_up.refresh()

    # --- whole-sequence entry points -----------------------------------------------

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full-sequence logits [B, T, V] through the same op path, with a
        temporary cache (no cache of the caller is touched)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        cache = StaticKVCache.for_model(self, B, T)
        return self.exit_head(self.forward_layers(self.embed(input_ids), 0, self.num_layers, cache))

    def forward_train(self, input_ids: torch.Tensor, return_hidden: bool = False,
                      layer_keep: torch.Tensor | None = None):
        """Differentiable full-sequence pass (SDPA, no cache).

        layer_keep: optional bool [L, B]; layer l is skipped (identity) for the
        rows where it is False (layer dropout, per sample).
        Returns the final hidden states [B, T, H], or with return_hidden the list
        of every layer's output (L tensors [B, T, H]).
        """
        B, T = input_ids.shape
        cos, sin = self.rope(T, input_ids.device)
        cos, sin = cos[:T], sin[:T]
        h = self.embed(input_ids)
        hidden = []
        for idx, layer in enumerate(self.model.layers):
            if layer_keep is None:
                h = layer.forward_train(h, cos, sin)
            else:
                keep = layer_keep[idx]
                if bool(keep.all()):
                    h = layer.forward_train(h, cos, sin)
                elif bool(keep.any()):
                    rows = keep.nonzero()[:, 0]
                    # Only kept rows pay for the layer: dropping saves compute.
                    h = h.index_put((rows,), layer.forward_train(h[rows], cos, sin))
            hidden.append(h)
        return hidden if return_hidden else h

    # --- loading --------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | None = None, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> "LlamaForCausalLM":
        """Load a local Hugging Face Llama directory (None: the embedded default model)."""
        from .loading import load_pretrained

        return load_pretrained(cls, path, dtype=dtype, device=device)
