"""transformers integration: attention implementation swap and engine swap."""

import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels.integrations import transformers as lt

from helpers import check_bf16_rule, make_hf_checkpoint

transformers = pytest.importorskip("transformers")

PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [12, 13, 14, 15, 16, 17, 18, 19]]


@pytest.fixture(scope="module", params=["gqa_tied", "gqa3_llama3_rope"])
def ckpt(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    make_hf_checkpoint(path, request.param, num_hidden_layers=4)
    return path


def hf_model(path, **kw):
    return transformers.LlamaForCausalLM.from_pretrained(path, **kw).eval()


def test_attention_implementation_matches_sdpa(ckpt):
    lt.register_attention()
    # No id 0: generate() treats pad_token_id=0 in a prompt as padding.
    ids = torch.randint(3, 80, (2, 13), generator=torch.Generator().manual_seed(0))
    sdpa = hf_model(ckpt, attn_implementation="sdpa")
    ours = hf_model(ckpt, attn_implementation="layerskip")
    with torch.no_grad():
        ref, got = sdpa(ids).logits, ours(ids).logits
    assert (got - ref).abs().max().item() <= 1e-4
    # Decoding through transformers' own cache and generate loop, with our kernel.
    a = sdpa.generate(ids[:1], max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    b = ours.generate(ids[:1], max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(a, b)


def test_attention_implementation_bf16_tolerance(ckpt):
    # Same rule as the model's bf16 test: the layerskip attention inside
    # transformers' bf16 model is within sdpa's own bf16 error.
    lt.register_attention()
    ids = torch.randint(0, 80, (8, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        truth = hf_model(ckpt, attn_implementation="sdpa")(ids).logits
        ref = hf_model(ckpt, attn_implementation="sdpa", dtype=torch.bfloat16)(ids).logits
        got = hf_model(ckpt, attn_implementation="layerskip", dtype=torch.bfloat16)(ids).logits
    check_bf16_rule(got, ref, truth)


def test_attention_refuses_padding_mask(ckpt):
    lt.register_attention()
    model = hf_model(ckpt, attn_implementation="layerskip")
    ids = torch.randint(3, 80, (2, 6))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with pytest.raises(NotImplementedError, match="mask"):
        model(ids, attention_mask=mask)
    with torch.no_grad():  # an all-ones mask is the causal pattern: accepted
        model(ids, attention_mask=torch.ones_like(ids))


def test_apply_layerskip_shares_weights_and_matches_generate(ckpt):
    model = hf_model(ckpt)
    handle = lt.apply_layerskip(model, exit_layer=2, num_speculations=3)
    hf_params = {n: p.data_ptr() for n, p in model.named_parameters()}
    for n, p in handle.model.named_parameters():
        assert p.data_ptr() == hf_params[n], n
    out = model.layerskip.generate(PROMPTS, max_new_tokens=15, eos_token_id=[])
    for p, seq in zip(PROMPTS, out.sequences):  # batch 3: assistant_early_exit refuses this
        ref = model.generate(torch.tensor([p]), max_new_tokens=15, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert seq == ref[0, len(p):].tolist()
    assert out.stats["drafted"] > 0


def test_remove_restores_model(ckpt):
    model = hf_model(ckpt)
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        before = model(ids).logits
    keys = set(model.state_dict())
    handle = lt.apply_layerskip(model, exit_layer=1)
    handle.remove()
    assert not hasattr(model, "layerskip")
    assert set(model.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    with pytest.raises(RuntimeError, match="not applied"):
        lt.remove_layerskip(model)
    lt.apply_layerskip(model, exit_layer=1)  # can be applied again
    with pytest.raises(RuntimeError, match="already applied"):
        lt.apply_layerskip(model, exit_layer=1)


def test_apply_layerskip_bad_input_leaves_model_untouched(ckpt):
    model = hf_model(ckpt)
    for kwargs, exc, match in [
        (dict(exit_layer=0), ValueError, "exit_layer"),
        (dict(exit_layer=4), ValueError, "exit_layer"),
        (dict(exit_layer=2, num_speculations=0), ValueError, "num_speculations"),
    ]:
        with pytest.raises(exc, match=match):
            lt.apply_layerskip(model, **kwargs)
        assert not hasattr(model, "layerskip")
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(TypeError, match="LlamaForCausalLM"):
        lt.apply_layerskip(gpt2, exit_layer=1)
    assert not hasattr(gpt2, "layerskip")


def test_layerskip_style_checkpoint_loads(tmp_path):
    # The config keys of facebook/layerskip-llama3.2-1B: llama3 rope scaling, tied
    # embeddings, GQA, rope_theta 500000 (a tiny model with the same keys).
    hf = make_hf_checkpoint(tmp_path, "gqa3_llama3_rope", num_hidden_layers=4)
    ours = lk.LlamaForCausalLM.from_pretrained(tmp_path)
    assert ours.config.rope_scaling["rope_type"] == "llama3" and ours.config.tie_word_embeddings
    ids = torch.tensor([PROMPTS[2] * 3])  # long enough to reach the scaled band
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-4
