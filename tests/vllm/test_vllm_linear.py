"""Our linear kernels inside vLLM (integrations/vllm_linear.py, load_format
"layerskip") and the int8 draft head of our proposer, on vLLM's CPU backend
with the embedded model, fp32: greedy output equals vLLM's own (its default
load format, no speculation) token for token, one request at a time and
concurrently; every linear layer and the LM head keep one plain weight and
multiply through our op (seen in the profiler); with speculation, drafts are
accepted."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from layerskip_kernels.integrations.vllm import speculative_config
from layerskip_kernels.integrations.vllm_linear import LOAD_FORMAT, kernel_linear

from test_vllm_layerskip import PROMPTS, _close, _greedy, _llm, _runner, _runs, _spec_counts, check_same_runs


@pytest.fixture(scope="module")
def reference(model_dir):
    llm = _llm(model_dir)
    out = _runs(llm)
    _close(llm)
    return out


def _ops_called(llm) -> set:
    """Names of the layerskip ops one short greedy request runs."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _greedy(llm, PROMPTS[:1], [4])
    return {e.key for e in prof.key_averages() if e.key.startswith(("layerskip::", "layerskip_vllm::"))}


def _check_routed(model):
    """Every unquantized linear layer and the LM head multiply by kernel_linear,
    with their plain weight kept (one copy: no oneDNN packing)."""
    from vllm.model_executor.layers.linear import LinearBase

    linears = [m for m in model.modules() if isinstance(m, LinearBase)]
    assert len(linears) == 4 * 12  # qkv, o, gate_up, down per layer
    for m in linears + [model.lm_head]:
        assert m.cpu_linear is kernel_linear, m
        assert m.weight.dim() == 2 and m.weight.numel() > 0 and m.weight.is_contiguous()
        assert type(m.quant_method).__name__.startswith("LayerSkip")


# Compiled: vLLM's default on the CPU (torch.compile of its forward, the token
# count symbolic); our product is then one opaque op in its graph.
@pytest.mark.parametrize("enforce_eager", [True, False])
def test_load_format_runs_our_kernels_with_the_same_output(model_dir, reference, enforce_eager):
    llm = _llm(model_dir, enforce_eager=enforce_eager, load_format=LOAD_FORMAT)
    try:
        _check_routed(_runner(llm).model)
        assert "layerskip::linear_rows" in _ops_called(llm)
        if not enforce_eager:
            assert "layerskip_vllm::linear" in _ops_called(llm)
        got = _runs(llm)
    finally:
        _close(llm)
    check_same_runs(got, reference)


def test_int8_draft_head_with_our_kernels(model_dir, reference):
    from layerskip_kernels.generation.draft_head import quantize_rows_int8

    cfg = speculative_config(exit_layer=3, num_speculative_tokens=3, disable_by_batch_size=8,
                             draft_quantization="int8")
    assert cfg["model"].endswith(".LayerSkipExit3MaxBatch8Int8")
    llm = _llm(model_dir, load_format=LOAD_FORMAT, speculative_config=cfg)
    try:
        runner = _runner(llm)
        drafter = runner.drafter
        _check_routed(runner.model)
        assert drafter.draft_quantization == "int8" and drafter.max_batch == 8
        q, scale = quantize_rows_int8(runner.model.lm_head.weight)
        assert torch.equal(drafter.head_int8[0], q) and torch.equal(drafter.head_int8[1], scale)
        assert {"layerskip::linear_rows", "layerskip::linear_rows_int8"} <= _ops_called(llm)
        got = _runs(llm)
        counts = _spec_counts(llm)
    finally:
        _close(llm)
    check_same_runs(got, reference)
    assert counts["num_drafts"] > 0 and 0 < counts["num_accepted_tokens"] < counts["num_draft_tokens"], counts


def test_int8_draft_head_needs_a_plain_head():
    from layerskip_kernels.integrations.vllm import _int8_head

    class Packed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = torch.nn.Module()
            self.lm_head.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)  # as vLLM leaves a packed one

    with pytest.raises(ValueError, match="draft_quantization='int8' needs the target's LM head weight"):
        _int8_head(Packed())
