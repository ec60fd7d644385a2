"""Loading of local Hugging Face style Llama directories with safetensors."""

from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open

from .config import LlamaConfig

__all__ = ["load_pretrained", "checkpoint_files"]


def checkpoint_files(path: str) -> list[str]:
    """The safetensors files of a checkpoint directory (single or sharded)."""
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no weight_map")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise FileNotFoundError(f"shards listed in {index} are missing: {missing}")
        return [os.path.join(path, f) for f in files]
    if os.path.isfile(single):
        return [single]
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")


def load_pretrained(cls, path, dtype=torch.float32, device="cpu"):
    if path is None:
        from .. import default_model_path

        path = default_model_path()
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory not found: {path}")
    config = LlamaConfig.from_json(os.path.join(path, "config.json"))
    files = checkpoint_files(path)

    with torch.device("meta"):
        model = cls(config)
    expected = dict(model.state_dict())
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)  # shares embed_tokens.weight
    loaded: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if name not in expected:
                    if name.endswith("rotary_emb.inv_freq") or name == "lm_head.weight":
                        continue  # recomputed / tied copy: harmless extras
                    raise ValueError(f"unexpected tensor {name!r} in {file} (not a Llama weight)")
                t = f.get_tensor(name)
                if tuple(t.shape) != tuple(expected[name].shape):
                    raise ValueError(
                        f"tensor {name!r} in {file} has shape {tuple(t.shape)}, "
                        f"config.json implies {tuple(expected[name].shape)}"
                    )
                loaded[name] = t.to(device=device, dtype=dtype)
    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise ValueError(f"checkpoint {path} is missing tensors: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict(loaded, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model._rope = None
    return model.eval()
