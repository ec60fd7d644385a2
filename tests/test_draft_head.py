"""The draft's int8 LM head (generation.draft_head): the draft scores with an
int8 copy of the head, verification with the model's own. Greedy output stays
the autoregressive output (eager, compiled, with a reduced vocabulary, with the
decoding aids, adaptive drafting); the quantizer's error is bounded; a bad
setting is refused naming draft_quantization. The kernel behind it,
linear_rows_int8, is tested in test_linear_rows and test_fuzz_ops."""

import copy

import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels import reference
from layerskip_kernels.cache import StaticKVCache
from layerskip_kernels.generation import steps
from layerskip_kernels.generation import draft_head
from layerskip_kernels.generation.draft_head import DraftHead, check_draft_quantization, draft_head_for, quantize_rows_int8

from helpers import damp_late_layers, make_hf_checkpoint

RAGGED = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]]
KW = dict(max_new_tokens=20, eos_token_id=[])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Layers >= 2 barely change the residual: drafts from E = 2 are often
    accepted, so the int8 head's drafts matter for what is accepted."""
    path = tmp_path_factory.mktemp("draft_head")
    make_hf_checkpoint(path, "gqa_tied", num_hidden_layers=4, edit=damp_late_layers(2))
    return lk.LlamaForCausalLM.from_pretrained(path)


def test_quantize_rows_int8_error_is_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(37, 70) * torch.rand(37, 1) * 3
    w[5] = 0  # a row of zeros: scale 1, all zeros
    q, scale = quantize_rows_int8(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and q.shape == w.shape and scale.shape == (37,)
    assert int(q.abs().max()) == 127 and scale[5] == 1 and not q[5].any()
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-6).all())
    # Each nonzero row reaches +-127 exactly at its largest magnitude.
    assert bool((q.abs().amax(1)[torch.arange(37) != 5] == 127).all())


def test_quantize_rows_int8_by_blocks_equals_one_block_and_leaves_the_weight():
    """Rows quantized a few at a time give what the whole matrix at once gives
    (a row's scale and values are its own), and an fp32 weight is not changed."""
    torch.manual_seed(1)
    w = torch.randn(23, 50) * torch.rand(23, 1) * 4
    before = w.clone()
    q1, s1 = quantize_rows_int8(w, block_rows=23)
    q5, s5 = quantize_rows_int8(w, block_rows=5)
    assert torch.equal(q1, q5) and torch.equal(s1, s5)
    assert torch.equal(w, before)
    want_scale = w.abs().amax(1) / 127
    assert torch.equal(s1, want_scale) and torch.equal(q1, torch.round(w / want_scale[:, None]).to(torch.int8))
    with pytest.raises(ValueError, match="block_rows"):
        quantize_rows_int8(w, block_rows=0)
    with pytest.raises(ValueError, match="non-finite"):
        quantize_rows_int8(torch.cat([w, torch.full((1, 50), float("nan"))]), block_rows=5)


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(2, 3, dtype=torch.int64),
                                 torch.tensor([[1.0, float("inf")]])])
def test_quantize_rows_int8_refuses_bad_weights(bad):
    with pytest.raises(ValueError, match="weight"):
        quantize_rows_int8(bad)


def test_int8_draft_step_scores_with_the_int8_head(model):
    """steps.draft with an int8 DraftHead: the same hidden state and K/V as the
    model's head, logits = linear_rows_int8 of the normed state."""
    cache_a = StaticKVCache.for_model(model, 2, 16)
    cache_b = StaticKVCache.for_model(model, 2, 16)
    model.rope(16, torch.device("cpu"))
    tok, pos = torch.tensor([5, 9]), torch.tensor([0, 3], dtype=torch.int32)
    head = DraftHead(model, quantization="int8")
    with torch.inference_mode():
        h, full = steps.draft(model, 2, tok, cache_a, pos)
        h2, q8 = steps.draft(model, 2, tok, cache_b, pos, head)
        want = reference.linear_rows_int8(model.model.norm(h), head.weight, head.scale)
    torch.testing.assert_close(h2, h, atol=0, rtol=0)
    torch.testing.assert_close(cache_b.k, cache_a.k, atol=0, rtol=0)
    torch.testing.assert_close(q8, want, atol=1e-5, rtol=1e-5)
    # Close to the full head (per-row int8: error well under the logits' spread).
    assert (q8 - full).abs().max() < 0.05 * full.abs().max()


def test_int8_head_with_a_subset_is_minus_inf_outside_it(model):
    V = model.config.vocab_size
    ids = torch.tensor([0, 3, 7, V - 1])
    head = DraftHead(model, ids, "int8")
    assert head.weight.shape == (4, model.config.hidden_size) and head.weight.dtype == torch.int8
    with torch.inference_mode():
        logits = head.logits(model, torch.randn(2, model.config.hidden_size))
    keep = torch.zeros(V, dtype=torch.bool)
    keep[ids] = True
    assert torch.isneginf(logits[:, ~keep]).all() and torch.isfinite(logits[:, keep]).all()


@pytest.mark.parametrize("speculation", ["static", "adaptive"])
@pytest.mark.parametrize("vocab", [None, "half"])
def test_greedy_with_int8_draft_head_equals_autoregressive(model, speculation, vocab):
    ids = None if vocab is None else list(range(0, model.config.vocab_size, 2))
    ar = lk.generate(model, RAGGED, **KW)
    out = lk.generate(model, RAGGED, exit_layer=2, num_speculations=3, speculation=speculation, draft_vocab=ids,
                      draft_quantization="int8", **KW)
    assert out.sequences == ar.sequences
    assert out.stats["drafted"] > 0 and out.stats["accepted"] > 0  # the int8 drafts were used, and accepted


def test_int8_draft_head_with_decoding_aids_stays_exact(model):
    aids = dict(repetition_penalty=1.3, no_repeat_ngram_size=2)
    ar = lk.generate(model, RAGGED, **aids, **KW)
    out = lk.generate(model, RAGGED, exit_layer=2, num_speculations=3, draft_quantization="int8", **aids, **KW)
    assert out.sequences == ar.sequences


def test_compiled_int8_draft_head_equals_autoregressive(model):
    """Compiled: greedy drafting with the int8 head is one graph (draft_greedy)."""
    ar = lk.generate(model, RAGGED, **KW)
    out = lk.generate(model, RAGGED, exit_layer=2, num_speculations=2, draft_quantization="int8", compile=True, **KW)
    assert out.sequences == ar.sequences


def test_bf16_int8_draft_head_runs_the_kernel(model, monkeypatch):
    """A bf16 model on the cpu backend scores drafts with torch.ops.layerskip.linear_rows_int8."""
    if lk.backends.native() is None:
        pytest.skip("no compiled extension: the op is the reference")
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    calls = []
    op = torch.ops.layerskip.linear_rows_int8
    monkeypatch.setattr(torch.ops.layerskip, "linear_rows_int8", lambda *a: calls.append(a[1].shape) or op(*a))
    out = lk.generate(m16, RAGGED, exit_layer=2, num_speculations=3, draft_quantization="int8", **KW)
    assert calls and all(s == (m16.config.vocab_size, m16.config.hidden_size) for s in calls)
    assert [len(s) for s in out.sequences] == [20] * 3


@pytest.mark.parametrize("bad", ["int4", "INT8", 8, torch.int8, ""])
def test_bad_draft_quantization_is_refused(model, bad):
    with pytest.raises(ValueError, match="draft_quantization"):
        lk.generate(model, RAGGED, exit_layer=2, draft_quantization=bad, **KW)
    with pytest.raises(ValueError, match="draft_quantization"):
        check_draft_quantization(bad)


def test_draft_head_is_made_once_per_model_setting_and_head_weight(model, monkeypatch):
    """generate() reuses the int8 copy of the last call on the same model and
    setting (quantizing a Llama-3 head takes seconds); another vocabulary, or a
    change to the head's weight, makes a new one, and output stays exact."""
    m = copy.deepcopy(model)
    made = []
    quantize = draft_head.quantize_rows_int8
    monkeypatch.setattr(draft_head, "quantize_rows_int8", lambda w: made.append(w.shape) or quantize(w))
    spec = dict(exit_layer=2, num_speculations=3, draft_quantization="int8", **KW)
    first = lk.generate(m, RAGGED, **spec)
    again = lk.generate(m, RAGGED, **spec)
    assert len(made) == 1 and again.sequences == first.sequences
    assert draft_head_for(m, None, "int8") is draft_head_for(m, None, "int8")
    half = torch.arange(0, m.config.vocab_size, 2)
    sub = draft_head_for(m, half, "int8")
    assert len(made) == 2 and sub.weight.shape[0] == half.numel()
    assert draft_head_for(m, half.clone(), "int8") is sub  # the same ids in another tensor
    with torch.no_grad():
        m.lm_head.weight.mul_(1.5)  # in place: same storage, new version
    head = draft_head_for(m, None, "int8")
    assert len(made) == 3
    q, scale = quantize(m.lm_head.weight)
    assert torch.equal(head.weight, q) and torch.equal(head.scale, scale)
    ar = lk.generate(m, RAGGED, **KW)
    assert lk.generate(m, RAGGED, **spec).sequences == ar.sequences
