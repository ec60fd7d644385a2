"""torch.compile(fullgraph=True) of the decode steps with our ops."""

import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels.cache import StaticKVCache

from helpers import make_hf_checkpoint

BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(lk.available_backends()[name] is not None,
                                                 reason=f"{name}: {lk.available_backends()[name]}"))
    for name in ("torch", "cpu")
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("compile")
    make_hf_checkpoint(path, "gqa_tied", num_hidden_layers=4)
    return lk.LlamaForCausalLM.from_pretrained(path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_draft_and_verify_steps_compile_fullgraph(model, backend):
    E, k = 2, 3
    torch._dynamo.reset()

    def draft_step(tok, lens, cache):  # one draft token: layers [0, E) + exit head
        h = model.forward_layers(model.embed(tok[:, None]), 0, E, cache, lens)
        return h[:, 0], model.exit_head(h)[:, 0].argmax(-1)

    def verify_step(hidden, lens, cache):  # layers [E, L) over k+1 positions
        return model.exit_head(model.forward_layers(hidden, E, model.num_layers, cache, lens))

    def fresh_cache():
        cache = StaticKVCache.for_model(model, 2, 32)
        cache.seqlens.copy_(torch.tensor([3, 9], dtype=torch.int32))
        return cache

    with lk.use_backend(backend), torch.inference_mode():
        eager_cache, compiled_cache = fresh_cache(), fresh_cache()
        cdraft = torch.compile(draft_step, fullgraph=True)
        cverify = torch.compile(verify_step, fullgraph=True)
        tok_e = tok_c = torch.tensor([5, 7])
        lens_e, lens_c = eager_cache.seqlens.clone(), compiled_cache.seqlens.clone()
        hid_e, hid_c = [], []
        for _ in range(k + 1):
            he, tok_e = draft_step(tok_e, lens_e, eager_cache)
            hc, tok_c = cdraft(tok_c, lens_c, compiled_cache)
            assert torch.equal(tok_e, tok_c)
            hid_e.append(he)
            hid_c.append(hc)
            lens_e += 1
            lens_c += 1
        le = verify_step(torch.stack(hid_e, 1), eager_cache.seqlens, eager_cache)
        lc = cverify(torch.stack(hid_c, 1), compiled_cache.seqlens, compiled_cache)
        assert torch.equal(le.argmax(-1), lc.argmax(-1))
        assert (le - lc).abs().max().item() <= 1e-4
        # The compiled steps wrote the same cache as the eager ones.
        assert (eager_cache.k - compiled_cache.k).abs().max().item() <= 1e-5


@pytest.mark.parametrize("compiled", [False, True])
def test_draft_greedy_is_the_stepwise_drafting_phase(model, compiled):
    """steps.draft_greedy (the drafting phase in one function) gives the hidden
    states, drafts and cache of k `draft` steps with argmax, then `early`."""
    from layerskip_kernels.generation import steps

    E, k = 2, 3
    torch._dynamo.reset()

    def fresh_cache():
        cache = StaticKVCache.for_model(model, 2, 32)
        cache.seqlens.copy_(torch.tensor([3, 9], dtype=torch.int32))
        return cache

    fused = torch.compile(steps.draft_greedy, fullgraph=True) if compiled else steps.draft_greedy
    with torch.inference_mode():
        a, b = fresh_cache(), fresh_cache()
        tok, pos, hidden, drafts = torch.tensor([5, 7]), a.seqlens.clone(), [], []
        for _ in range(k):
            h, logits = steps.draft(model, E, tok, a, pos)
            tok = logits.argmax(-1)
            hidden.append(h)
            drafts.append(tok)
            pos += 1
        hidden.append(steps.early(model, E, tok, a, pos))
        got_hidden, got_drafts = fused(model, E, k, torch.tensor([5, 7]), b, b.seqlens)
    assert torch.equal(got_drafts, torch.stack(drafts, 1))
    torch.testing.assert_close(got_hidden, torch.stack(hidden, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.k, a.k, atol=1e-5, rtol=1e-5)
    assert torch.equal(b.seqlens, torch.tensor([3, 9], dtype=torch.int32))  # lengths are the engine's to advance


# --------------------------------------------------------------------------- compiled engine (generation.steps)

from helpers import damp_late_layers  # noqa: E402

RAGGED = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [1, 2, 3]]
BUDGETS = [40, 9, 25, 17]  # rows finish at different iterations


@pytest.fixture(scope="module")
def damped(tmp_path_factory):
    """High acceptance (drafts run long, with rejections), so verify paths of every length run."""
    path = tmp_path_factory.mktemp("compile_damped")
    make_hf_checkpoint(path, "gqa_tied", num_hidden_layers=4, max_position_embeddings=512, edit=damp_late_layers(1))
    return lk.LlamaForCausalLM.from_pretrained(path)


def _engine_tokens(model, prompts, budgets, compile, **kw):
    engine = lk.Engine(model, max_batch_size=len(prompts), compile=compile, **kw)
    for p, n in zip(prompts, budgets):
        engine.add(p, max_new_tokens=n, eos_token_id=[], seed=7)
    return [o.tokens for o in engine.run()]


@pytest.mark.parametrize("mode", [dict(exit_layer=None), dict(exit_layer=1, num_speculations=3),
                                  dict(exit_layer=2, num_speculations=2)])
@pytest.mark.parametrize("batch", [1, 4])
def test_compiled_engine_equals_eager_greedy(damped, mode, batch):
    prompts, budgets = RAGGED[:batch], BUDGETS[:batch]
    eager = _engine_tokens(damped, prompts, budgets, False, **mode)
    assert _engine_tokens(damped, prompts, budgets, True, **mode) == eager
    assert [len(t) for t in eager] == budgets


@pytest.mark.parametrize("mode", [dict(exit_layer=None), dict(exit_layer=2, num_speculations=3)])
def test_compiled_engine_equals_eager_sampling(damped, mode):
    kw = dict(mode, do_sample=True)
    eager = _engine_tokens(damped, RAGGED, BUDGETS, False, **kw)
    assert _engine_tokens(damped, RAGGED, BUDGETS, True, **kw) == eager
    # generate(seed=...) (one random stream for the batch) too.
    g = dict(max_new_tokens=20, do_sample=True, seed=3, eos_token_id=[], **mode)
    assert lk.generate(damped, RAGGED, compile=True, **g).sequences == lk.generate(damped, RAGGED, **g).sequences


def test_no_recompilation_and_no_graph_break_over_a_long_generation(damped):
    """256 tokens, rows finishing at different times, then a second call with
    another batch size and prompt lengths inside the same buckets: the graph
    of the first call (a whole greedy iteration) is all that is ever compiled."""
    from torch._dynamo.utils import counters

    from layerskip_kernels.generation import steps

    torch._dynamo.reset()
    steps._warm.clear()
    counters.clear()
    kw = dict(exit_layer=2, num_speculations=3, eos_token_id=[], compile=True)
    out = lk.generate(damped, RAGGED, max_new_tokens=256, max_batch_size=4, **kw)
    assert [len(s) for s in out.sequences] == [256] * 4
    assert counters["stats"]["unique_graphs"] == 1
    assert out.stats["compile_s"] > 0
    engine = lk.Engine(damped, max_batch_size=3, compile=True, exit_layer=2, num_speculations=3)
    for p, n in zip(RAGGED, (300, 31, 7, 120)):
        engine.add(p[:5], max_new_tokens=n, eos_token_id=[])
    assert [len(o.tokens) for o in engine.run()] == [300, 31, 7, 120]
    assert counters["stats"]["unique_graphs"] == 1  # 3 slots -> bucket 4, cache 309 -> bucket 512
    assert not counters["graph_break"] and not counters["recompiles"]
    second = lk.generate(damped, RAGGED[:3], max_new_tokens=260, **kw)
    assert second.stats["compile_s"] == 0  # the graph was built and run once already
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("bad", [dict(exit_layer=4), dict(num_speculations=0, exit_layer=1), dict(temperature=0.0,
                                 do_sample=True), dict(compile="yes")])
def test_bad_input_raises_before_any_compiled_code_runs(damped, bad):
    from torch._dynamo.utils import counters

    counters.clear()
    with pytest.raises(ValueError):
        lk.generate(damped, RAGGED, max_new_tokens=4, **({"compile": True} | bad))
    assert not counters["frames"] and not counters["stats"]


def test_compiled_adaptive_drafting_equals_eager_without_recompiling(damped):
    """Adaptive plans vary the draft length every iteration: compiled steps still
    verify k+1 positions (draft_lens masks the rest), so the graphs are one
    draft, early and verify per exit layer the policy uses."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    kw = dict(max_new_tokens=60, exit_layer=2, num_speculations=5, eos_token_id=[], speculation="adaptive")
    eager = lk.generate(damped, RAGGED, **kw)
    compiled = lk.generate(damped, RAGGED, compile=True, **kw)
    assert compiled.sequences == eager.sequences
    exits = set(compiled.stats["iterations_by_exit"])
    assert counters["stats"]["unique_graphs"] == 3 * len(exits)
    assert not counters["graph_break"]


# --------------------------------------------------------------------------- dropped module guards (steps._compiled_fn)


def test_models_of_different_shapes_never_share_graphs(damped, tmp_path):
    """On CPU the compiled steps skip dynamo's guards on the model's attributes;
    each model has its own graphs instead. Two models of different shapes,
    interleaved, each give their eager tokens."""
    path = tmp_path / "other"
    make_hf_checkpoint(path, "mha_untied", num_hidden_layers=3)
    other = lk.LlamaForCausalLM.from_pretrained(path)
    kw = dict(max_new_tokens=12, exit_layer=1, num_speculations=2, eos_token_id=[])
    want = {id(m): lk.generate(m, RAGGED, **kw).sequences for m in (damped, other)}
    for m in (damped, other, damped, other):
        assert lk.generate(m, RAGGED, compile=True, **kw).sequences == want[id(m)]


def test_a_model_changed_after_compiling_gets_new_graphs(tmp_path):
    """New weights (same shapes) are read at every call; another dtype or a
    model object at a reused address gets graphs of its own."""
    import gc

    from layerskip_kernels.generation import steps

    path = tmp_path / "m"
    make_hf_checkpoint(path, "gqa_tied", num_hidden_layers=3)
    model = lk.LlamaForCausalLM.from_pretrained(path)
    kw = dict(max_new_tokens=10, exit_layer=1, num_speculations=2, eos_token_id=[])
    first = lk.generate(model, RAGGED, compile=True, **kw).sequences
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)  # in place: same tensors, other values
    flipped = lk.generate(model, RAGGED, **kw).sequences
    assert flipped != first
    assert lk.generate(model, RAGGED, compile=True, **kw).sequences == flipped
    # Another dtype: the fp32 graphs are not reused (they would read bf16 weights as fp32).
    model.to(torch.bfloat16)
    sf = steps.StepFunctions(True, "cpu")
    cache = StaticKVCache.for_model(model, 2, 32)
    cache.seqlens.copy_(torch.tensor([3, 9], dtype=torch.int32))
    model.rope(32, torch.device("cpu"))
    model.refresh_decode_weights()
    tok = torch.tensor([5, 7])
    with torch.inference_mode():
        compiled = sf.autoregressive(model, tok, cache)
        eager = steps.autoregressive(model, tok, cache)
    assert compiled.dtype == torch.bfloat16
    torch.testing.assert_close(compiled.float(), eager.float(), atol=0.05, rtol=0.02)
    # A model that dies leaves a dead weak reference: a later model with the same id gets new graphs.
    slot = steps._compiled[(id(model), "cpu")]
    assert slot.model() is model
    del model, sf, cache
    gc.collect()
    assert slot.model() is None


def test_one_time_compiler_setup_happens_before_the_clock(monkeypatch):
    """generate() builds its engine (and so its StepFunctions) before it starts
    timing: the compiler's one-time setup (a slow import on CPU) must run there,
    not inside the first timed step."""
    from layerskip_kernels.generation import steps

    calls = []
    monkeypatch.setattr(steps, "_prepare_compiler", lambda device: calls.append(device.type))
    sf = steps.StepFunctions(True, "cpu")
    assert calls == ["cpu"]
    steps.StepFunctions(False, "cpu")  # eager: nothing to prepare
    assert calls == ["cpu"] and callable(sf.speculate_greedy)
