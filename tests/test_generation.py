"""generate(): greedy self-speculation == autoregressive == transformers, no
recomputation, lossless sampling over several iterations, stopping rules,
stats, bad input.

Exactness tests run on two models: a random one that accepts few drafts, and
one whose late layers are damped so that drafts agree with the full model most
of the time (long accepted runs, bonus tokens, EOS inside an accepted run, late
verify positions deciding the output). Expected tokens *and* per-iteration
accepted counts are computed from the transformers model alone.
"""

import functools
import itertools

import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels.generation import MAX_SPECULATIONS

from helpers import damp_late_layers, make_hf_checkpoint

transformers = pytest.importorskip("transformers")

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [1, 2, 3]]


@pytest.fixture(scope="module", params=["low_acceptance", "high_acceptance"])
def tiny(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    edit = damp_late_layers(1) if request.param == "high_acceptance" else None
    hf = make_hf_checkpoint(path, "gqa_tied", num_hidden_layers=5, edit=edit)
    return lk.LlamaForCausalLM.from_pretrained(path), hf


def hf_greedy(hf, prompt, n):
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


LONGEST = 64  # every test below asks for at most LONGEST - MAX_SPECULATIONS - 1 tokens


@functools.lru_cache(maxsize=None)
def hf_tokens_and_early_argmax(hf, prompt):
    """transformers' greedy continuation of `prompt` (LONGEST tokens) and, for
    each exit layer E, the early-exit argmax predicting generated token j from
    prompt + tokens[:j]: early[E][j]."""
    toks = hf_greedy(hf, list(prompt), LONGEST)
    with torch.no_grad():
        hidden = hf(torch.tensor([list(prompt) + toks]), output_hidden_states=True).hidden_states
        early = {E: hf.lm_head(hf.model.norm(hidden[E]))[0, len(prompt) - 1:].argmax(-1).tolist()
                 for E in range(1, hf.config.num_hidden_layers)}
    return toks, early


def expected_run(hf, prompts, n, E, k, eos=()):
    """What generate(exit_layer=E, num_speculations=k) must return: per row the
    tokens, and per iteration (accepted drafts, tokens emitted). A draft is the
    early exit's argmax; while drafts equal the full model's tokens the next
    draft sees the same prefix as the full model, so one pass over the greedy
    sequence gives every accepted count."""
    seqs, iters = [], []
    for p in prompts:
        toks, early = hf_tokens_and_early_argmax(hf, tuple(p))
        out, row = [toks[0]], []
        done = n == 1 or toks[0] in eos
        while not done:
            j, a = len(out), 0
            while a < k and early[E][j + a] == toks[j + a]:
                a += 1
            new = toks[j : j + a + 1][: n - len(out)]
            stop = next((i for i, t in enumerate(new) if t in eos), None)
            if stop is not None:
                new = new[: stop + 1]
            row.append((a, len(new)))
            out += new
            done = len(out) == n or stop is not None
        seqs.append(out)
        iters.append(row)
    return seqs, iters


def check_stats(stats, iters, k):
    row_steps = sum(len(r) for r in iters)
    drafted, accepted = k * row_steps, sum(a for r in iters for a, _ in r)
    emitted = sum(e for r in iters for _, e in r)
    assert (stats["drafted"], stats["accepted"]) == (drafted, accepted)
    assert stats["steps"] == max(len(r) for r in iters)
    assert stats["acceptance_rate"] == (accepted / drafted if drafted else None)
    assert stats["tokens_per_step"] == (emitted / row_steps if row_steps else None)
    assert 0 < stats["prefill_s"] < stats["time_s"]  # the prompts' part of the decoding time


def check_generate(model, hf, prompts, n, E, k, eos=()):
    out = lk.generate(model, prompts, max_new_tokens=n, exit_layer=E, num_speculations=k, eos_token_id=list(eos))
    seqs, iters = expected_run(hf, prompts, n, E, k, eos)
    assert out.sequences == seqs, (E, k)
    check_stats(out.stats, iters, k)
    return out, iters


@pytest.mark.parametrize("B", [1, 4])
def test_greedy_selfspec_equals_autoregressive_and_transformers(tiny, B, cpu_level):
    # On the cpu backend at every CPU level (the default backend of CPU tensors).
    model, hf = tiny
    L = model.num_layers
    prompts = PROMPTS[:B]
    n = 24
    ar = lk.generate(model, prompts, max_new_tokens=n, eos_token_id=[])
    assert ar.sequences == [hf_tokens_and_early_argmax(hf, tuple(p))[0][:n] for p in prompts]
    assert ar.stats["drafted"] == 0 and ar.stats["acceptance_rate"] is None and ar.stats["tokens_per_step"] == 1.0
    for E, k in [(1, 1), (1, 8), (2, 4), (L - 1, 1), (L - 1, 8), (3, MAX_SPECULATIONS)]:
        out, _ = check_generate(model, hf, prompts, n, E, k)
        assert out.sequences == ar.sequences


def test_long_drafts_decide_late_verify_positions(tiny, request, cpu_level):
    # k = 15: on the high-acceptance model runs of 7+ accepted drafts happen, so
    # verify positions 7..15 decide emitted tokens (and a bonus at k = 15).
    model, hf = tiny
    _, iters = check_generate(model, hf, PROMPTS, 40, 1, MAX_SPECULATIONS)
    longest = max(a for r in iters for a, _ in r)
    if "high" in request.node.callspec.id:
        assert longest >= 7, longest
        assert any(e >= 8 for r in iters for _, e in r)


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
    # Prefill: every layer once over the right-padded prompts (the batch's free
    # slots are filled in one call). Each iteration: every layer processes k+1
    # positions per slot (the batch keeps its shape while rows finish: a free
    # slot computes at position 0 and is discarded): drafts + last draft for
    # layers < E, one verify pass for layers >= E.
    prefill = len(prompts) * T
    for layer in range(L):
        assert per_layer[layer] == prefill + steps * len(prompts) * (k + 1), layer
    for layer in range(E):
        assert sorted({S for i, S, B in calls if i == layer}) == [1, T]
        assert sum(1 for i, S, B in calls if i == layer and S == 1 and B == len(prompts)) == (k + 1) * steps
    for layer in range(E, L):
        assert sum(1 for i, S, B in calls if i == layer and S == k + 1 and B == len(prompts)) == steps


# --------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("sv")

    def flatten(model):  # flatter logits: every 4-token sequence is likely enough to count
        model.lm_head.weight.mul_(0.3)

    hf = make_hf_checkpoint(path, "mha_untied", vocab_size=6, seed=3, edit=flatten)
    return lk.LlamaForCausalLM.from_pretrained(path), hf


def exact_joint_probs(hf, prompt, n, warp):
    """P(t_1 .. t_n) of autoregressive sampling from the transformers model
    with transformers' own logits warpers (independent of warp_probs), as a
    flat [V**n] tensor indexed t_1 * V**(n-1) + ... + t_n."""
    procs = transformers.LogitsProcessorList()
    if warp["temperature"] != 1.0:
        procs.append(transformers.TemperatureLogitsWarper(warp["temperature"]))
    if warp["top_k"]:
        procs.append(transformers.TopKLogitsWarper(warp["top_k"]))
    if warp["top_p"] < 1.0:
        procs.append(transformers.TopPLogitsWarper(warp["top_p"]))
    V = hf.config.vocab_size
    joint = torch.ones(1, dtype=torch.float64)
    for step in range(n):
        prefixes = torch.tensor(list(itertools.product(range(V), repeat=step)), dtype=torch.long).reshape(V**step, step)
        ids = torch.cat([torch.tensor(prompt).expand(V**step, -1), prefixes], dim=1)
        with torch.no_grad():
            scores = procs(ids, hf(ids).logits[:, -1].float())
        joint = (joint[:, None] * torch.softmax(scores.double(), dim=-1)).reshape(-1)
    return joint


def chi2_pvalue(counts, probs, N):
    """Pearson's test; cells expected below 5 are pooled into one."""
    chi2 = pytest.importorskip("scipy.stats").chi2
    expected = probs * N
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum().item()
    return stat, chi2.sf(stat, int(keep.sum()) - 1)


PLAIN = dict(temperature=1.0, top_k=0, top_p=1.0)
WARPED = dict(temperature=0.7, top_k=4, top_p=0.9)


@pytest.mark.parametrize("mode,warp", [("autoregressive", WARPED), ("k1", PLAIN), ("k2", PLAIN), ("k2", WARPED),
                                       ("adaptive", WARPED), ("k2-reduced", PLAIN)],
                         ids=["ar-warped", "k1-plain", "k2-plain", "k2-warped", "adaptive-warped", "k2-reduced-draft"])
def test_sampling_joint_distribution_of_four_tokens(small_vocab, mode, warp):
    # Four tokens span two or three speculative iterations: the bonus token, the
    # Philox offset advancing between iterations and the residual all matter.
    # 60k rows in one generate() call; the bugs this targets give p < 1e-30.
    model, hf = small_vocab
    prompt, n, N = [1, 4, 2], 4, 60_000
    V = model.config.vocab_size
    exit_layer, k = {"autoregressive": (None, 1), "k1": (1, 1), "k2": (1, 2), "adaptive": (1, 3),
                     "k2-reduced": (1, 2)}[mode]
    # Reduced draft head (generation.draft_vocab): the draft proposes tokens 0, 2
    # and 3 only; the target still samples all 6.
    draft_vocab = [0, 2, 3] if mode == "k2-reduced" else None
    # Adaptive: rows draft 0..3 tokens by confidence and their own acceptance.
    speculation = "adaptive" if mode == "adaptive" else "static"
    # Ops on a 6-token vocabulary run several times faster on one thread than
    # on a contended thread pool.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = lk.generate(model, [prompt] * N, max_new_tokens=n, exit_layer=exit_layer, num_speculations=k,
                          do_sample=True, seed=11, eos_token_id=[], speculation=speculation,
                          draft_vocab=draft_vocab, **warp)
    finally:
        torch.set_num_threads(threads)
    seqs = torch.tensor(out.sequences)
    assert seqs.shape == (N, n)
    flat = sum(seqs[:, i] * V ** (n - 1 - i) for i in range(n))
    counts = torch.bincount(flat, minlength=V**n).double()
    probs = exact_joint_probs(hf, prompt, n, warp)
    assert counts[probs == 0].sum() == 0, "a sequence outside the top-k/top-p support was sampled"
    stat, pval = chi2_pvalue(counts, probs, N)
    assert pval > 1e-4, (stat, pval)


@pytest.mark.parametrize("k", [1, 2])
def test_per_request_streams_distribution_over_six_tokens(small_vocab, k):
    # Engine(do_sample=True) without a shared seed: each request draws from its
    # own generator and its own Philox (seed, offset), advanced per iteration
    # (generation.sampling.RowStreams). Requests with distinct seeds are
    # independent samples of the autoregressive joint distribution. Six tokens
    # span several iterations; a stream whose offset never advances reuses its
    # first iteration's coins and exponential race in every later one, which
    # ties tokens of different iterations together: every pair (t_i, t_j) is
    # tested against its exact marginal (36 cells each, Bonferroni over pairs).
    model, hf = small_vocab
    prompt, n, N = [1, 4, 2], 6, 6000
    V = model.config.vocab_size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = lk.Engine(model, max_batch_size=N, exit_layer=1, num_speculations=k, do_sample=True)
        for i in range(N):
            engine.add(prompt, max_new_tokens=n, eos_token_id=[], seed=1000 * k + i)
        outs = engine.run()
    finally:
        torch.set_num_threads(threads)
    seqs = torch.tensor([o.tokens for o in outs])
    assert seqs.shape == (N, n) and all(o.error is None for o in outs)
    joint = exact_joint_probs(hf, prompt, n, PLAIN).reshape([V] * n)
    pairs = list(itertools.combinations(range(n), 2))
    for i, j in pairs:
        probs = joint.sum(dim=[d for d in range(n) if d not in (i, j)]).reshape(-1)
        counts = torch.bincount(seqs[:, i] * V + seqs[:, j], minlength=V * V).double()
        stat, pval = chi2_pvalue(counts, probs, N)
        assert pval > 1e-4 / len(pairs), (i, j, stat, pval)


def test_every_verify_sampling_call_draws_fresh_random_numbers(small_vocab, monkeypatch):
    # The Philox (seed, offset) pair must never repeat within a generate():
    # a repeated pair reuses the previous iteration's coins and race, which
    # the joint test above only sees at low acceptance.
    from layerskip_kernels import ops

    model, _ = small_vocab
    calls = []
    real = ops.verify_sampling

    def recording(draft_tokens, draft_probs, target_probs, seed, offset, *rest, **kw):
        calls.append((seed, offset))
        return real(draft_tokens, draft_probs, target_probs, seed, offset, *rest, **kw)

    monkeypatch.setattr(ops, "verify_sampling", recording)
    lk.generate(model, [[1, 4, 2], [3, 5]], max_new_tokens=12, exit_layer=1, num_speculations=1, do_sample=True,
                seed=7, eos_token_id=[])
    assert len(calls) >= 5  # several iterations (k = 1, 12 tokens)
    assert len(set(calls)) == len(calls), calls


def test_seeded_sampling_is_reproducible(small_vocab):
    model, _ = small_vocab
    run = lambda seed: lk.generate(model, [[1, 4, 2], [3, 5], [0, 1, 2, 3]], max_new_tokens=12, exit_layer=2, do_sample=True, seed=seed,
                                   eos_token_id=[]).sequences
    assert run(5) == run(5)
    assert run(5) != run(6)


# --------------------------------------------------------------------------- stopping


def inside_accepted_runs(seqs, iters):
    """(row, index) of tokens emitted as accepted drafts with more tokens of the
    same iteration after them, first occurrences in their row only."""
    found = []
    for r, (seq, row) in enumerate(zip(seqs, iters)):
        j = 1  # token 0 comes from prefill
        for a, e in row:
            found += [(r, i) for i in range(j, j + min(a, e - 1)) if seq[i] not in seq[:i]]
            j += e
    return found


def test_eos_inside_accepted_run_and_several_ids(tiny, request):
    model, hf = tiny
    n, E, k = 24, 1, 6
    seqs, iters = expected_run(hf, PROMPTS, n, E, k)
    inside = inside_accepted_runs(seqs, iters)
    if "high" in request.node.callspec.id:
        assert len({r for r, _ in inside}) >= 2, "the high-acceptance model must put EOS inside accepted runs"
    # One EOS id that sits inside an accepted run (the low-acceptance model may
    # have none: then a token row 0 emits at position 5), then two ids that stop
    # different rows.
    r0, i0 = inside[0] if inside else (0, 5)
    first = seqs[r0][i0]
    other = next(((r, i) for r, i in inside if r != r0 and seqs[r][i] != first), None)
    second = seqs[other[0]][other[1]] if other else seqs[(r0 + 1) % len(seqs)][3]
    for eos in ([first], [first, second]):
        out, _ = check_generate(model, hf, PROMPTS, n, E, k, eos=eos)
        assert out.sequences[r0][-1] == first and len(out.sequences[r0]) <= i0 + 1
        ar = lk.generate(model, PROMPTS, max_new_tokens=n, eos_token_id=eos)
        assert ar.sequences == out.sequences


def test_exact_max_new_tokens(tiny):
    model, hf = tiny
    for n in (1, 2, 7):
        check_generate(model, hf, PROMPTS, n, 3, 8)


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
