"""generate(): greedy self-speculation == autoregressive == transformers, no
recomputation, lossless sampling, stopping rules, bad input."""

import itertools

import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels.generation import MAX_SPECULATIONS, warp_probs

from helpers import make_hf_checkpoint

transformers = pytest.importorskip("transformers")

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [1, 2, 3]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen")
    hf = make_hf_checkpoint(path, "gqa_tied", num_hidden_layers=5)
    return lk.LlamaForCausalLM.from_pretrained(path), hf


def hf_greedy(hf, prompt, n):
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("B", [1, 4])
def test_greedy_selfspec_equals_autoregressive_and_transformers(tiny, B):
    model, hf = tiny
    L = model.num_layers
    prompts = PROMPTS[:B]
    n = 24
    ar = lk.generate(model, prompts, max_new_tokens=n, eos_token_id=[])
    assert ar.sequences == [hf_greedy(hf, p, n) for p in prompts]
    for E, k in [(1, 1), (1, 8), (2, 4), (L - 1, 1), (L - 1, 8), (3, MAX_SPECULATIONS)]:
        spec = lk.generate(model, prompts, max_new_tokens=n, exit_layer=E, num_speculations=k, eos_token_id=[])
        assert spec.sequences == ar.sequences, (E, k)
        st = spec.stats
        assert st["drafted"] > 0 and 0 <= st["accepted"] <= st["drafted"]
        assert 1.0 <= st["tokens_per_step"] <= k + 1


def test_padded_tensor_prompts(tiny):
    model, _ = tiny
    prompts = PROMPTS[:3]
    T = max(map(len, prompts))
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for b, p in enumerate(prompts):  # left padding, as transformers users send it
        ids[b, T - len(p):] = torch.tensor(p)
        mask[b, T - len(p):] = 1
    a = lk.generate(model, ids, attention_mask=mask, max_new_tokens=10, exit_layer=2, eos_token_id=[])
    b = lk.generate(model, prompts, max_new_tokens=10, eos_token_id=[])
    assert a.sequences == b.sequences


def count_positions(model):
    """Forward hooks recording (layer, S, B) of every layer call."""
    calls = []
    hooks = [layer.register_forward_hook(lambda mod, args, out, i=i: calls.append((i, args[0].shape[1], args[0].shape[0])))
             for i, layer in enumerate(model.model.layers)]
    return calls, hooks


@pytest.mark.parametrize("E,k", [(2, 3), (1, 6)])
def test_no_layer_recomputes_a_position(tiny, E, k):
    model, _ = tiny
    L = model.num_layers
    prompts = PROMPTS
    T = max(map(len, prompts))
    calls, hooks = count_positions(model)
    try:
        out = lk.generate(model, prompts, max_new_tokens=17, exit_layer=E, num_speculations=k, eos_token_id=[])
    finally:
        for h in hooks:
            h.remove()
    steps = out.stats["steps"]
    per_layer = [sum(S * B for i, S, B in calls if i == layer) for layer in range(L)]
    # Prefill: every layer once over the padded prompts. Each iteration: every layer
    # processes k+1 positions per active row: drafts + last draft for layers < E,
    # one verify pass for layers >= E.
    decode_positions = (out.stats["drafted"] // k) * (k + 1)
    for layer in range(L):
        assert per_layer[layer] == len(prompts) * T + decode_positions, layer
    for layer in range(E):
        assert sorted({S for i, S, B in calls if i == layer}) == [1, T]
        assert sum(1 for i, S, B in calls if i == layer and S == 1) == (k + 1) * steps
    for layer in range(E, L):
        assert sum(1 for i, S, B in calls if i == layer and S == k + 1) == steps


# --------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("sv")
    make_hf_checkpoint(path, "mha_untied", vocab_size=6, seed=3)
    model = lk.LlamaForCausalLM.from_pretrained(path)
    with torch.no_grad():  # flatter logits: every pair of tokens is likely enough to count
        model.lm_head.weight.mul_(0.3)
    return model


def exact_two_token_probs(model, prompt, warp):
    V = model.config.vocab_size
    ids = torch.tensor([prompt + [t] for t in range(V)])
    logits = model(ids)  # [V, T+1, V]
    p1 = warp_probs(logits[0, len(prompt) - 1], **warp)
    p2 = warp_probs(logits[:, len(prompt)], **warp)  # [t1, t2]
    return p1[:, None] * p2


@pytest.mark.parametrize("warp", [dict(temperature=1.0, top_k=0, top_p=1.0), dict(temperature=0.7, top_k=4, top_p=0.9)])
@pytest.mark.parametrize("mode", ["autoregressive", "selfspec_k1", "selfspec_k3"])
def test_sampling_joint_distribution_of_two_tokens(small_vocab, warp, mode):
    chi2 = pytest.importorskip("scipy.stats").chi2
    model = small_vocab
    prompt = [1, 4, 2]
    V = model.config.vocab_size
    N = 30000
    exit_layer, k = {"autoregressive": (None, 1), "selfspec_k1": (1, 1), "selfspec_k3": (2, 3)}[mode]
    out = lk.generate(model, [prompt] * N, max_new_tokens=2, exit_layer=exit_layer, num_speculations=k,
                      do_sample=True, seed=11, eos_token_id=[], **warp)
    pairs = torch.tensor(out.sequences)
    assert pairs.shape == (N, 2)
    counts = torch.bincount(pairs[:, 0] * V + pairs[:, 1], minlength=V * V).double()
    probs = exact_two_token_probs(model, prompt, warp).reshape(-1).double()
    assert counts[probs == 0].sum() == 0, "a token outside the top-k/top-p support was sampled"
    keep = probs > 0
    expected = probs[keep] * N
    stat = ((counts[keep] - expected) ** 2 / expected).sum().item()
    pval = chi2.sf(stat, int(keep.sum()) - 1)
    assert pval > 1e-4, (stat, pval)


def test_seeded_sampling_is_reproducible(tiny):
    model, _ = tiny
    run = lambda seed: lk.generate(model, PROMPTS, max_new_tokens=12, exit_layer=2, do_sample=True, seed=seed,
                                   eos_token_id=[]).sequences
    assert run(5) == run(5)
    assert run(5) != run(6)


# --------------------------------------------------------------------------- stopping


def test_eos_per_row_and_exact_max_new_tokens(tiny):
    model, _ = tiny
    ref = lk.generate(model, PROMPTS, max_new_tokens=20, eos_token_id=[]).sequences
    assert all(len(s) == 20 for s in ref)
    # Pick as EOS a token that row 0 emits at position 5 (and is not earlier).
    eos = ref[0][5]
    for E in (None, 2):
        out = lk.generate(model, PROMPTS, max_new_tokens=20, exit_layer=E, num_speculations=4, eos_token_id=eos)
        for s, r in zip(out.sequences, ref):
            cut = r.index(eos) + 1 if eos in r else len(r)
            assert s == r[:cut]
    for n in (1, 2, 7):
        out = lk.generate(model, PROMPTS, max_new_tokens=n, exit_layer=3, num_speculations=8, eos_token_id=[])
        assert [len(s) for s in out.sequences] == [n] * len(PROMPTS)


def test_prompt_at_cache_limit(tiny):
    model, _ = tiny
    prompt = list(range(3, 3 + 20))
    out = lk.generate(model, [prompt], max_new_tokens=5, exit_layer=2, num_speculations=8, max_cache_len=25,
                      eos_token_id=[])
    assert out.sequences == lk.generate(model, [prompt], max_new_tokens=5, eos_token_id=[]).sequences
    with pytest.raises(ValueError, match="max_cache_len"):
        lk.generate(model, [prompt], max_new_tokens=6, max_cache_len=25)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(exit_layer=0), "exit_layer"),
        (dict(exit_layer=5), "exit_layer"),
        (dict(exit_layer=2, num_speculations=0), "num_speculations"),
        (dict(exit_layer=2, num_speculations=MAX_SPECULATIONS + 1), "num_speculations"),
        (dict(input_ids=[[1, 2], []]), "empty"),
        (dict(input_ids=[[1, 200]]), "vocab_size"),
        (dict(input_ids=[[1, -1]]), "vocab_size"),
        (dict(max_new_tokens=10_000), "cache size"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(do_sample=True, temperature=0.0), "temperature"),
        (dict(do_sample=True, top_p=0.0), "top_p"),
        (dict(do_sample=True, top_k=-1), "top_k"),
        (dict(input_ids=torch.ones(3, dtype=torch.long)), "input_ids"),
        (dict(input_ids=[]), "no prompt"),
    ],
)
def test_bad_input(tiny, kwargs, match):
    model, _ = tiny
    args = dict(input_ids=[[1, 2, 3]], max_new_tokens=4)
    args.update(kwargs)
    calls, hooks = count_positions(model)
    try:
        with pytest.raises(ValueError, match=match):
            lk.generate(model, **args)
    finally:
        for h in hooks:
            h.remove()
    assert calls == [], "the model ran before the input was rejected"
