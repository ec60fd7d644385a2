"""LlamaConfig: the subset of a Hugging Face Llama config.json this model runs."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

__all__ = ["LlamaConfig"]

# Keys we read; anything else in config.json that changes the math is refused
# (see _UNSUPPORTED) and the rest (bookkeeping such as torch_dtype) is ignored.
_UNSUPPORTED = {
    "attention_bias": False,
    "mlp_bias": False,
    "pretraining_tp": 1,
    "hidden_act": "silu",
}


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None
    pad_token_id: int | None = None
    extra: dict = field(default_factory=dict, repr=False)  # LayerSkip defaults etc.

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads="
                    f"{self.num_attention_heads}; set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers must be >= 1, got {self.num_hidden_layers}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in ("llama3", "default"):
                raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: llama3)")

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        model_type = d.get("model_type")
        if model_type != "llama":
            raise ValueError(f"config model_type must be 'llama', got {model_type!r}")
        for key, ok in _UNSUPPORTED.items():
            if key in d and d[key] not in (ok, None):
                raise ValueError(f"config option {key}={d[key]!r} is not supported (only {ok!r})")
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kwargs = {k: v for k, v in d.items() if k in names}
        # transformers 5 may store rope settings under rope_parameters.
        rp = d.get("rope_parameters")
        if isinstance(rp, dict):
            kwargs.setdefault("rope_theta", rp.get("rope_theta", cls.rope_theta))
            if rp.get("rope_type", "default") != "default" and kwargs.get("rope_scaling") is None:
                kwargs["rope_scaling"] = rp
        if kwargs.get("rope_scaling") is not None:
            kind = kwargs["rope_scaling"].get("rope_type", kwargs["rope_scaling"].get("type"))
            if kind == "default":
                kwargs["rope_scaling"] = None
        extra = {k: d[k] for k in ("layerskip",) if k in d}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json(cls, path: str) -> "LlamaConfig":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config.json not found: {path}")
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "extra" and v is not None}
        d.update(self.extra)
        d["model_type"] = "llama"
        d["architectures"] = ["LlamaForCausalLM"]
        d["hidden_act"] = "silu"
        d["attention_bias"] = False
        return d
