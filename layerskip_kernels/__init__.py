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


def generate(*args, **kwargs):
    """Autoregressive or self-speculative generation; see layerskip_kernels.generation."""
    from .generation import generate as _generate

    return _generate(*args, **kwargs)


def __getattr__(name):
    # The continuous-batching engine, imported on first use like generate.
    if name == "Engine":
        from .generation.scheduler import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
