"""Decoding aids (repetition penalty, no-repeat n-grams) and token healing:
transformers' logits processors as the spec, and self-speculation == autoregressive
with them on."""

import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels.generation.processors import DecodingAids, TokenHistory
from layerskip_kernels.generation.token_healing import heal_prompt, token_bytes

from helpers import make_hf_checkpoint

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import (  # noqa: E402
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)

PROMPTS = [[5, 6, 7, 5, 6, 9, 10, 11], [3, 4], [12, 13, 14, 12, 13, 14, 15, 16, 17, 21, 22], [1, 2, 3]]


def hf_processed(ids_rows, logits, penalty, n):
    """transformers' processors applied to each row's own context."""
    out = []
    for ids, row in zip(ids_rows, logits):
        x = row[None].clone()
        inp = torch.tensor([ids])
        if penalty != 1.0:
            x = RepetitionPenaltyLogitsProcessor(penalty)(inp, x)
        if n:
            x = NoRepeatNGramLogitsProcessor(n)(inp, x)
        out.append(x[0])
    return torch.stack(out)


@pytest.mark.parametrize("penalty,n", [(1.3, 0), (0.7, 0), (1.0, 1), (1.0, 2), (1.0, 3), (1.5, 2)])
def test_aids_match_transformers_per_position(penalty, n):
    g = torch.Generator().manual_seed(0)
    B, T, S, V = 3, 20, 5, 11
    ids = torch.randint(0, 4, (B, T), generator=g)  # a small alphabet: many repeats
    ctx_len = torch.tensor([[0, 1, 2, 7, 20], [3, 4, 5, 6, 7], [13, 14, 15, 16, 17]])
    logits = torch.randn(B, S, V, generator=g)
    logits[0, :, 2] = -logits[0, :, 2].abs()  # negative scores are multiplied, positive divided
    got = DecodingAids(penalty, n)(logits, TokenHistory(ids), ctx_len)
    for s in range(S):
        rows = [ids[b, : ctx_len[b, s]].tolist() for b in range(B)]
        want = hf_processed(rows, logits[:, s], penalty, n)
        assert torch.equal(got[:, s], want), s
    assert not DecodingAids().active and DecodingAids()(logits, TokenHistory(ids), ctx_len) is logits


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A low-acceptance random model, and the same weights with the late layers'
    outputs scaled down so that early exits agree with the last layer often."""
    path = tmp_path_factory.mktemp("aids")
    hf = make_hf_checkpoint(path, "gqa_tied", num_hidden_layers=5, vocab_size=23)
    low = lk.LlamaForCausalLM.from_pretrained(path)
    high = lk.LlamaForCausalLM.from_pretrained(path)
    with torch.no_grad():
        for layer in high.model.layers[2:]:
            layer.self_attn.o_proj.weight.mul_(0.05)
            layer.mlp.down_proj.weight.mul_(0.05)
    return {"low": low, "high": high}, hf


@pytest.mark.parametrize("which", ["low", "high"])
@pytest.mark.parametrize("penalty,n", [(1.4, 0), (1.0, 2), (1.2, 3)])
def test_selfspec_equals_autoregressive_with_aids(models, which, penalty, n):
    model = models[0][which]
    kw = dict(max_new_tokens=30, eos_token_id=[], repetition_penalty=penalty, no_repeat_ngram_size=n)
    for prompts in (PROMPTS[:1], PROMPTS):
        ar = lk.generate(model, prompts, **kw)
        plain = lk.generate(model, prompts, max_new_tokens=30, eos_token_id=[])
        assert ar.sequences != plain.sequences, "the aids must change this greedy output"
        for E, k in [(1, 4), (3, 8)]:
            spec = lk.generate(model, prompts, exit_layer=E, num_speculations=k, **kw)
            assert spec.sequences == ar.sequences, (E, k)
    if which == "high":
        assert spec.stats["acceptance_rate"] > 0.5  # the aids are exercised inside accepted runs


def test_autoregressive_with_aids_equals_transformers(models):
    model, hf = models[0]["low"], models[1]
    for penalty, n in [(1.4, 0), (1.0, 2), (1.2, 3)]:
        for p in PROMPTS:
            out = lk.generate(model, [p], max_new_tokens=20, eos_token_id=[], repetition_penalty=penalty,
                              no_repeat_ngram_size=n)
            ref = hf.generate(torch.tensor([p]), max_new_tokens=20, do_sample=False, eos_token_id=None,
                              pad_token_id=0, repetition_penalty=penalty, no_repeat_ngram_size=n)
            assert out.sequences[0] == ref[0, len(p):].tolist(), (penalty, n, p)


def test_no_repeat_ngram_holds_when_sampling(models):
    model = models[0]["high"]
    n = 2
    out = lk.generate(model, PROMPTS, max_new_tokens=40, exit_layer=2, num_speculations=4, do_sample=True, seed=3,
                      eos_token_id=[], no_repeat_ngram_size=n)
    for p, gen in zip(PROMPTS, out.sequences):
        seq = p + gen
        for t in range(len(p), len(seq)):  # every generated token: its n-gram is new
            earlier = {tuple(seq[i:i + n]) for i in range(t - n + 1)}
            assert tuple(seq[t - n + 1:t + 1]) not in earlier


@pytest.mark.parametrize("bad", [dict(repetition_penalty=0.0), dict(repetition_penalty=float("nan")),
                                 dict(repetition_penalty=True), dict(no_repeat_ngram_size=-1),
                                 dict(no_repeat_ngram_size=2.0), dict(first_token_ids=[[99]]),
                                 dict(first_token_ids=[[]]), dict(first_token_ids=[[1], [2]])])
def test_bad_aid_arguments(models, bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        lk.generate(models[0]["low"], PROMPTS[:1], max_new_tokens=3, **bad)


# --------------------------------------------------------------------------- token healing


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(f"{lk.default_model_path()}/tokenizer.json")


@pytest.mark.parametrize("prompt,removed", [
    ("def gcd(a, b):\n    while b:\n", b"\n"),          # ends in a newline
    ("def gcd(a, b):\n    ", b"\n    "),                # ends in indentation
    ("import os\nos.pa", b"pa"),                        # mid-identifier
    ("x = 1", b" 1"),
])
def test_heal_prompt(tokenizer, prompt, removed):
    ids = tokenizer.encode(prompt).ids
    h = heal_prompt(tokenizer, ids)
    assert h.ids == ids[:-1] and h.removed == removed
    assert tokenizer.decode(h.ids).encode() + h.removed == prompt.encode()
    assert ids[-1] in h.allowed and len(h.allowed) > 1
    assert all(token_bytes(tokenizer, t).startswith(removed) for t in h.allowed)
    others = set(range(tokenizer.get_vocab_size())) - set(h.allowed)
    assert not any((token_bytes(tokenizer, t) or b"").startswith(removed) for t in others)


def test_heal_prompt_leaves_short_prompts(tokenizer):
    assert heal_prompt(tokenizer, [7]).allowed is None
    assert heal_prompt(tokenizer, [7, 0]).allowed is None  # ends in the special <|endoftext|>


@pytest.mark.parametrize("prompt", ["def gcd(a, b):\n    while b:\n", "def gcd(a, b):\n    ", "import os\nos.pa"])
def test_healed_generation_is_exact_and_starts_with_removed_text(tokenizer, prompt):
    model = lk.LlamaForCausalLM.from_pretrained(dtype=torch.float32)
    h = heal_prompt(tokenizer, tokenizer.encode(prompt).ids)
    kw = dict(max_new_tokens=24, first_token_ids=[h.allowed])
    ar = lk.generate(model, [h.ids], **kw)
    spec = lk.generate(model, [h.ids], exit_layer=2, num_speculations=3, **kw)
    assert spec.sequences == ar.sequences
    assert ar.sequences[0][0] in h.allowed
    assert tokenizer.decode(h.ids + ar.sequences[0]).startswith(prompt)


# --------------------------------------------------------------------------- the aids inside the greedy step functions


from layerskip_kernels.generation import iteration as iteration_mod  # noqa: E402
from layerskip_kernels.generation.sampling import Greedy  # noqa: E402


class _HostGreedy(Greedy):
    """The argmax taken outside the step functions: the engine then runs the
    stepwise strategies (HostAutoregressive, StepwiseSpeculation), the
    reference the fused ones are checked against."""


def _engine_tokens(model, prompts, budgets, host=False, **kw):
    engine = lk.Engine(model, max_batch_size=len(prompts), **kw)
    if host:
        engine.chooser = _HostGreedy()
    for p, n in zip(prompts, budgets):
        engine.add(p, max_new_tokens=n, eos_token_id=[])
    out = [o.tokens for o in engine.run()]
    return out, type(engine.iteration).__name__


AID_SETTINGS = [(1.0, n) for n in range(1, 7)] + [(0.7, 0), (1.3, 0), (0.8, 3), (1.2, 4)]
BUDGETS = [40, 23, 31, 17]  # rows finish at different iterations


@pytest.mark.parametrize("penalty,n", AID_SETTINGS)
def test_fused_greedy_with_aids_equals_stepwise(models, penalty, n):
    """Greedy self-speculation with the aids inside one step function per
    iteration equals greedy autoregressive decoding with them (fused and
    stepwise), batch 4 with ragged prompts and budgets."""
    model = models[0]["high"]
    aids = DecodingAids(penalty, n)
    ref, name = _engine_tokens(model, PROMPTS, BUDGETS, host=True, aids=aids)
    assert name == "HostAutoregressive"
    plain, _ = _engine_tokens(model, PROMPTS, BUDGETS)
    assert ref != plain, "the aids must change this greedy output"
    ar, name = _engine_tokens(model, PROMPTS, BUDGETS, aids=aids)
    assert name == "GreedyAutoregressive" and ar == ref
    for E, k in [(1, 3), (2, 5)]:
        spec, name = _engine_tokens(model, PROMPTS, BUDGETS, aids=aids, exit_layer=E, num_speculations=k)
        assert name == "FusedSpeculation" and spec == ref, (E, k)
    stepwise, name = _engine_tokens(model, PROMPTS, BUDGETS, host=True, aids=aids, exit_layer=2, num_speculations=5)
    assert name == "StepwiseSpeculation" and stepwise == ref


@pytest.mark.parametrize("penalty,n", [(1.2, 4), (0.8, 1)])
def test_compiled_fused_greedy_with_aids_equals_eager(models, penalty, n):
    model = models[0]["high"]
    aids = DecodingAids(penalty, n)
    ref, _ = _engine_tokens(model, PROMPTS, BUDGETS, host=True, aids=aids)
    ar, _ = _engine_tokens(model, PROMPTS, BUDGETS, aids=aids, compile=True)
    spec, name = _engine_tokens(model, PROMPTS, BUDGETS, aids=aids, compile=True, exit_layer=2, num_speculations=4)
    assert name == "FusedSpeculation" and spec == ar == ref


def test_fused_aids_iteration_is_one_step_call(models, monkeypatch):
    """With the aids, a greedy self-speculative iteration calls one step function
    (speculate_greedy), as without them; no draft or verify step runs apart."""
    from layerskip_kernels.generation.steps import StepFunctions

    calls = []
    init = StepFunctions.__init__

    def spying_init(self, compile, device):
        init(self, compile, device)
        for name in ("autoregressive", "draft", "early", "verify", "draft_greedy", "verify_accept",
                     "speculate_greedy", "greedy_token"):
            fn = getattr(self, name)
            setattr(self, name, lambda *a, _fn=fn, _name=name, **kw: calls.append(_name) or _fn(*a, **kw))

    monkeypatch.setattr(StepFunctions, "__init__", spying_init)
    out = lk.generate(models[0]["high"], PROMPTS, max_new_tokens=20, eos_token_id=[], exit_layer=2,
                      num_speculations=4, repetition_penalty=1.2, no_repeat_ngram_size=3)
    assert out.stats["steps"] > 1 and calls == ["speculate_greedy"] * out.stats["steps"]


def test_aids_graph_is_one_per_iteration(models):
    """Compiled: greedy self-speculation with the aids is one graph, built once, no graph break."""
    from torch._dynamo.utils import counters

    from layerskip_kernels.generation import steps

    torch._dynamo.reset()
    steps._warm.clear()
    counters.clear()
    kw = dict(exit_layer=2, num_speculations=3, eos_token_id=[], compile=True, repetition_penalty=1.2,
              no_repeat_ngram_size=3)
    out = lk.generate(models[0]["high"], PROMPTS, max_new_tokens=60, **kw)
    assert [len(s) for s in out.sequences] == [60] * 4
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"] and not counters["recompiles"]
    again = lk.generate(models[0]["high"], PROMPTS[:3], max_new_tokens=50, **kw)
    assert again.stats["compile_s"] == 0 and counters["stats"]["unique_graphs"] == 1
