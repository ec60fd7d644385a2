"""Tensor parallelism 2 on vLLM's CPU backend with our LayerSkip proposer
(integrations/vllm.py), embedded model, fp32: greedy output equals vLLM at TP 1
without speculation, token for token, for several concurrent requests of
different lengths, and drafts are proposed and accepted.

Under TP every worker process runs the proposer on the same token lists, with
its shard of the target's modules: per-rank heads in qkv_proj and o_proj
(o_proj, down_proj and the embedding all-reduce across the ranks), and the LM
head's logits all-gathered (vLLM's LogitsProcessor on CPU), so every rank
drafts the same tokens and issues the same collectives in the same order.
The draft's own K/V cache holds the rank's kv heads only. The same with our
linear kernels (load_format "layerskip": each rank multiplies its own plain
shard) and the int8 draft head (each rank's int8 copy of its rows of the
head, the logits all-gathered by the proposer).

Two worker processes (`distributed_executor_backend="mp"`, gloo) need one
OpenMP core each on vLLM's CPU backend (VLLM_CPU_OMP_THREADS_BIND="0|1"):
on a 2-core machine the test takes a minute or two."""

import pytest
from test_vllm_layerskip import MAX_TOKENS, PROMPTS, _close, _greedy, _llm, _spec_counts

from layerskip_kernels.integrations.vllm import speculative_config
from layerskip_kernels.integrations.vllm_linear import LOAD_FORMAT

# Shorter budgets than test_vllm_layerskip's: TP 2 on two cores is slow, and a
# dozen verify steps per request already run both accept and reject paths.
TOKENS = [min(m, 16) for m in MAX_TOKENS]


def _alone_and_together(llm):
    return _greedy(llm, PROMPTS[1:2], TOKENS[1:2]) + _greedy(llm, PROMPTS, TOKENS)


@pytest.mark.parametrize("draft_quantization,load_format", [(None, "auto"), ("int8", LOAD_FORMAT)])
def test_tp2_layerskip_greedy_equals_tp1_without_speculation(model_dir, monkeypatch, draft_quantization, load_format):
    llm = _llm(model_dir)
    try:
        want = _alone_and_together(llm)
    finally:
        _close(llm)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")

    def drafter_state(worker):  # runs in each rank's process (a local function: cloudpickle sends it by value)
        d = worker.model_runner.drafter
        rows = None if d.head_int8 is None else d.head_int8[0].shape[0]
        return type(d).__name__, d.model.model.layers[0].self_attn.num_kv_heads, tuple(d.k_cache[0].shape), rows

    llm = _llm(model_dir, tensor_parallel_size=2, distributed_executor_backend="mp", load_format=load_format,
               # every step drafts, the concurrent ones too (the CPU's default bound is 2 requests)
               speculative_config=speculative_config(exit_layer=3, num_speculative_tokens=3, disable_by_batch_size=8,
                                                     draft_quantization=draft_quantization))
    try:
        got = _alone_and_together(llm)
        counts = _spec_counts(llm)
        ranks = llm.collective_rpc(drafter_state)
    finally:
        # The rank processes stop now, not at interpreter exit after the other tests.
        llm.llm_engine.engine_core.shutdown()
        _close(llm)
    # Both ranks drafted, each with its shard: 1 of the embedded model's 2 kv
    # heads, half of its 4096 head rows in the int8 copy.
    name = "LayerSkipExit3MaxBatch8" + ("Int8" if draft_quantization else "")
    assert len(ranks) == 2 and all(r == (name, 1, r[2], 2048 if draft_quantization else None) and r[2][1] == 1
                                   for r in ranks), ranks
    assert [len(t) for t in got] == TOKENS[1:2] + TOKENS
    for i, (g, w) in enumerate(zip(got, want)):
        assert list(g) == list(w), f"request {i} (0: alone, then the concurrent batch)"
    assert counts["num_drafts"] > 0 and 0 < counts["num_accepted_tokens"] < counts["num_draft_tokens"], counts


def test_pipeline_parallelism_is_refused():
    """A pipeline rank holds only its own layers; the draft needs layers
    0..E-1 and the head on every rank, so the proposer refuses PP > 1 (a clear
    error at construction, before any worker loads weights)."""
    from types import SimpleNamespace

    import pytest

    from layerskip_kernels.integrations.vllm import LayerSkipProposer

    cls = type("LayerSkipExit3", (LayerSkipProposer,), {"exit_layer": 3})
    cfg = lambda pp: SimpleNamespace(  # noqa: E731
        speculative_config=SimpleNamespace(num_speculative_tokens=3),
        model_config=SimpleNamespace(hf_text_config=SimpleNamespace(num_hidden_layers=12, vocab_size=4096),
                                     max_model_len=64,
                                     dtype="float32"),
        parallel_config=SimpleNamespace(pipeline_parallel_size=pp))
    with pytest.raises(ValueError, match="pipeline_parallel_size must be 1, got 2"):
        cls(cfg(2))
    assert cls(cfg(1)).k == 3
