"""bench/bench_vllm.py without vLLM: the 1B-shaped checkpoint it writes is
bench_llama1b's model, and its rows (medians, ratios to no speculation, the
token comparison, acceptance from vLLM's counters) are computed as its
docstring says. Its end-to-end run needs vLLM: `python bench/bench_vllm.py
--smoke` in the vLLM venv (a few minutes: one engine per setting). The
settings' runs are interleaved (run_interleaved), checked here with stand-in
engines."""

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_llama1b  # noqa: E402
import bench_vllm  # noqa: E402

import layerskip_kernels as lk  # noqa: E402


def test_llama1b_checkpoint_is_bench_llama1bs_model(tmp_path, monkeypatch):
    small = dict(bench_llama1b.LLAMA_1B, num_hidden_layers=6, hidden_size=64, intermediate_size=128,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=300)
    monkeypatch.setattr(bench_llama1b, "LLAMA_1B", small)
    path = bench_vllm.llama1b_dir(str(tmp_path))
    assert bench_vllm.llama1b_dir(str(tmp_path)) == path and os.listdir(tmp_path) == [os.path.basename(path)]
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]  # vLLM loads every *.safetensors
    loaded = lk.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    built = bench_llama1b.random_model(bench_vllm.LLAMA1B_EXIT_LAYER, bench_llama1b.DEFAULT_DAMP)
    ids = torch.tensor([[5, 17, 299, 3, 42]])
    with torch.inference_mode():
        torch.testing.assert_close(loaded(ids), built(ids), rtol=0, atol=0)

    class Args:
        cache_dir, exit_layer, num_speculative_tokens = str(tmp_path), None, None

    assert bench_vllm.model_settings("llama1b", Args) == (path, bench_vllm.LLAMA1B_EXIT_LAYER, bench_vllm.LLAMA1B_K)


def _run(wall, latencies, tokens, drafts=0, accepted=0, per_pos=()):
    counts = dict(num_drafts=drafts, num_draft_tokens=3 * drafts, num_accepted_tokens=accepted, per_pos=list(per_pos))
    return dict(wall_s=wall, latency_s=latencies, tokens=tokens, counts=counts)


def test_rows_medians_ratios_and_token_check():
    toks = [[1, 2, 3, 4], [5, 6, 7, 8]]
    other = [[1, 2, 3, 4], [5, 6, 7, 9]]  # the second request's last token differs
    none = {"runs": {"1": [_run(2.0, [1.0, 1.0], toks), _run(4.0, [2.0, 2.0], toks), _run(1.0, [0.5, 0.5], toks)]},
            "engine_start_s": 10.0, "vllm": "0.32.0"}
    base = {r["concurrency"]: r for r in bench_vllm.summarize(none, None)}
    assert base[1]["throughput_tok_s"] == pytest.approx(4.0) and base[1]["p50_latency_s"] == 1.0
    assert base[1]["speedup_vs_none"] == 1.0 and "acceptance_rate" not in base[1] and "drafts" not in base[1]
    spec = {"runs": {"1": [_run(1.0, [0.5, 0.5], toks, 4, 6, [3, 2, 1]),
                           _run(1.0, [0.4, 0.6], other, 4, 6, [3, 2, 1])]},
            "engine_start_s": 12.0, "vllm": "0.32.0"}
    (row,) = bench_vllm.summarize(spec, base)
    assert row["speedup_vs_none"] == pytest.approx(2.0) and row["p50_latency_speedup_vs_none"] == pytest.approx(2.0)
    assert row["acceptance_rate"] == pytest.approx(12 / 24) and row["mean_acceptance_length"] == pytest.approx(2.5)
    assert row["acceptance_per_pos"] == "0.75/0.50/0.25" and row["drafts"] == 8
    assert row["same_tokens"] is False and row["requests_same"] == 2  # the first repetition matched, the second not


class _FakeSetting:
    """A SettingProcess stand-in: records the order of runs; fails from its
    `fail_at`-th run on (vLLM's engine dying mid-run)."""

    def __init__(self, name, log, fail_at=None):
        self.name, self.log, self.fail_at = name, log, fail_at
        self.started = dict(engine_start_s=1.0, vllm="0.32.0")

    def run(self, concurrency, rep):
        if self.fail_at is not None and sum(n == self.name for n, _, _ in self.log) >= self.fail_at:
            raise RuntimeError(f"{self.name} died")
        self.log.append((self.name, concurrency, rep))
        return dict(wall_s=1.0, concurrency=concurrency, rep=rep)


def test_settings_are_interleaved_and_a_failed_one_is_dropped():
    log = []
    procs = {s: _FakeSetting(s, log) for s in ("none", "draft_model", "layerskip")}
    results, lost = bench_vllm.run_interleaved(procs, [1, 8], reps=3)
    assert lost == [] and list(results) == ["none", "draft_model", "layerskip"]
    # per repetition and concurrency every setting runs once, the order rotated by one per repetition
    assert log == [(s, c, 0) for c in (1, 8) for s in ("none", "draft_model", "layerskip")] + \
        [(s, c, 1) for c in (1, 8) for s in ("draft_model", "layerskip", "none")] + \
        [(s, c, 2) for c in (1, 8) for s in ("layerskip", "none", "draft_model")]
    assert [r["rep"] for r in results["layerskip"]["runs"]["8"]] == [0, 1, 2]
    assert results["none"]["engine_start_s"] == 1.0 and results["none"]["vllm"] == "0.32.0"

    log.clear()
    procs = {"none": _FakeSetting("none", log), "draft_model": _FakeSetting("draft_model", log, fail_at=3),
             "layerskip": _FakeSetting("layerskip", log)}
    results, lost = bench_vllm.run_interleaved(procs, [1, 8], reps=3)
    assert lost == ["draft_model"] and list(results) == ["none", "layerskip"]
    assert len(results["layerskip"]["runs"]["1"]) == 3 and all(n != "draft_model" or r < 2 for n, _, r in log)

    log.clear()
    procs = {"none": _FakeSetting("none", log, fail_at=1), "layerskip": _FakeSetting("layerskip", log)}
    assert bench_vllm.run_interleaved(procs, [1], reps=2) == ({}, ["none", "layerskip"])  # no baseline: nothing


def test_step_split_timer_counts_calls_and_passes_results_through():
    import bench_vllm_steps

    acc = dict(propose_s=0.0, propose_calls=0)
    fn = bench_vllm_steps._timed(acc, "propose", lambda a, b=0: a + b)
    assert fn(2, b=3) == 5 and fn(1) == 1
    assert acc["propose_calls"] == 2 and acc["propose_s"] > 0.0
