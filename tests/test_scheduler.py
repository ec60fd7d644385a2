"""Continuous batching (generation.scheduler.Engine): every request decodes as
if it were alone, slots are reused without leaking, bad requests fail alone."""

import pytest
import torch

import layerskip_kernels as lk

from helpers import make_hf_checkpoint

pytest.importorskip("transformers")

# Ragged prompts and budgets: 9 requests through 3 slots.
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [1, 2, 3], [7],
           [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11, 12, 13], [2, 2, 2], [14, 15], [6, 1, 6, 1, 6]]
BUDGETS = [12, 3, 20, 7, 1, 15, 9, 18, 5]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("sched")
    make_hf_checkpoint(path, "gqa_tied", num_hidden_layers=4, vocab_size=29)
    low = lk.LlamaForCausalLM.from_pretrained(path)
    high = lk.LlamaForCausalLM.from_pretrained(path)
    with torch.no_grad():  # late layers barely change the residual: drafts are mostly accepted
        for layer in high.model.layers[1:]:
            layer.self_attn.o_proj.weight.mul_(0.05)
            layer.mlp.down_proj.weight.mul_(0.05)
    return {"low": low, "high": high}


def alone(model, prompt, n, **kw):
    return lk.generate(model, [prompt], max_new_tokens=n, **kw).sequences[0]


def eos_inside(model, prompt, n):
    """An EOS id that the request emits mid-way (its 3rd token), so it stops early."""
    seq = alone(model, prompt, n, eos_token_id=[])
    return seq[2] if len(seq) > 3 else None


@pytest.mark.parametrize("which", ["low", "high"])
@pytest.mark.parametrize("mode", [dict(), dict(exit_layer=1, num_speculations=3), dict(exit_layer=2, num_speculations=6)])
def test_every_request_equals_its_batch1_autoregressive_output(models, which, mode):
    model = models[which]
    engine = lk.Engine(model, max_batch_size=3, **({"exit_layer": None} | mode))
    expected = []
    for i, (p, n) in enumerate(zip(PROMPTS, BUDGETS)):
        eos = eos_inside(model, p, n) if i % 3 == 0 else None
        eos_ids = [] if eos is None else [eos]
        expected.append(alone(model, p, n, eos_token_id=eos_ids))
        assert engine.add(p, max_new_tokens=n, eos_token_id=eos_ids) == i
    outs = engine.run()
    assert [o.request_id for o in outs] == list(range(len(PROMPTS)))
    assert [o.tokens for o in outs] == expected
    assert all(a is None for a in engine.slots)  # no slot leaks
    assert not engine.waiting
    for o, exp in zip(outs, expected):
        st = o.stats
        assert st["new_tokens"] == len(exp) and st["latency_s"] >= st["time_to_first_token_s"] > 0
        if "exit_layer" in mode:
            assert st["drafted"] == mode["num_speculations"] * st["iterations"]
            assert 0 <= st["accepted"] <= st["drafted"]
    if which == "high" and "exit_layer" in mode:
        assert engine.stats["accepted"] > 0.6 * engine.stats["drafted"]


def test_generate_with_fewer_slots_than_prompts(models):
    model = models["high"]
    full = lk.generate(model, PROMPTS, max_new_tokens=10, exit_layer=2, num_speculations=4, eos_token_id=[])
    few = lk.generate(model, PROMPTS, max_new_tokens=10, exit_layer=2, num_speculations=4, eos_token_id=[],
                      max_batch_size=2)
    assert few.sequences == full.sequences
    assert few.stats["steps"] > full.stats["steps"]  # the same work in more, smaller iterations


def test_reused_slot_never_sees_the_previous_request(models):
    model = models["low"]
    # One slot: the long first request fills far more cache positions than the
    # second one's prompt; if its stale K/V were attended, the second differs.
    engine = lk.Engine(model, max_batch_size=1, exit_layer=2, num_speculations=3)
    engine.add(PROMPTS[5] * 3, max_new_tokens=30, eos_token_id=[])
    engine.add(PROMPTS[1], max_new_tokens=12, eos_token_id=[])
    first, second = engine.run()
    assert second.tokens == alone(model, PROMPTS[1], 12, eos_token_id=[])
    # The same check made sensitive: poison every cache position the second
    # request does not own before it runs; the output must not change.
    engine.add(PROMPTS[5] * 3, max_new_tokens=30, eos_token_id=[])
    poisoned = []

    def poison(tokens):
        act = engine.slots[0]
        if act is not None and len(act.out) == 30:  # its last tokens: the slot is reused next
            engine.cache.k[:, 0] = float("nan")
            engine.cache.v[:, 0] = float("nan")
            poisoned.append(True)

    engine.waiting[-1][1].streamer = poison
    engine.add(PROMPTS[1], max_new_tokens=12, eos_token_id=[])
    outs = engine.run()
    assert poisoned and outs[1].tokens == second.tokens


@pytest.mark.parametrize("mode", [dict(), dict(exit_layer=2, num_speculations=3)])
def test_sampled_request_does_not_depend_on_its_neighbours(models, mode):
    model = models["high"]

    def run(prompts, seeds):
        engine = lk.Engine(model, max_batch_size=2, do_sample=True, **({"exit_layer": None} | mode))
        for p, s in zip(prompts, seeds):
            engine.add(p, max_new_tokens=16, eos_token_id=[], seed=s, temperature=1.3, top_k=8)
        return [o.tokens for o in engine.run()]

    solo = run([PROMPTS[0]], [123])[0]
    assert run([PROMPTS[2], PROMPTS[0], PROMPTS[3]], [7, 123, 9])[1] == solo
    assert run([PROMPTS[0], PROMPTS[4]], [123, 5])[0] == solo
    assert run([PROMPTS[0]], [124])[0] != solo  # the seed matters


def test_bad_request_is_rejected_alone(models):
    model = models["low"]
    engine = lk.Engine(model, max_batch_size=2)
    engine.add(PROMPTS[0], max_new_tokens=5, eos_token_id=[])
    with pytest.raises(ValueError, match="empty"):
        engine.add([], max_new_tokens=5)
    with pytest.raises(ValueError, match="max_cache_len|exceeds"):
        engine.add([1] * 300, max_new_tokens=5)  # the model holds 256 positions
    with pytest.raises(ValueError, match="vocab_size"):
        engine.add([1, 10**6], max_new_tokens=5)
    engine.add(PROMPTS[1], max_new_tokens=5, eos_token_id=[])
    outs = engine.run()
    assert [o.request_id for o in outs] == [0, 1]
    assert [o.tokens for o in outs] == [alone(model, p, 5, eos_token_id=[]) for p in PROMPTS[:2]]


def test_streamers_receive_each_request_in_order(models):
    model = models["high"]
    engine = lk.Engine(model, max_batch_size=2, exit_layer=1, num_speculations=4)
    got = {i: [] for i in range(4)}
    for i in range(4):
        engine.add(PROMPTS[i], max_new_tokens=BUDGETS[i], eos_token_id=[], streamer=got[i].extend)
    outs = engine.run()
    assert [got[i] for i in range(4)] == [o.tokens for o in outs]


def test_memory_check_counts_slots_not_prompts(models, monkeypatch):
    import layerskip_kernels.cache as cache_mod

    model = models["low"]
    cfg = model.config
    one_row = lk.StaticKVCache.nbytes(cfg.num_hidden_layers, 1, cfg.num_key_value_heads, 30 + 3 + 1, cfg.head_dim,
                                      torch.float32)
    # Room for 4 rows of cache (and the RoPE tables), not for 40.
    monkeypatch.setattr(cache_mod, "available_memory", lambda device: 4 * one_row + 2**16)
    prompts = [[1, 2, 3]] * 40
    with pytest.raises(ValueError, match="40 prompt"):
        lk.generate(model, prompts, max_new_tokens=30)
    out = lk.generate(model, prompts, max_new_tokens=30, max_batch_size=4, eos_token_id=[])
    assert out.sequences == [alone(model, [1, 2, 3], 30, eos_token_id=[])] * 40
    with pytest.raises(ValueError, match="max_batch_size"):
        lk.generate(model, prompts, max_new_tokens=3, max_batch_size=0)
