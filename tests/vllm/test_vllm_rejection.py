"""Our acceptance kernels as vLLM's rejection sampler (integrations/vllm_rejection.py),
on the same inputs as vLLM 0.32.0's own: greedy output identical (ragged
batches with rows of 0 drafts, mixed greedy/random rows), random rows
distributed as the target (chi-square), with and without draft probabilities;
the boundary; and where vLLM's CPU path loses the temperature (the sampling
bias of docs/engines.md, "vLLM")."""

import dataclasses

import pytest
import torch

from layerskip_kernels.integrations import vllm_rejection as vr

chi2 = pytest.importorskip("scipy.stats").chi2


@pytest.fixture(scope="module", autouse=True)
def cpu_kernels():
    # vLLM's rejection kernels are Triton kernels; without Triton-CPU its CPU
    # platform registers C++ fallbacks, which the engine does at start-up.
    from vllm.platforms import current_platform

    current_platform.register_triton_kernel_overrides()


def metadata(temperature=None, generators=None, top_k=None, top_p=None):
    """vLLM's SamplingMetadata for B rows: temperature None = all greedy; 0 marks a greedy row."""
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    B = 1 if temperature is None else temperature.shape[0]
    return SamplingMetadata(
        temperature=temperature, all_greedy=temperature is None,
        all_random=temperature is not None and bool((temperature > 0).all()),
        top_p=top_p, top_k=top_k, generators=generators or {}, max_num_logprobs=None, no_penalties=True,
        prompt_token_ids=None, frequency_penalties=torch.zeros(B), presence_penalties=torch.zeros(B),
        repetition_penalties=torch.ones(B), output_token_ids=[[] for _ in range(B)], allowed_token_ids_mask=None,
        bad_words_token_ids={}, logitsprocs=LogitsProcessors(), spec_token_ids=None)


def vllm_rejection_sample(draft, nums, draft_probs, logits, bonus, md):
    """vLLM's own `rejection_sample` (the function under its RejectionSampler.forward)."""
    from vllm.v1.sample.rejection_sampler import rejection_sample

    cu = torch.tensor(nums, dtype=torch.int32).cumsum(0).to(torch.int32)
    return rejection_sample(draft.to(torch.int32), nums, max(nums), cu, draft_probs, logits,
                            bonus.reshape(-1, 1), md)


def ragged_greedy_case(nums, V, seed):
    """Drafts agreeing with the target's argmax on a prefix of varying length
    (ties included: logits quantized), over the ragged layout."""
    g = torch.Generator().manual_seed(seed)
    N = sum(nums)
    logits = (torch.randn(N, V, generator=g) * 2).round() / 2
    draft = torch.randint(0, V, (N,), generator=g)
    start = 0
    for b, n in enumerate(nums):
        agree = (b * 7 + seed) % (n + 1)
        draft[start : start + agree] = logits[start : start + agree].argmax(-1)
        start += n
    bonus = torch.randint(0, V, (len(nums),), generator=g)
    return draft, logits, bonus


BATCHES = [[3], [0], [1, 0, 2], [4, 4, 4, 4], [0, 5, 1, 0, 3, 2, 0], [2] * 9 + [0, 1]]


@pytest.mark.parametrize("i,nums", list(enumerate(BATCHES)))
def test_greedy_identical_to_vllm(i, nums):
    draft, logits, bonus = ragged_greedy_case(nums, 1000, seed=i)
    want = vllm_rejection_sample(draft, nums, None, logits, bonus, metadata())
    got = vr.rejection_sample(draft, nums, None, logits, bonus)
    assert got.dtype == want.dtype == torch.int32 and got.shape == want.shape == (len(nums), max(nums) + 1)
    assert torch.equal(got, want)
    # Every outcome occurs somewhere: full acceptance with the bonus, and a rejection.
    if i >= 3:
        full = torch.tensor([int(r[n]) == int(b) for r, n, b in zip(got, nums, bonus)])
        assert full.any() and not full.all()


def test_greedy_rows_of_a_mixed_batch_identical_to_vllm():
    """Mixed greedy/random rows: greedy rows equal vLLM's, random rows emit
    valid tokens; negative (padding) draft ids end a row's draft as in vLLM."""
    nums = [0, 5, 1, 0, 3, 2, 4, 1]
    draft, logits, bonus = ragged_greedy_case(nums, 500, seed=3)
    draft[2] = -1  # the third of row 1's drafts (tokens 0..4) is padding
    temperature = torch.tensor([0.0, 0.0, 1.0, 0.7, 0.0, 1.3, 0.0, 1.0])
    md = metadata(temperature)
    want = vllm_rejection_sample(draft, nums, None, logits.clone(), bonus, md)
    got = vr.rejection_sample(draft, nums, None, logits.clone(), bonus, temperature == 0)
    greedy = temperature == 0
    assert torch.equal(got[greedy], want[greedy])
    assert got[1, :4].tolist() == [int(draft[0]), int(draft[1]), int(logits[2].argmax()), -1]  # 2 agree, then padding
    for row, n in zip(got[~greedy], torch.tensor(nums)[~greedy]):
        emitted = row[row >= 0]
        assert 1 <= emitted.numel() <= n + 1 and (row[emitted.numel():] == -1).all() and (emitted < 500).all()


def forward_case(i, nums, V=300, temperature=None):
    """SpecDecodeMetadata in the runner's layout (each row's drafted positions,
    then its bonus position) and logits [N + B, V] with ties. Random rows
    (temperature > 0) get drafts and bonus tokens of target probability 1, so
    every sampler emits the same tokens for them."""
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

    g = torch.Generator().manual_seed(i)
    drafts = [torch.randint(0, V, (n,), generator=g).tolist() for n in nums]
    md = SpecDecodeMetadata.make_dummy(drafts, torch.device("cpu"))
    sampled = torch.tensor([n + 1 for n in nums]).cumsum(0)
    md.bonus_logits_indices = (sampled - 1).to(torch.int32)
    md.target_logits_indices = torch.cat([torch.arange(s - n - 1, s - 1) for s, n in zip(sampled, nums)]) \
        .to(torch.int32)
    logits = (torch.randn(int(sampled[-1]), V, generator=g) * 2).round() / 2
    t = md.target_logits_indices.long()
    md.draft_token_ids[::2] = logits[t[::2]].argmax(-1).to(torch.int32)  # let some drafts agree with the target
    for b in (() if temperature is None else (temperature > 0).nonzero().flatten().tolist()):
        s, n = int(sampled[b]), nums[b]
        certain = torch.cat([md.draft_token_ids[sum(nums[:b]) : sum(nums[:b]) + n].long(),
                             torch.randint(0, V, (1,), generator=g)])
        logits[s - n - 1 : s] = -1e9
        logits[torch.arange(s - n - 1, s), certain] = 0.0
    return md, logits


@pytest.mark.parametrize("max_num_logprobs", [None, 0, 3])
def test_all_greedy_batches_take_vllms_path(monkeypatch, max_num_logprobs):
    """LayerSkipRejectionSampler.forward hands all-greedy batches to vLLM's
    RejectionSampler.forward (exact there, and faster): identical tokens and
    logprobs, and our rejection_sample never runs."""
    from vllm.v1.sample.rejection_sampler import RejectionSampler
    from vllm.v1.sample.sampler import Sampler

    ours, theirs = vr.LayerSkipRejectionSampler(Sampler()), RejectionSampler(Sampler())
    assert isinstance(ours, RejectionSampler)
    sm = dataclasses.replace(metadata(), max_num_logprobs=max_num_logprobs)
    assert ours.uses_vllms_path(sm) and not ours.uses_vllms_path(metadata(torch.tensor([0.0, 1.0])))

    def not_ours(*a, **k):
        raise AssertionError("our rejection_sample ran on an all-greedy batch")

    monkeypatch.setattr(vr, "rejection_sample", not_ours)
    for i, nums in enumerate(BATCHES):
        md, logits = forward_case(i, nums)
        want, got = theirs(md, None, logits.clone(), sm), ours(md, None, logits.clone(), sm)
        assert torch.equal(got.sampled_token_ids, want.sampled_token_ids), nums
        if max_num_logprobs is not None:
            for name in ("logprob_token_ids", "logprobs", "selected_token_ranks"):
                assert torch.equal(getattr(got.logprobs_tensors, name), getattr(want.logprobs_tensors, name))


@pytest.mark.parametrize("max_num_logprobs", [None, 0, 3])
def test_sampler_forward_identical_to_vllms_on_mixed_batches(monkeypatch, max_num_logprobs):
    """LayerSkipRejectionSampler.forward on batches with greedy and random rows
    runs our kernels (greedy rows through verify_greedy) and matches vLLM's
    RejectionSampler.forward given a correct temperature expansion (ours: on
    CPU, vLLM's loses it, below): tokens, and logprobs when asked for. Random
    rows draft tokens of target probability 1, so their tokens are determined."""
    from vllm.v1.sample import rejection_sampler as rs
    from vllm.v1.sample.sampler import Sampler

    ours, theirs = vr.LayerSkipRejectionSampler(Sampler()), rs.RejectionSampler(Sampler())
    calls, real = [], vr.rejection_sample
    monkeypatch.setattr(vr, "rejection_sample", lambda *a, **k: calls.append(a) or real(*a, **k))
    for i, nums in enumerate(BATCHES):
        temperature = torch.tensor([0.0 if b % 2 == 0 else 0.8 for b in range(len(nums))])
        md, logits = forward_case(i, nums, temperature=temperature)
        sm = dataclasses.replace(metadata(temperature), max_num_logprobs=max_num_logprobs)
        assert not ours.uses_vllms_path(sm)
        with monkeypatch.context() as m:
            m.setattr(rs, "apply_sampling_constraints",
                      lambda lg, cu, s: vr.apply_sampling_constraints(lg, md.num_draft_tokens, s))
            want = theirs(md, None, logits.clone(), sm)
        got = ours(md, None, logits.clone(), sm)
        assert torch.equal(got.sampled_token_ids, want.sampled_token_ids), nums
        if max_num_logprobs is not None:
            for name in ("logprob_token_ids", "logprobs", "selected_token_ranks"):
                assert torch.equal(getattr(got.logprobs_tensors, name), getattr(want.logprobs_tensors, name)), \
                    (name, nums)
    assert len(calls) == len(BATCHES)


@pytest.mark.parametrize("with_draft_probs", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_certain_drafts_end_with_the_exact_bonus(seed, with_draft_probs):
    """Drafts of target probability 1 are always accepted, in greedy, seeded
    and unseeded random rows alike, and each full row ends with its own bonus
    token; rows without drafts emit only theirs."""
    V = 97
    g = torch.Generator().manual_seed(seed)
    kinds = ["greedy", "seeded", "empty", "random", "seeded", "greedy", "random", "empty", "random"]
    nums = [0 if k == "empty" else int(torch.randint(1, 6, (), generator=g)) for k in kinds]
    N = sum(nums)
    draft = torch.randint(0, V, (N,), generator=g)
    logits = torch.full((N, V), -1e9)
    logits[torch.arange(N), draft] = torch.randn(N, generator=g)  # softmax: exactly 1 at the draft
    bonus = torch.randperm(V, generator=g)[: len(kinds)]  # distinct per row
    draft_probs = torch.softmax(torch.randn(N, V, generator=g), -1) if with_draft_probs else None
    is_greedy = torch.tensor([k == "greedy" for k in kinds])
    gens = {b: torch.Generator().manual_seed(seed * 10 + b) for b, k in enumerate(kinds) if k == "seeded"}
    out = vr.rejection_sample(draft, nums, draft_probs, logits, bonus, is_greedy, gens)
    start = 0
    for b, n in enumerate(nums):
        assert out[b, :n].tolist() == draft[start : start + n].tolist(), (kinds[b], b)
        assert int(out[b, n]) == int(bonus[b]), (kinds[b], b)
        assert (out[b, n + 1 :] == -1).all()
        start += n


# --------------------------------------------------------------------------- random rows: distributions


def counts_test(tokens, p, what):
    """Chi-square of emitted tokens against the distribution p [V]."""
    V = p.numel()
    counts = torch.bincount(tokens, minlength=V).double()
    expected = p.double() * tokens.numel()
    keep = expected > 0
    assert counts[~keep].sum() == 0, f"{what}: tokens of probability 0 emitted"
    stat = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    pval = chi2.sf(stat, int(keep.sum()) - 1)
    assert pval > 1e-4, f"{what}: chi2={stat:.1f}, p={pval:.2g}"


@pytest.mark.parametrize("with_draft_probs", [True, False])
def test_random_rows_follow_the_target_distribution(with_draft_probs):
    """Ragged rows of 0..k drafts, one target distribution per position. With
    draft probabilities the drafts are sampled from q; without, every row
    proposes the same tokens (a deterministic proposal, as a greedy draft).
    Ours and vLLM's sampler each emit tokens distributed as the target at every
    position (chi-square), and accept at the same rate."""
    k, V, R = 3, 12, 20_000
    g = torch.Generator().manual_seed(5 + with_draft_probs)
    p = torch.softmax(torch.randn(k + 1, V, generator=g) * 1.5, -1)  # [k + 1, V] target per position
    q = torch.softmax(torch.randn(k, V, generator=g) * 1.5, -1)
    nums = [r % (k + 1) for r in range(R)]
    pos = torch.cat([torch.arange(n) for n in nums])  # [N] position of each drafted token
    if with_draft_probs:
        draft = torch.multinomial(q[pos], 1, generator=g).flatten()
        draft_probs = q[pos].contiguous()
    else:
        # likely drafts, the last one not the target's argmax: every position is reached and rejected
        fixed = torch.stack([p[0].argmax(), p[1].argmax(), p[2].topk(2).indices[1]])
        draft = fixed[pos]
        draft_probs = None
    logits = p[pos].log()
    bonus = torch.multinomial(p[torch.tensor(nums)], 1, generator=g).flatten()
    md = metadata(torch.ones(R))
    torch.manual_seed(11)
    outs = {"ours": vr.rejection_sample(draft, nums, draft_probs, logits.clone(), bonus, torch.zeros(R, dtype=bool)),
            "vLLM": vllm_rejection_sample(draft, nums, draft_probs, logits.clone(), bonus, md)}
    n = torch.tensor(nums)
    accepted = {}
    for name, out in outs.items():
        emitted = (out >= 0).sum(1)
        assert ((emitted >= 1) & (emitted <= n + 1)).all() and (out[:, 0] >= 0).all()
        for j in range(k + 1):
            rows = emitted > j
            counts_test(out[rows, j].long(), p[j], f"{name}, position {j}")
        accepted[name] = (emitted - 1).sum().item() / n.sum().item()
    # acceptance at position 0 is sum_v min(p, q) (q one-hot: p(draft))
    expect0 = (torch.minimum(p[0], q[0]).sum() if with_draft_probs else p[0, fixed[0]]).item()
    drafted0 = n >= 1
    for name, out in outs.items():
        rate0 = (out[drafted0, 0] == draft[(n.cumsum(0) - n)[drafted0]].int()).double().mean().item()
        assert abs(rate0 - expect0) < 5 * (expect0 * (1 - expect0) / int(drafted0.sum())) ** 0.5, (name, rate0, expect0)
    assert abs(accepted["ours"] - accepted["vLLM"]) < 0.02, accepted


def test_seeded_rows_do_not_depend_on_their_batch():
    """A request with its own generator (SamplingParams(seed=...)) gets the
    same tokens whatever rows share its step and whatever the global RNG; a
    row without drafts leaves its generator untouched (as vLLM does)."""
    V = 50
    g = torch.Generator().manual_seed(0)
    mine = torch.randn(3, V, generator=g)  # the seeded request's logits at its 3 drafted positions

    def run(nums, row, global_seed):
        logits = [torch.randn(n, V, generator=g) for n in nums]
        if nums[row]:
            logits[row] = mine[: nums[row]]
        draft = torch.randint(0, V, (sum(nums),), generator=g)
        start = sum(nums[:row])
        draft[start : start + nums[row]] = torch.tensor([3, 4, 5])[: nums[row]]
        gens = {row: torch.Generator().manual_seed(1234)}
        torch.manual_seed(global_seed)
        out = vr.rejection_sample(draft, nums, None, torch.cat(logits), torch.zeros(len(nums), dtype=torch.long),
                                  torch.zeros(len(nums), dtype=torch.bool), gens)
        return out[row, :4], gens[row].get_state()

    outs = [run([3, 2, 1], 0, 1)[0], run([1, 4, 3], 2, 2)[0], run([2, 3, 0, 5], 1, 3)[0]]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    fresh = torch.Generator().manual_seed(1234).get_state()
    assert torch.equal(run([0, 1], 0, 4)[1], fresh)
    assert not torch.equal(run([2, 1], 0, 4)[1], fresh)


# --------------------------------------------------------------------------- boundary


def good():
    nums = [2, 0, 1]
    return dict(draft_token_ids=torch.tensor([1, 2, 3]), num_draft_tokens=nums, draft_probs=None,
                target_logits=torch.randn(3, 8), bonus_token_ids=torch.tensor([[0], [1], [2]]))


@pytest.mark.parametrize("change,match", [
    (dict(num_draft_tokens=[2, 0]), "target_logits must be float \\[num_tokens = 2"),
    (dict(num_draft_tokens=[2, -1, 2]), "num_draft_tokens must be a list of ints >= 0"),
    (dict(num_draft_tokens=[]), "num_draft_tokens must name at least one request"),
    (dict(num_draft_tokens=torch.tensor([2, 0, 1])), "num_draft_tokens must be a list"),
    (dict(draft_token_ids=torch.tensor([1.0, 2.0, 3.0])), "draft_token_ids must be int"),
    (dict(draft_token_ids=torch.tensor([1, 2])), "draft_token_ids must be int \\[sum\\(num_draft_tokens\\) = 3\\]"),
    (dict(draft_token_ids=torch.tensor([1, 8, 3])), "draft_token_ids must be < vocab size 8"),
    (dict(target_logits=torch.randn(3, 8, 1)), "target_logits must be float"),
    (dict(target_logits=torch.zeros(3, 8, dtype=torch.long)), "target_logits must be float"),
    (dict(bonus_token_ids=torch.tensor([0, 1])), "bonus_token_ids must be int \\[B = 3\\]"),
    (dict(bonus_token_ids=torch.tensor([0, 1, 8])), "bonus_token_ids must be in \\[0, 8\\)"),
    (dict(draft_probs=torch.ones(3, 7)), "draft_probs must be None or float32 \\[num_tokens = 3, V = 8\\]"),
    (dict(draft_probs=torch.ones(3, 8, dtype=torch.float64)), "draft_probs must be None or float32"),
    (dict(is_greedy=torch.tensor([1, 0, 1])), "is_greedy must be None \\(all greedy\\) or bool \\[B = 3\\]"),
    (dict(is_greedy=torch.zeros(3, dtype=bool), generators={3: torch.Generator()}), "generators must map"),
    (dict(is_greedy=torch.zeros(3, dtype=bool), generators=[torch.Generator()]),
     "generators must be None or a Mapping of request index to torch.Generator, got list"),
    (dict(max_spec_len=1), "max_spec_len must be an int in \\[max\\(num_draft_tokens\\) = 2, 128\\]"),
    (dict(draft_token_ids=[1, 2, 3]), "draft_token_ids must be a torch.Tensor"),
])
def test_bad_inputs_name_the_argument(change, match):
    kw = dict(good(), **change)
    with pytest.raises((ValueError, TypeError), match=match):
        vr.rejection_sample(**kw)


@pytest.mark.parametrize("temperature", [None, torch.ones(2)])
def test_apply_sampling_constraints_names_the_mismatch(temperature):
    with pytest.raises(ValueError, match="logits must be \\[sum\\(num_draft_tokens\\) = 4, V\\], got \\(3, 8\\)"):
        vr.apply_sampling_constraints(torch.randn(3, 8), [2, 2], metadata(temperature))


def test_good_inputs_pass_the_boundary():
    out = vr.rejection_sample(**good())
    assert out.shape == (3, 3) and int(out[1, 0]) == 1 and (out[1, 1:] == -1).all()


def test_synthetic_acceptance_is_refused():
    from vllm.v1.sample.sampler import Sampler

    spec = type("Spec", (), {"rejection_sample_method": "synthetic"})()
    with pytest.raises(ValueError, match="rejection_sample_method='synthetic'"):
        vr.LayerSkipRejectionSampler(Sampler(), spec)


@pytest.mark.parametrize("version,ok", [("0.32.0", True), ("0.32.1+cpu", True), ("0.33.0", False),
                                        ("0.31.2", False)])
def test_sampler_refuses_an_untested_vllm(monkeypatch, version, ok):
    import vllm

    monkeypatch.setattr(vllm, "__version__", version)
    if ok:
        assert issubclass(vr._sampler_class(), vllm.v1.sample.rejection_sampler.RejectionSampler)
    else:
        with pytest.raises(RuntimeError, match=f"running vLLM {version}: drop worker_cls"):
            vr._sampler_class()


# --------------------------------------------------------------------------- the worker's swap


def stub_worker(sampler="v1", v2=False, spec=True):
    """A worker as LayerSkipWorker.init_device sees it after vLLM's: its runner's
    rejection_sampler vLLM's V1 one ("v1"), absent (None: a V1 runner off the last
    pipeline rank), or the given object."""
    from types import SimpleNamespace

    from vllm.v1.sample.rejection_sampler import RejectionSampler
    from vllm.v1.sample.sampler import Sampler

    runner = SimpleNamespace(sampler=Sampler(), device=torch.device("cpu"))
    if sampler == "v1":
        runner.rejection_sampler = RejectionSampler(runner.sampler)
    elif sampler is not None:
        runner.rejection_sampler = sampler
    spec_config = SimpleNamespace(rejection_sample_method="strict") if spec else None
    return SimpleNamespace(vllm_config=SimpleNamespace(speculative_config=spec_config), use_v2_model_runner=v2,
                           model_runner=runner)


def test_worker_swaps_vllms_v1_rejection_sampler():
    w = stub_worker()
    vr._swap_rejection_sampler(w, vr.LayerSkipRejectionSampler)
    assert type(w.model_runner.rejection_sampler) is vr.LayerSkipRejectionSampler
    assert w.model_runner.rejection_sampler.sampler is w.model_runner.sampler
    kept = w.model_runner.rejection_sampler
    vr._swap_rejection_sampler(w, vr.LayerSkipRejectionSampler)  # already ours: kept
    assert w.model_runner.rejection_sampler is kept


@pytest.mark.parametrize("before_load_model", [True, False])
def test_worker_refuses_model_runner_v2(before_load_model):
    # V2's runner has rejection_sampler = None until load_model, which builds its own.
    w = stub_worker(v2=True)
    if before_load_model:
        w.model_runner.rejection_sampler = None
    with pytest.raises(ValueError, match="does not support Model Runner V2: set VLLM_USE_V2_MODEL_RUNNER=0"):
        vr._swap_rejection_sampler(w, vr.LayerSkipRejectionSampler)


def test_worker_leaves_runners_without_a_rejection_sampler():
    # V1 builds it on the last pipeline rank only; without speculation, nowhere.
    w = stub_worker(None)
    vr._swap_rejection_sampler(w, vr.LayerSkipRejectionSampler)
    assert not hasattr(w.model_runner, "rejection_sampler")
    w = stub_worker(spec=False)
    vr._swap_rejection_sampler(w, vr.LayerSkipRejectionSampler)
    assert type(w.model_runner.rejection_sampler).__name__ == "RejectionSampler"


def test_worker_refuses_an_unknown_rejection_sampler():
    w = stub_worker(object())
    with pytest.raises(ValueError, match="rejection_sampler is a object"):
        vr._swap_rejection_sampler(w, vr.LayerSkipRejectionSampler)


@pytest.mark.parametrize("platform,base", [("cpu", "CPUWorker"), ("cuda", "Worker"), ("xpu", None)])
def test_worker_base_by_platform(monkeypatch, platform, base):
    import vllm.platforms

    # the real platform's class (importing vLLM's workers reads it), asked as another
    fake = type("XPUPlatform", (type(vllm.platforms.current_platform),), {
        "device_name": platform, "is_cpu": lambda self: platform == "cpu",
        "is_cuda_alike": lambda self: platform == "cuda"})()
    monkeypatch.setattr(vllm.platforms, "current_platform", fake)
    if base is None:
        with pytest.raises(ValueError, match="this platform is XPUPlatform \\('xpu'\\): drop worker_cls"):
            vr._worker_class()
    else:
        assert vr._worker_class().__mro__[1].__name__ == base


# --------------------------------------------------------------------------- where vLLM's CPU path goes wrong


def test_vllm_cpu_expansion_loses_the_temperature():
    """The sampling bias of vLLM 0.32.0's CPU backend (docs/engines.md, "vLLM"):
    RejectionSampler.forward -> apply_sampling_constraints ->
    expand_batch_to_tokens(temperature) runs `expand_kernel`, whose CPU
    fallback (vllm/utils/cpu_triton_utils.py, _expand_kernel_impl) passes
    `_ensure_int64(output)`, a new int64 copy of the float32 output, to the C++
    kernel and never copies it back: the expanded temperatures stay the
    uninitialised memory of `x.new_empty(num_tokens)`. (It also truncates the
    temperatures to int64 on the way in.) Ours expands them correctly. When
    this test fails, vLLM fixed it: re-check docs/engines.md."""
    from vllm.v1.sample import rejection_sampler as rs

    temperature = torch.tensor([0.5, 0.0, 2.0])
    cu = torch.tensor([2, 3, 5], dtype=torch.int32)
    out = rs.expand_batch_to_tokens(temperature, cu, 5, replace_from=0, replace_to=1)
    want = torch.tensor([0.5, 0.5, 1.0, 2.0, 2.0])
    assert not torch.equal(out, want)  # vLLM 0.32.0 on CPU: whatever new_empty held
    sentinel = torch.full((5,), 123.0)
    orig_new_empty = torch.Tensor.new_empty
    try:
        torch.Tensor.new_empty = lambda self, *a, **k: sentinel.clone()
        assert torch.equal(rs.expand_batch_to_tokens(temperature, cu, 5, 0, 1), sentinel)  # never written
    finally:
        torch.Tensor.new_empty = orig_new_empty
    logits = torch.zeros(5, 4)
    logits[:, 1] = 1.0
    md = metadata(temperature)
    got = vr.apply_sampling_constraints(logits.clone(), [2, 1, 2], md)
    assert torch.allclose(got[:, 1], 1.0 / want)


# --------------------------------------------------------------------------- the benchmark runs


def test_bench_tiny_run(tmp_path):
    """bench/bench_vllm_rejection.py --tiny: every case runs through both
    samplers; our greedy rows are exact in every case, vLLM's in all-greedy
    batches only (its CPU backend, above); the path column says which path ours
    took. Times are not looked at."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
    import bench_vllm_rejection

    rows = bench_vllm_rejection.main(["--tiny", "--no-plot", "--out", str(tmp_path / "vr")])
    assert {r["case"] for r in rows} == {"greedy", "random", "random+draft_probs", "mixed"}
    assert all(r["greedy_rows_exact"] for r in rows if r["impl"] == "layerskip" or r["case"] == "greedy")
    # ours hands all-greedy batches to vLLM's path, and runs its own otherwise
    assert {(r["case"] == "greedy", r["path"]) for r in rows if r["impl"] == "layerskip"} == \
        {(True, "vllm"), (False, "layerskip")}
    assert (tmp_path / "vr.csv").exists()
