"""LlamaConfig: the subset of a Hugging Face Llama config.json this model runs."""

from __future__ import annotations

import json
import math
import os
from dataclasses import InitVar, asdict, dataclass, field

__all__ = ["LlamaConfig"]

# Keys we read; anything else in config.json that changes the math is refused
# (see _UNSUPPORTED) and the rest (bookkeeping such as torch_dtype) is ignored.
_UNSUPPORTED = {
    "attention_bias": False,
    "mlp_bias": False,
    "pretraining_tp": 1,
    "hidden_act": "silu",
}


# Positions and lengths are int32 in the kernels (cache_seqlens).
MAX_POSITIONS = 2**31 - 1
# Keys a llama3 rope_scaling must hold (as transformers requires).
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an int beyond float's range
        return False


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
    # Where the values came from, for error messages (e.g. the config.json path).
    source: InitVar[str] = "LlamaConfig"

    def __post_init__(self, source):
        def bad(key, expected):
            return ValueError(f"{source}: {key} must be {expected}, got {getattr(self, key)!r}")

        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if not (_is_int(getattr(self, key)) and getattr(self, key) >= 1):
                raise bad(key, "an int >= 1")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if not (_is_int(self.num_key_value_heads) and self.num_key_value_heads >= 1):
            raise bad("num_key_value_heads", "an int >= 1")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"{source}: num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"{source}: hidden_size={self.hidden_size} is not a multiple of num_attention_heads="
                    f"{self.num_attention_heads}; set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if not (_is_int(self.head_dim) and self.head_dim >= 2 and self.head_dim % 2 == 0):
            raise bad("head_dim", "an even int >= 2 (RoPE rotates pairs)")
        if not (_is_int(self.max_position_embeddings) and 1 <= self.max_position_embeddings <= MAX_POSITIONS):
            raise bad("max_position_embeddings", f"an int in [1, {MAX_POSITIONS}] (positions are int32)")
        if not (_is_real(self.rms_norm_eps) and self.rms_norm_eps >= 0):
            raise bad("rms_norm_eps", "a finite number >= 0")
        # Below 1 the slowest RoPE rotation is faster than one radian per
        # position and tiny values overflow float32 into NaN tables.
        if not (_is_real(self.rope_theta) and self.rope_theta >= 1):
            raise bad("rope_theta", "a finite number >= 1")
        # JSON may give ints; the math takes floats (an int past int64 would overflow in torch).
        self.rms_norm_eps, self.rope_theta = float(self.rms_norm_eps), float(self.rope_theta)
        if not isinstance(self.tie_word_embeddings, bool):
            raise bad("tie_word_embeddings", "true or false (a JSON boolean)")
        for key in ("bos_token_id", "pad_token_id"):
            if not (getattr(self, key) is None or _is_int(getattr(self, key))):
                raise bad(key, "an int or null")
        eos = self.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        if eos is not None and not all(_is_int(t) and 0 <= t < self.vocab_size for t in ids):
            raise bad("eos_token_id", f"null, a token id or a list of token ids in [0, vocab_size={self.vocab_size})")
        self._check_rope_scaling(source)
        if not isinstance(self.extra.get("layerskip", {}), dict):
            raise ValueError(f"{source}: layerskip must be an object, got {self.extra['layerskip']!r}")

    def _check_rope_scaling(self, source):
        rs = self.rope_scaling
        if rs is None:
            return
        if not isinstance(rs, dict):
            raise ValueError(f"{source}: rope_scaling must be an object or null, got {rs!r}")
        kind = rs.get("rope_type", rs.get("type"))
        if kind is None:
            raise ValueError(f"{source}: rope_scaling has no rope_type (supported: llama3)")
        if kind not in ("llama3", "default"):
            raise ValueError(f"{source}: rope_scaling type {kind!r} is not supported (supported: llama3)")
        if kind == "default":
            return
        for key in _LLAMA3_KEYS:
            if key not in rs:
                raise ValueError(f"{source}: rope_scaling of type llama3 needs {key!r} (it has {sorted(rs)})")
        v = rs["original_max_position_embeddings"]
        if not (_is_int(v) and v >= 1):
            raise ValueError(f"{source}: rope_scaling.original_max_position_embeddings must be an int >= 1, got {v!r}")
        for key in ("factor", "low_freq_factor", "high_freq_factor"):
            if not (_is_real(rs[key]) and rs[key] > 0):
                raise ValueError(f"{source}: rope_scaling.{key} must be a finite number > 0, got {rs[key]!r}")
        # The blend between the two bands divides by their difference.
        if not rs["high_freq_factor"] > rs["low_freq_factor"]:
            raise ValueError(
                f"{source}: rope_scaling.high_freq_factor={rs['high_freq_factor']!r} must be greater than "
                f"low_freq_factor={rs['low_freq_factor']!r}"
            )

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "LlamaConfig":
        if not isinstance(d, dict):
            raise ValueError(f"{source} must hold a JSON object, got {type(d).__name__}")
        model_type = d.get("model_type")
        if model_type != "llama":
            raise ValueError(f"{source}: model_type must be 'llama', got {model_type!r}")
        for key, ok in _UNSUPPORTED.items():
            if key in d and d[key] not in (ok, None):
                raise ValueError(f"{source}: config option {key}={d[key]!r} is not supported (only {ok!r})")
        names = {f for f in cls.__dataclass_fields__ if f not in ("extra", "source")}
        kwargs = {k: v for k, v in d.items() if k in names}
        # transformers 5 may store rope settings under rope_parameters.
        rp = d.get("rope_parameters")
        if rp is not None and not isinstance(rp, dict):
            raise ValueError(f"{source}: rope_parameters must be an object, got {rp!r}")
        if isinstance(rp, dict):
            kwargs.setdefault("rope_theta", rp.get("rope_theta", cls.rope_theta))
            if rp.get("rope_type", "default") != "default" and kwargs.get("rope_scaling") is None:
                kwargs["rope_scaling"] = rp
        rs = kwargs.get("rope_scaling")
        if isinstance(rs, dict) and rs.get("rope_type", rs.get("type")) == "default":
            kwargs["rope_scaling"] = None
        extra = {k: d[k] for k in ("layerskip",) if k in d}
        return cls(**kwargs, extra=extra, source=source)

    @classmethod
    def from_json(cls, path: str) -> "LlamaConfig":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config.json not found: {path}")
        return cls.from_dict(read_json(path), source=path)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "extra" and v is not None}
        d.update(self.extra)
        d["model_type"] = "llama"
        d["architectures"] = ["LlamaForCausalLM"]
        d["hidden_act"] = "silu"
        d["attention_bias"] = False
        return d


def read_json(path: str):
    """Parsed JSON of `path`; any unreadable content is a ValueError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise ValueError(f"{path} is empty")

    try:
        return json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
