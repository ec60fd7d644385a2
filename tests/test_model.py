"""The minimal Llama against transformers.LlamaForCausalLM on tiny random checkpoints."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import layerskip_kernels as lk
from layerskip_kernels.cache import StaticKVCache

from helpers import CONFIGS, check_bf16_rule, make_hf_checkpoint

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = make_hf_checkpoint(path, request.param)
    return path, hf


def ids_for(vocab, B=2, T=11, seed=0):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def test_full_sequence_logits_fp32(checkpoint):
    path, hf = checkpoint
    ours = lk.LlamaForCausalLM.from_pretrained(path)
    ids = ids_for(hf.config.vocab_size)
    with torch.no_grad():
        ref = hf(ids).logits
    got = ours(ids)
    assert (got - ref).abs().max().item() <= 1e-4


def test_prefill_then_decode_with_static_cache(checkpoint):
    path, hf = checkpoint
    ours = lk.LlamaForCausalLM.from_pretrained(path)
    ids = ids_for(hf.config.vocab_size, B=2, T=9, seed=1)
    with torch.no_grad():
        ref = hf(ids).logits
    cache = StaticKVCache.for_model(ours, batch_size=2, max_len=16)
    with torch.no_grad():
        # Prefill the first 5 tokens, then one token at a time.
        h = ours.forward_layers(ours.embed(ids[:, :5]), 0, ours.num_layers, cache)
        cache.seqlens += 5
        steps = [ours.exit_head(h)]
        for t in range(5, 9):
            h = ours.forward_layers(ours.embed(ids[:, t : t + 1]), 0, ours.num_layers, cache)
            cache.seqlens += 1
            steps.append(ours.exit_head(h))
    got = torch.cat(steps, dim=1)
    assert (got - ref).abs().max().item() <= 1e-4


def test_split_layers_equal_full_pass(checkpoint):
    # Draft (layers [0, E)) then verify (layers [E, L)) over the same positions
    # gives the full model's logits: the split the engine relies on.
    path, hf = checkpoint
    ours = lk.LlamaForCausalLM.from_pretrained(path)
    ids = ids_for(hf.config.vocab_size, B=1, T=6, seed=2)
    L = ours.num_layers
    cache = StaticKVCache.for_model(ours, 1, 8)
    with torch.no_grad():
        h = ours.forward_layers(ours.embed(ids), 0, 1, cache)
        out = ours.exit_head(ours.forward_layers(h, 1, L, cache))
    assert (out - ours(ids)).abs().max().item() <= 1e-5


def test_bf16_within_tolerance_rule(checkpoint):
    path, hf = checkpoint
    ids = ids_for(hf.config.vocab_size, B=8, T=40, seed=3)
    with torch.no_grad():
        truth = hf(ids).logits
        hf16 = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
        ref = hf16(ids).logits
    ours = lk.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    check_bf16_rule(ours(ids), ref, truth)


def test_forward_train_matches_forward(checkpoint):
    path, hf = checkpoint
    ours = lk.LlamaForCausalLM.from_pretrained(path)
    ids = ids_for(hf.config.vocab_size, seed=4)
    with torch.no_grad():
        h = ours.forward_train(ids)
        assert (ours.exit_head(h) - ours(ids)).abs().max().item() <= 1e-4


# --------------------------------------------------------------------------- loader


def test_sharded_checkpoint(tmp_path):
    hf = make_hf_checkpoint(tmp_path / "one", "mha_untied")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
    assert len([f for f in os.listdir(tmp_path / "sharded") if f.endswith(".safetensors")]) > 1
    a = lk.LlamaForCausalLM.from_pretrained(tmp_path / "one")
    b = lk.LlamaForCausalLM.from_pretrained(tmp_path / "sharded")
    ids = ids_for(hf.config.vocab_size)
    assert torch.equal(a(ids), b(ids))


def test_tied_embeddings_share_storage(tmp_path):
    make_hf_checkpoint(tmp_path, "gqa_tied")
    m = lk.LlamaForCausalLM.from_pretrained(tmp_path)
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(model_type="mistral"), "model_type"),
        (dict(attention_bias=True), "attention_bias"),
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(rope_scaling=dict(rope_type="yarn", factor=2.0)), "yarn"),
    ],
)
def test_loader_refuses_unsupported_config(tmp_path, change, match):
    make_hf_checkpoint(tmp_path, "mha_untied")
    _edit_config(tmp_path, **change)
    with pytest.raises(ValueError, match=match):
        lk.LlamaForCausalLM.from_pretrained(tmp_path)


def test_loader_errors(tmp_path):
    make_hf_checkpoint(tmp_path / "m", "mha_untied")
    with pytest.raises(FileNotFoundError, match="config.json"):
        os.remove(tmp_path / "m" / "config.json")
        lk.LlamaForCausalLM.from_pretrained(tmp_path / "m")

    make_hf_checkpoint(tmp_path / "missing", "mha_untied")
    weights = load_file(tmp_path / "missing" / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "missing" / "model.safetensors")
    with pytest.raises(ValueError, match="missing tensors.*up_proj"):
        lk.LlamaForCausalLM.from_pretrained(tmp_path / "missing")

    make_hf_checkpoint(tmp_path / "shape", "mha_untied")
    weights = load_file(tmp_path / "shape" / "model.safetensors")
    weights["model.norm.weight"] = torch.ones(7)
    save_file(weights, tmp_path / "shape" / "model.safetensors")
    with pytest.raises(ValueError, match="model.norm.weight.*shape"):
        lk.LlamaForCausalLM.from_pretrained(tmp_path / "shape")

    with pytest.raises(FileNotFoundError, match="model directory"):
        lk.LlamaForCausalLM.from_pretrained(tmp_path / "nope")
    os.makedirs(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text((tmp_path / "shape" / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        lk.LlamaForCausalLM.from_pretrained(tmp_path / "empty")
