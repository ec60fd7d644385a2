"""layerskip-kernels: kernels for batched LayerSkip self-speculative decoding.

    import layerskip_kernels as lk
    model = lk.LlamaForCausalLM.from_pretrained()          # the embedded default model
    out = lk.generate(model, [[1, 2, 3]], exit_layer=2, num_speculations=4)

Heavy optional dependencies (triton, transformers, matplotlib) are imported
lazily, so `import layerskip_kernels` stays fast and works without them.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

from . import ops
from . import backends
from .backends import available_backends, get_backend, set_backend, use_backend
from .cache import ExitQueryCache, StaticKVCache
from .model import LlamaConfig, LlamaForCausalLM

__all__ = [
    "__version__",
    "ops",
    "available_backends",
    "get_backend",
    "set_backend",
    "use_backend",
    "StaticKVCache",
    "ExitQueryCache",
    "LlamaConfig",
    "LlamaForCausalLM",
    "generate",
    "Engine",
    "default_model_path",
]

_ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
DEFAULT_MODEL_NAME = "stdlib-llama"


def default_model_path() -> str:
    """Directory of the embedded default model (trained by layerskip train on the
    Python standard library). Raises FileNotFoundError if this install has none."""
    path = os.path.join(_ASSETS, DEFAULT_MODEL_NAME)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"the embedded default model is not in this install ({path}); pass a model directory"
        )
    return path


# Imported on first use (generation pulls in the decoding stack); the names
# resolve to the real objects, so help() and inspect.signature show their
# arguments and docstrings.
_LAZY = {"generate": ("generation.api", "generate"), "Engine": ("generation.engine", "Engine")}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
