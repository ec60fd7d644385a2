"""Our few-row matrix products inside vLLM on the CPU: `load_format="layerskip"`.

    from vllm import LLM
    from layerskip_kernels.integrations.vllm_linear import LOAD_FORMAT

    llm = LLM(model=MODEL_DIR, load_format=LOAD_FORMAT, ...)   # vllm serve ... --load-format layerskip

vLLM 0.32's CPU backend packs every unquantized linear weight for oneDNN once
loaded and frees the plain one (`dispatch_cpu_unquantized_gemm`; the LM head
keeps both); a decode step then multiplies 1 to k+1 rows per request by each
packed matrix. On the Llama-3.2-1B shape (Zen 4, 2 cores;
bench/bench_vllm_products.py) our product is 1.34x oneDNN's at one row, but
0.81-0.86x at 5-8 rows: this pays at one or two concurrent requests, not at
eight (README, "Session 16").

The `layerskip` load format is vLLM's default loader (same files, same
weight loading) registered under another name by our `vllm.general_plugins`
entry point; after the weights are loaded and before vLLM processes them it
gives every unquantized linear layer and the LM head a method that keeps the
plain weight (one copy: oneDNN's packed copy is never made) and multiplies by
`model.linear.decode_linear`, our engine's own rule: few rows (a decode or
verify step) go to our kernel at the running CPU level, more rows (prompts)
to ATen's GEMM at avx512_bf16 (at the avx2 and avx512 levels every product
runs our kernel: ATen's bf16 GEMM there is the slower at any row count).
Tensor parallel shards are plain weights as well: each rank multiplies its
own. Other platforms keep vLLM's methods (the loader changes
nothing there), as do quantized layers and layers vLLM routes elsewhere.

With LayerSkip speculation (`integrations.vllm`) this is also how the draft
runs our kernels: it calls the target's own modules.
"""

from __future__ import annotations

import copy

import torch

from ..model.linear import decode_linear

__all__ = ["LOAD_FORMAT", "register_loader", "kernel_linear"]

LOAD_FORMAT = "layerskip"


def kernel_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """vLLM's `cpu_linear(x, weight, bias)` by our rule: x [..., K] @ weight[N, K]^T (+ bias).

    vLLM compiles its model forward with the token count symbolic; our rule
    branches on the row count, which would specialize the graph. Traced, the
    product is one opaque op (`layerskip_vllm::linear`) that applies the rule
    when it runs; eager, the rule is applied directly (no op dispatch)."""
    out = torch.ops.layerskip_vllm.linear(x, weight) if torch.compiler.is_compiling() else decode_linear(x, weight)
    return out if bias is None else out + bias


@torch.library.custom_op("layerskip_vllm::linear", mutates_args=())
def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return decode_linear(x, weight)


@_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


class _PlainWeight:
    """Mixed into vLLM's unquantized linear and embedding methods: on the CPU the
    weight stays plain and contiguous (no oneDNN copy) and the product
    (vLLM's `layer.cpu_linear`) is kernel_linear."""

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        if not layer.weight.is_contiguous():
            layer.weight.data = layer.weight.data.contiguous()
        layer.cpu_linear = kernel_linear


_registered = False


def register_loader() -> None:
    """Registers the `layerskip` load format with vLLM (idempotent); the plugin
    entry point calls it in every vLLM process."""
    global _registered
    if _registered:
        return
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
    from vllm.model_executor.model_loader import register_model_loader
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
    from vllm.platforms import current_platform

    ours = {base: type(f"LayerSkip{base.__name__}", (_PlainWeight, base), {"__module__": __name__})
            for base in (UnquantizedLinearMethod, UnquantizedEmbeddingMethod)}

    @register_model_loader(LOAD_FORMAT)
    class LayerSkipModelLoader(DefaultModelLoader):
        """vLLM's default loader (the format `auto` for reading files) that,
        on the CPU, gives every unquantized linear layer and the LM head our
        method between weight loading and vLLM's processing of the weights."""

        def __init__(self, load_config):
            cfg = copy.copy(load_config)  # files are read as the default format reads them
            cfg.load_format = "auto"
            super().__init__(cfg)

        def load_weights(self, model, model_config) -> None:
            super().load_weights(model, model_config)
            if not current_platform.is_cpu():
                return
            for module in model.modules():
                method = ours.get(type(getattr(module, "quant_method", None)))
                if method is not None and module.weight.dim() == 2:
                    module.quant_method = method()

    _registered = True
