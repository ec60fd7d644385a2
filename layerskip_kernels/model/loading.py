"""Loading of local Hugging Face style Llama directories with safetensors.

The directory is untrusted input: every file read resolves inside it (index
entries and symlinks included), config.json is checked for types and ranges, and
the checkpoint's tensor names, dtypes and shapes are checked against the config
from the safetensors headers alone, before any module is built or any weight is
read.
"""

from __future__ import annotations

import contextlib
import os
import re

import torch
from safetensors import SafetensorError, safe_open

from .config import LlamaConfig, read_json

__all__ = ["load_pretrained", "checkpoint_files", "check_device", "model_file"]

# Weight dtypes a checkpoint may hold (safetensors header names). Integer and
# bool tensors would be cast silently into nonsense; float8 checkpoints carry
# scales this model does not apply.
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
# Model dtypes the kernels run.
_MODEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Extra tensors some exporters write that carry nothing the model needs.
_HARMLESS_EXTRA = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


def _allowed_roots(path: str) -> list[str]:
    """Real directories the files of model directory `path` may live in.

    huggingface_hub's cache is the one layout where they legitimately live
    elsewhere: snapshots/<revision>/<file> are symlinks to ../../blobs/<hash>.
    """
    root = os.path.realpath(path)
    roots = [root]
    parent = os.path.dirname(root)
    if os.path.basename(parent) == "snapshots":
        blobs = os.path.join(os.path.dirname(parent), "blobs")
        if os.path.isdir(blobs):
            roots.append(os.path.realpath(blobs))
    return roots


def model_file(path: str, name: str, what: str | None = None) -> str:
    """The path of file `name` of model directory `path`, refusing any name
    (absolute, with `..`, or a symlink) that resolves outside the directory.

    `what` describes where the name came from, for the error message.
    """
    what = what or name
    if not isinstance(name, str) or not name or "\0" in name:
        raise ValueError(f"{what}: expected a file name inside the model directory, got {name!r}")
    if os.path.isabs(name) or ".." in re.split(r"[\\/]", name):
        raise ValueError(f"{what}: {name!r} is outside the model directory {path}")
    full = os.path.join(path, name)
    real = os.path.realpath(full)
    if not any(os.path.commonpath([r, real]) == r and real != r for r in _allowed_roots(path)):
        raise ValueError(f"{what}: {name!r} resolves to {real}, outside the model directory {path}")
    return full


def checkpoint_files(path: str) -> list[str]:
    """The safetensors files of a checkpoint directory (single or sharded)."""
    index = model_file(path, "model.safetensors.index.json")
    single = model_file(path, "model.safetensors")
    if os.path.isfile(index):
        data = read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(data, dict):
            raise ValueError(f"{index} must hold a JSON object, got {type(data).__name__}")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: weight_map must be a non-empty object of tensor name -> shard file, "
                             f"got {weight_map!r}")
        files = []
        for tensor, shard in sorted(weight_map.items(), key=lambda kv: kv[0]):
            full = model_file(path, shard, f"{index}: weight_map[{tensor!r}]")
            if full not in files:
                files.append(full)
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"shards listed in {index} are missing: {missing}")
        return sorted(files)
    if os.path.isfile(single):
        return [single]
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")


def _expected_shapes(cfg: LlamaConfig):
    """name -> (shape, the config keys it follows) for top-level and per-layer tensors."""
    H, V, I, D = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * D, cfg.num_key_value_heads * D
    hv, hi = "hidden_size, vocab_size", "hidden_size, intermediate_size"
    qk, kk = "num_attention_heads, head_dim, hidden_size", "num_key_value_heads, head_dim, hidden_size"
    top = {
        "model.embed_tokens.weight": ((V, H), hv),
        "model.norm.weight": ((H,), "hidden_size"),
        "lm_head.weight": ((V, H), hv),
    }
    layer = {
        "input_layernorm.weight": ((H,), "hidden_size"),
        "post_attention_layernorm.weight": ((H,), "hidden_size"),
        "self_attn.q_proj.weight": ((q, H), qk),
        "self_attn.k_proj.weight": ((kv, H), kk),
        "self_attn.v_proj.weight": ((kv, H), kk),
        "self_attn.o_proj.weight": ((H, q), qk),
        "mlp.gate_proj.weight": ((I, H), hi),
        "mlp.up_proj.weight": ((I, H), hi),
        "mlp.down_proj.weight": ((H, I), hi),
    }
    return top, layer


def _check_headers(cfg: LlamaConfig, source: str, files: list[str]) -> dict[str, str]:
    """Check every tensor's name, dtype and shape from the headers; name -> file."""
    top, layer = _expected_shapes(cfg)
    L = cfg.num_hidden_layers
    where: dict[str, str] = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    if name in where:
                        raise ValueError(f"tensor {name!r} is in two files: {where[name]} and {file}")
                    where[name] = file
                    if _HARMLESS_EXTRA.fullmatch(name):
                        continue
                    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
                    if m is not None:
                        if int(m.group(1)) >= L or m.group(2) not in layer:
                            raise ValueError(f"unexpected tensor {name!r} in {file} (not a weight of a "
                                             f"{L}-layer Llama; {source}: num_hidden_layers={L})")
                        shape, keys = layer[m.group(2)]
                    elif name in top:
                        shape, keys = top[name]
                    else:
                        raise ValueError(f"unexpected tensor {name!r} in {file} (not a Llama weight)")
                    sl = f.get_slice(name)
                    if sl.get_dtype() not in _FLOAT_DTYPES:
                        raise ValueError(f"tensor {name!r} in {file} has dtype {sl.get_dtype()}; "
                                         f"expected a float dtype ({', '.join(sorted(_FLOAT_DTYPES))})")
                    if tuple(sl.get_shape()) != shape:
                        values = ", ".join(f"{k}={getattr(cfg, k)}" for k in keys.split(", "))
                        raise ValueError(f"tensor {name!r} in {file} has shape {tuple(sl.get_shape())}; "
                                         f"{source} ({values}) implies {shape}")
        except SafetensorError as e:
            raise ValueError(f"{file} is not a valid safetensors file: {e}") from None
    # The first absent layer stops the scan, so a config claiming 10**7 layers
    # costs as much as the layers the checkpoint holds.
    present = {int(n.split(".")[2]) for n in where if n.startswith("model.layers.")}
    for idx in range(L):
        if idx not in present:
            raise ValueError(f"{source}: num_hidden_layers={L}, but the checkpoint holds no tensor of layer {idx}")
    required = [n for n in top if not (n == "lm_head.weight" and cfg.tie_word_embeddings)]
    required += [f"model.layers.{i}.{n}" for i in range(L) for n in layer]
    missing = [n for n in required if n not in where]
    if missing:
        raise ValueError(f"checkpoint is missing tensors: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return where


@contextlib.contextmanager
def _no_init():
    """Modules built on the meta device, their parameters replaced by the
    checkpoint's: their random initialisation is skipped. (On meta tensors
    torch runs it through torch._refs, whose first call imports the compiler
    stack, torch._dynamo: 1.5 s of `layerskip generate`'s start.)"""
    names = ("normal_", "uniform_", "kaiming_uniform_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def check_device(device) -> torch.device:
    """`device` as a torch.device this model can run on (cpu, or an existing cuda device)."""
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"device must be a str or torch.device, got {device!r}")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a device: {str(e).splitlines()[0]}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: there are only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"device must be cpu or cuda, got {str(device)!r}")
    return device


def load_pretrained(cls, path, dtype=torch.float32, device="cpu"):
    if path is None:
        from .. import default_model_path

        path = default_model_path()
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a model directory (str or os.PathLike), got {path!r}")
    path = os.fspath(path)
    if dtype not in _MODEL_DTYPES:
        raise ValueError(f"dtype must be one of {[str(d) for d in _MODEL_DTYPES]}, got {dtype!r}")
    device = check_device(device)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory not found: {path}")
    config = LlamaConfig.from_json(model_file(path, "config.json"))
    source = os.path.join(path, "config.json")
    files = checkpoint_files(path)
    _check_headers(config, source, files)

    with torch.device("meta"), _no_init():
        model = cls(config)
    loaded: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if _HARMLESS_EXTRA.fullmatch(name) or (name == "lm_head.weight" and config.tie_word_embeddings):
                    continue  # recomputed / the tied copy (its shape was checked)
                loaded[name] = f.get_tensor(name).to(device=device, dtype=dtype)
    model.load_state_dict(loaded, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model._rope = None
    return model.eval()
