"""LayerSkip self-speculation inside vLLM (integrations/vllm.py), on vLLM's CPU
backend with the embedded model, fp32: greedy output with our proposer equals
vLLM's own greedy output without speculation, token for token, one request at
a time and several concurrent requests of different lengths; drafts are
proposed and accepted (vLLM's spec-decode counters); the proposer runs the
target's own modules (no second copy of any weight). The embedded model
directory loads in vLLM as shipped, and an exported draft (`layerskip
export-draft`) runs as vLLM's `draft_model` with the same output."""

import gc

import numpy as np
import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels.cache import StaticKVCache

from layerskip_kernels.integrations.vllm import LayerSkipProposer, speculative_config

PROMPTS = [
    "def fibonacci(n):\n",
    "import os\nimport sys\n\n\nclass Config:\n    def __init__(self, path):\n        self.path = path\n",
    "    for i, line in enumerate(lines):\n        if not line.strip():\n",
    "x = [",
    "def parse_args(argv=None):\n    parser = argparse.ArgumentParser(description=__doc__)\n    parser.add_argument(",
]
MAX_TOKENS = [40, 23, 57, 11, 33]


def _llm(model, enforce_eager=True, **kw):
    from vllm import LLM

    return LLM(model=model, dtype="float32", max_model_len=512, max_num_seqs=8, enforce_eager=enforce_eager,
               disable_log_stats=False, seed=0, **kw)


def _close(llm):
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    del llm
    gc.collect()
    cleanup_dist_env_and_memory()


def _greedy(llm, prompts, max_tokens):
    from vllm import SamplingParams

    params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for m in max_tokens]
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def _runs(llm):
    """One request at a time, then all concurrently (ragged prompts and lengths)."""
    alone = [_greedy(llm, [p], [m])[0] for p, m in zip(PROMPTS, MAX_TOKENS)]
    return alone, _greedy(llm, PROMPTS, MAX_TOKENS)


def _spec_counts(llm):
    out = {}
    for m in llm.get_metrics():
        if m.name in ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                      "vllm:spec_decode_num_accepted_tokens"):
            out[m.name.removeprefix("vllm:spec_decode_")] = m.value
    return out


def check_same_runs(got, reference):
    """Both of _runs' outputs equal the reference's, token for token."""
    (alone, together), (ref_alone, ref_together) = got, reference
    assert [len(t) for t in alone] == MAX_TOKENS
    for i, (g, w) in enumerate(zip(alone, ref_alone)):
        assert list(g) == list(w), f"prompt {i} alone"
    for i, (g, w) in enumerate(zip(together, ref_together)):
        assert list(g) == list(w), f"prompt {i} in the concurrent batch"


def _runner(llm):
    # VLLM_ENABLE_V1_MULTIPROCESSING=0 (conftest): the engine core lives in this process.
    return llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner


def early_exit_greedy(model, hist, E, k):
    """k greedy tokens of our own model's early exit at layer E after `hist` (no cache reuse)."""
    ids, out = [int(t) for t in hist], []
    for _ in range(k):
        cache = StaticKVCache.for_model(model, 1, len(ids))
        logits = model.exit_head(model.forward_layers(model.embed(torch.tensor([ids])), 0, E, cache))
        out.append(int(logits[0, -1].argmax()))
        ids.append(out[-1])
    return out


def check_drafts_against_our_model(drafter, model_dir):
    """Drive propose() as vLLM's runner does, over steps where drafts are all
    accepted, partly accepted, rejected, a row gets another request, a row
    samples nothing and a row is at max_model_len: every draft is the early-exit
    greedy continuation of our own model (fp32) on the row's tokens."""
    ours = lk.LlamaForCausalLM.from_pretrained(model_dir)
    E, k = drafter.exit_layer, drafter.k
    drafter.max_batch = None  # every step below drafts (check_batch_limit checks the limit)
    rng = np.random.default_rng(0)
    hists = [list(rng.integers(1, 4096, size=n)) for n in (5, 17, 2, 40, 3)]
    for step in range(3):
        tokens = np.zeros((8, drafter.max_model_len), dtype=np.int32)
        for i, h in enumerate(hists):
            tokens[i, : len(h)] = h
        n = np.array([len(h) for h in hists] + [0] * (8 - len(hists)))
        sampled = [[int(h[-1])] for h in hists]
        sampled[4] = []  # e.g. a chunked prefill: no draft for this row
        with torch.inference_mode():
            drafts = drafter.propose(sampled, n, tokens)
        assert drafts[4] == [] and len(drafts) == len(hists)
        for i in range(4):
            assert drafts[i] == early_exit_greedy(ours, hists[i], E, k), (step, i)
        # vLLM's verdicts: row 0 accepts all + bonus, row 1 one + correction,
        # row 2 none + correction, row 3 now holds another request.
        hists[0] = hists[0] + drafts[0] + [int(rng.integers(1, 4096))]
        hists[1] = hists[1] + drafts[1][:1] + [(drafts[1][1] + 1) % 4096]
        hists[2] = hists[2] + [(drafts[2][0] + 1) % 4096]
        hists[3] = list(rng.integers(1, 4096, size=9 + step))
    full = np.zeros((1, drafter.max_model_len), dtype=np.int32)
    with torch.inference_mode():
        assert drafter.propose([[1]], np.array([drafter.max_model_len]), full) == [[]]  # no room to draft
    # A new request drafting alone: its catch-up rides on the first draft
    # forward (k forwards in all, not k + 1).
    hist = list(rng.integers(1, 4096, size=23))
    tokens = np.zeros((8, drafter.max_model_len), dtype=np.int32)
    tokens[1, :23] = hist
    forwards = []
    forward = drafter._forward
    drafter._forward = lambda *a, **kw: forwards.append(a[1].shape) or forward(*a, **kw)
    try:
        with torch.inference_mode():
            assert drafter.propose([[], [int(hist[-1])]], np.array([0, 23]), tokens) == \
                [[], early_exit_greedy(ours, hist, E, k)]
    finally:
        del drafter._forward
    assert [tuple(s) for s in forwards] == [(1, 23)] + [(1, 1)] * (k - 1)


def check_batch_limit(drafter, model_dir):
    """More decoding rows than max_batch: no drafts at all; a row that sat such
    steps out drafts again from the tokens it missed (recomputed, not stale)."""
    ours = lk.LlamaForCausalLM.from_pretrained(model_dir)
    E, k = drafter.exit_layer, drafter.k
    rng = np.random.default_rng(1)
    hists = [list(rng.integers(1, 4096, size=n)) for n in (6, 11, 9)]
    tokens = np.zeros((4, drafter.max_model_len), dtype=np.int32)

    def propose(rows):
        for i in rows:
            tokens[i, : len(hists[i])] = hists[i]
        sampled = [[int(h[-1])] if i in rows else [] for i, h in enumerate(hists)]
        n = np.array([len(h) if i in rows else 0 for i, h in enumerate(hists)])
        with torch.inference_mode():
            return drafter.propose(sampled, n, tokens)

    drafter.max_batch = 2
    assert propose([0]) == [early_exit_greedy(ours, hists[0], E, k), [], []]
    for _ in range(2):  # three rows decode: nothing drafted, the rows move on
        assert propose([0, 1, 2]) == [[], [], []]
        for h in hists:
            h += list(rng.integers(1, 4096, size=2))
    assert propose([0, 2]) == [early_exit_greedy(ours, hists[0], E, k), [], early_exit_greedy(ours, hists[2], E, k)]


@pytest.fixture(scope="module")
def reference(model_dir):
    """vLLM without speculation. Also checks the directory loads as shipped:
    vLLM loads every *.safetensors file of it as weights."""
    llm = _llm(model_dir)
    out = _runs(llm)
    _close(llm)
    return out


# (3, 3): the CPU's default batch limit (the concurrent run drafts once few
# requests are left); (1, 5): a limit past the batch (every row drafts).
@pytest.mark.parametrize("exit_layer,k,max_batch", [(3, 3, None), (1, 5, 8)])
def test_greedy_output_equals_vllm_without_speculation(model_dir, reference, exit_layer, k, max_batch):
    from layerskip_kernels.integrations.vllm import AUTO_DISABLE_BY_BATCH_SIZE

    llm = _llm(model_dir, speculative_config=speculative_config(exit_layer=exit_layer, num_speculative_tokens=k,
                                                                disable_by_batch_size=max_batch))
    try:
        drafter = _runner(llm).drafter
        assert isinstance(drafter, LayerSkipProposer) and drafter.exit_layer == exit_layer and drafter.k == k
        assert drafter.max_batch == (max_batch or AUTO_DISABLE_BY_BATCH_SIZE["cpu"])
        alone, together = _runs(llm)
        counts = _spec_counts(llm)
        # Shared weights: the proposer holds the target model itself and no
        # parameter of its own; its only tensors are its K/V cache rows.
        assert drafter.model is _runner(llm).model
        assert not any(isinstance(v, torch.nn.Parameter) for v in vars(drafter).values())
        assert len(drafter.k_cache) == exit_layer
        assert drafter.k_cache[0].shape[2] < drafter.max_len  # grown to what requests used, not max_model_len
        # After vLLM's requests, its rows hold their K/V: new contents must be recomputed, not reused.
        check_drafts_against_our_model(drafter, model_dir)
        # The embedded model's rotary embedding and norms take the proposer's
        # fast paths (RoPE in our attention, vLLM's fused norm kernels); the
        # vLLM modules they stand in for draft the same tokens.
        assert drafter.cos is not None and all(norm.fused for norm in drafter.norms)
        drafter.rope_table = drafter.cos = drafter.sin = None
        for norm in drafter.norms:
            norm.fused = False
        drafter.valid[:] = 0  # recompute every row's K/V on the module path
        check_drafts_against_our_model(drafter, model_dir)
        check_batch_limit(drafter, model_dir)
    finally:
        _close(llm)
    check_same_runs((alone, together), reference)
    assert list(reference[0]) == list(reference[1])  # the reference itself is batch-invariant here
    # Drafts were proposed and some accepted, some rejected (both paths ran).
    assert counts["num_drafts"] > 0 and counts["num_draft_tokens"] == k * counts["num_drafts"]
    assert 0 < counts["num_accepted_tokens"] < counts["num_draft_tokens"], counts


def test_exported_draft_runs_as_vllms_draft_model(model_dir, reference, tmp_path):
    from layerskip_kernels.model.export import export_draft

    draft = export_draft(model_dir, 3, tmp_path / "draft")
    llm = _llm(model_dir, speculative_config={"method": "draft_model", "model": draft, "num_speculative_tokens": 3})
    try:
        alone = [_greedy(llm, [p], [m])[0] for p, m in zip(PROMPTS[:2], MAX_TOKENS[:2])]
        counts = _spec_counts(llm)
    finally:
        _close(llm)
    assert [list(t) for t in alone] == [list(t) for t in reference[0][:2]]
    assert 0 < counts["num_accepted_tokens"] <= counts["num_draft_tokens"]


def test_bad_exit_layer_is_refused(model_dir):
    with pytest.raises(Exception, match="exit_layer must be an int in \\[1, 11\\]"):
        _llm(model_dir, speculative_config=speculative_config(exit_layer=12, num_speculative_tokens=3))


def test_plugin_and_serve_json_reach_vllm():
    """Installing the package registers the general plugin vLLM loads in every
    process, and `vllm serve --speculative-config JSON` parses our JSON into
    the same config as the dict."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.plugins import load_plugins_by_group
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from layerskip_kernels.integrations import vllm as lv

    plugins = load_plugins_by_group("vllm.general_plugins")
    assert plugins["layerskip"] is lv.register
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    args = parser.parse_args(["--speculative-config", speculative_config(3, 4, as_json=True)])
    assert EngineArgs.from_cli_args(args).speculative_config == speculative_config(3, 4)
