"""Export the early-exit draft of a LayerSkip model as a standalone checkpoint.

    layerskip export-draft --exit-layer 3 MODEL_DIR OUT_DIR
    export_draft(model_dir, exit_layer=3, out_dir=out)

The draft of self-speculation is the model's first E layers followed by its own
final norm and LM head. Written as a Hugging Face Llama directory with
`num_hidden_layers = E` (the embedding, layers 0..E-1, the final norm and the
head, tied or not, in the checkpoint's own dtype; the tokenizer files copied),
it is an ordinary small Llama whose logits are the full model's early-exit
logits at layer E. Engines that take a separate draft model can use it as is,
vLLM's `draft_model` method for one (README, "Serving with vLLM"). Such an
engine holds a second copy of the first E layers and computes them twice; the
shared-weight route is `integrations.vllm`.

The directory is read with the checks of `loading` (names, dtypes and shapes
against config.json before any weight is read).
"""

from __future__ import annotations

import json
import os
import re
import shutil

from safetensors import safe_open

from .config import LlamaConfig, read_json
from .loading import _HARMLESS_EXTRA, _check_headers, checkpoint_files, model_file

__all__ = ["export_draft"]

# Files copied beside the weights when the model directory has them.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "generation_config.json")


def _keep(name: str, exit_layer: int, tied: bool) -> bool:
    if _HARMLESS_EXTRA.fullmatch(name) or (tied and name == "lm_head.weight"):
        return False
    m = re.fullmatch(r"model\.layers\.(\d+)\..+", name)
    return m is None or int(m.group(1)) < exit_layer


def export_draft(model_dir: str, exit_layer: int, out_dir: str) -> str:
    """Write layers [0, exit_layer) + final norm + LM head of `model_dir` to `out_dir`
    (a new or empty directory) as a Llama checkpoint of exit_layer layers; returns out_dir."""
    from safetensors.torch import save_file

    model_dir, out_dir = os.fspath(model_dir), os.fspath(out_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    source = model_file(model_dir, "config.json")
    config = LlamaConfig.from_json(source)
    L = config.num_hidden_layers
    if isinstance(exit_layer, bool) or not isinstance(exit_layer, int) or not 1 <= exit_layer < L:
        raise ValueError(f"exit_layer must be an int in [1, {L - 1}] (the model has {L} layers), got {exit_layer!r}")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ValueError(f"out_dir {out_dir} exists and is not an empty directory")
    files = checkpoint_files(model_dir)
    _check_headers(config, source, files)

    tensors = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if _keep(name, exit_layer, config.tie_word_embeddings):
                    tensors[name] = f.get_tensor(name).contiguous()
    raw = read_json(source)
    raw["num_hidden_layers"] = exit_layer
    if isinstance(raw.get("layer_types"), list):
        raw["layer_types"] = raw["layer_types"][:exit_layer]
    # The training recipe and speculation defaults describe the full model, not the draft.
    raw.pop("layerskip", None)
    raw["layerskip_draft"] = {"exit_layer": exit_layer, "source_num_hidden_layers": L}

    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, ".model.safetensors.tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # safetensors writes 0600; a checkpoint is shared with a server
    os.replace(tmp, os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(raw, f, indent=2, sort_keys=True)
        f.write("\n")
    for name in _TOKENIZER_FILES:
        src = model_file(model_dir, name)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(out_dir, name))
    return out_dir
