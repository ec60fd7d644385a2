"""Adaptive drafting (generation.policy): per-row draft lengths, confidence
stop, exit layer changing between iterations. Output stays exact, the shared
cache stays valid."""

import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels.generation.policy import AdaptiveDrafting, Plan, best_k

from helpers import damp_late_layers, make_hf_checkpoint

RAGGED = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [1, 2, 3]]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Six layers; layers >= 2 barely change the residual, so drafts from E >= 2
    run long with some rejections, and E = 1 drafts poorly: both kinds of rows."""
    path = tmp_path_factory.mktemp("adaptive")
    make_hf_checkpoint(path, "gqa_tied", num_hidden_layers=6, edit=damp_late_layers(2))
    return lk.LlamaForCausalLM.from_pretrained(path)


class Scripted:
    """A policy whose plans change every iteration: exit layer cycling over all of
    them, per-row caps from a seeded generator (zeros included), a confidence
    threshold; records what it planned."""

    def __init__(self, L, k_max, threshold=0.5, seed=0):
        self.L, self.k_max, self.threshold = L, k_max, threshold
        self.g = torch.Generator().manual_seed(seed)
        self.plans, self.drafted = [], []

    def plan(self, n, device):
        E = 1 + len(self.plans) % (self.L - 1)
        caps = torch.randint(0, self.k_max + 1, (n,), generator=self.g, dtype=torch.int32)
        p = Plan(E, int(caps.max()) or 1, caps.to(device), self.threshold)
        self.plans.append(p)
        return p

    def reset_row(self, slot):
        pass

    def observe(self, plan, drafted, accepted, active, seconds):
        assert all(0 <= accepted[s] <= drafted[s] <= int(plan.row_caps[s]) for s in active)
        self.drafted += [(drafted[s], int(plan.row_caps[s])) for s in active]


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_scripted_plans_equal_autoregressive(model, batch, threshold):
    prompts = RAGGED[:batch]
    ar = lk.generate(model, prompts, max_new_tokens=30, eos_token_id=[])
    pol = Scripted(model.num_layers, 5, threshold)
    out = lk.generate(model, prompts, max_new_tokens=30, exit_layer=2, num_speculations=5, eos_token_id=[],
                      speculation=pol)
    assert out.sequences == ar.sequences
    assert len({p.exit_layer for p in pol.plans}) == model.num_layers - 1  # E changed mid-generation
    lens = {d for d, cap in pol.drafted}
    assert 0 in lens and len(lens) >= 2  # length-0 rows and other lengths ran
    if threshold == 0:  # no confidence stop: every row drafts its cap
        assert all(d == cap for d, cap in pol.drafted) and len(lens) >= 4
    else:  # some rows stopped drafting before their cap
        assert any(d < cap for d, cap in pol.drafted)


@pytest.mark.parametrize("batch", [1, 4])
def test_adaptive_equals_autoregressive_and_transformers(model, batch, tmp_path):
    transformers = pytest.importorskip("transformers")
    prompts = RAGGED[:batch]
    ar = lk.generate(model, prompts, max_new_tokens=40, eos_token_id=[])
    out = lk.generate(model, prompts, max_new_tokens=40, exit_layer=2, num_speculations=6, eos_token_id=[],
                      speculation="adaptive")
    assert out.sequences == ar.sequences
    model_dir = tmp_path / "m"
    make_hf_checkpoint(model_dir, "gqa_tied", num_hidden_layers=6, edit=damp_late_layers(2))
    hf = transformers.LlamaForCausalLM.from_pretrained(model_dir).eval()
    for p, seq in zip(prompts, out.sequences):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert seq == ref[0, len(p):].tolist()


def test_adaptive_rows_finishing_early_with_continuous_batching(model):
    budgets = [25, 3, 17, 9, 30, 1]
    prompts = RAGGED + RAGGED[:2]
    engine = lk.Engine(model, max_batch_size=3, exit_layer=3, num_speculations=6, speculation="adaptive")
    for p, n in zip(prompts, budgets):
        engine.add(p, max_new_tokens=n, eos_token_id=[])
    got = [o.tokens for o in engine.run()]
    assert got == [lk.generate(model, [p], max_new_tokens=n, eos_token_id=[]).sequences[0]
                   for p, n in zip(prompts, budgets)]


def test_shared_cache_invariant_while_exit_layer_and_lengths_change(model):
    """Before every iteration, each active row's cache positions below its length
    hold exactly the K/V (every layer) of a fresh prefill of its tokens."""
    engine = lk.Engine(model, max_batch_size=4, exit_layer=2, num_speculations=5)
    engine.policy = scripted = Scripted(model.num_layers, 5, threshold=0.5, seed=1)
    checked = []
    real_plan = scripted.plan

    def plan_and_check(n, device):
        for s, act in enumerate(engine.slots):
            if act is None:
                continue
            T = int(engine.cache.seqlens[s])
            ids = act.req.prompt + act.out[:-1]  # the last emitted token is pending, not cached yet
            assert T == len(ids)
            fresh = lk.StaticKVCache.for_model(model, 1, T)
            model.forward_layers(model.embed(torch.tensor([ids])), 0, model.num_layers, fresh)
            torch.testing.assert_close(engine.cache.k[:, s, :, :T], fresh.k[:, 0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(engine.cache.v[:, s, :, :T], fresh.v[:, 0], rtol=1e-4, atol=1e-5)
            checked.append(T)
        return real_plan(n, device)

    scripted.plan = plan_and_check
    for p in RAGGED:
        engine.add(p, max_new_tokens=24, eos_token_id=[])
    with torch.inference_mode():
        engine.run()
    assert len(checked) >= 20 and len({p.exit_layer for p in scripted.plans}) == model.num_layers - 1


def test_adaptive_policy_learns_per_row_acceptance():
    class Tiny:  # the sizes AdaptiveDrafting reads
        num_layers = 8
        model = torch.nn.Module()
        lm_head = torch.nn.Linear(4, 32, bias=False)

    Tiny.model.layers = [torch.nn.Linear(4, 8, bias=False)]
    pol = AdaptiveDrafting(Tiny(), exit_layer=3, k_max=8, warmup=1)
    easy, hard = 0, 1
    for _ in range(10):
        plan = pol.plan(2, "cpu")
        pol.observe(plan, [int(c) for c in plan.row_caps], [int(plan.row_caps[0]), 0], [easy, hard], 0.01)
    caps = pol.plan(2, "cpu").row_caps.tolist()
    assert caps[easy] > caps[hard] >= 1
    assert pol.acceptance(easy) > 0.9 > 0.2 > pol.acceptance(hard)
    # best_k: more drafts pay when they are accepted and cheap.
    assert best_k(0.95, 0.1, 1.0, 8) == 8 and best_k(0.1, 0.5, 1.0, 8) == 1


@pytest.mark.parametrize("bad", ["dynamic", 3, object()])
def test_bad_speculation_is_rejected(model, bad):
    with pytest.raises(ValueError, match="speculation"):
        lk.generate(model, [[1, 2]], max_new_tokens=2, exit_layer=1, speculation=bad)


@pytest.mark.parametrize("exit_layer,num_drafts", [(0, 2), (6, 2), (2, 0), (2, 6)])
def test_a_policy_planning_outside_the_model_or_k_is_refused(model, exit_layer, num_drafts):
    class Bad(Scripted):
        def plan(self, n, device):
            return Plan(exit_layer, num_drafts, None, 0.0)

    with pytest.raises(ValueError, match=r"drafting policy plan\.(exit_layer|num_drafts)"):
        lk.generate(model, [[1, 2]], max_new_tokens=4, exit_layer=2, num_speculations=5,
                    speculation=Bad(model.num_layers, 5))


def test_make_policy_takes_the_recorded_adaptive_settings(model):
    """generate(speculation="adaptive") uses config.json's layerskip.adaptive
    (bench_adaptive.py --record); bad values are refused naming the key."""
    import copy

    from layerskip_kernels.generation.policy import ADAPTIVE_DEFAULTS, make_policy

    default = make_policy("adaptive", model, 3, 5)
    assert (default.threshold, default.per_row_k, default.k_max) == (ADAPTIVE_DEFAULTS["threshold"],
                                                                   ADAPTIVE_DEFAULTS["per_row_k"], 5)
    assert default.exits == [2, 3, 4]  # the bandit's candidates
    recorded = copy.copy(model)
    recorded.config = copy.deepcopy(model.config)
    recorded.config.extra.setdefault("layerskip", {})["adaptive"] = dict(threshold=0.7, per_row_k=False, bandit=False,
                                                                         exit_layer=1, num_speculations=9)
    p = make_policy("adaptive", recorded, 3, 5)
    assert (p.threshold, p.per_row_k, p.k_max, p.exits) == (0.7, False, 5, [3])
    recorded.config.extra["layerskip"]["adaptive"] = dict(threshold=-0.1)
    with pytest.raises(ValueError, match=r"layerskip\.adaptive\.threshold must be a number in \[0, 1\]"):
        make_policy("adaptive", recorded, 3, 5)
    with pytest.raises(ValueError, match=r"layerskip\.adaptive\.threshold"):
        lk.generate(recorded, [[1, 2, 3]], max_new_tokens=2, exit_layer=3, speculation="adaptive")


def test_draft_oracle_replays_what_the_engine_does(model):
    """bench/bench_draft_oracle.py replays drafting rules from one teacher-forced
    pass: for static k its iterations are the engine's own, and the oracle needs
    no more iterations than any static k."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import bench_draft_oracle as oracle

    prompt, n = [5, 6, 7, 8, 9, 10, 11], 40
    ar = lk.generate(model, [prompt], max_new_tokens=n, exit_layer=None).sequences[0]
    matches = {}
    for E in (1, 3):
        m, p = oracle.matches_and_confidence(model, prompt, ar, E)
        matches[E] = m
        assert len(m) == len(p) == n and all(0 < q <= 1 for q in p)
        static_iters = []
        for k in (1, 3, 5):
            out = lk.generate(model, [prompt], max_new_tokens=n, exit_layer=E, num_speculations=k)
            assert out.sequences[0] == ar
            tokens, drafts, iters, cost = oracle.replay(m, p, 0.25, 1.1, "static", k)
            assert tokens == n - 1 and iters == out.stats["steps"], (E, k)  # prefill emits the first
            assert drafts == k * iters and cost == pytest.approx(iters * (k * 0.25 + 1.1))
            static_iters.append(iters)
        tokens, drafts, iters, _ = oracle.replay(m, p, 0.25, 1.1, "oracle", 15)
        # Every oracle draft is accepted (the last iteration may stop at the budget
        # without its bonus token), and no rule needs fewer iterations.
        assert tokens == n - 1 and tokens - iters <= drafts <= tokens - iters + 1
        assert iters <= min(static_iters)
    assert not all(matches[1])  # E = 1 drafts poorly: mismatches seen
