"""`layerskip export-draft`: the first E layers + final norm + LM head as a
standalone Llama checkpoint. transformers loads it, and its logits are the full
model's early-exit logits at layer E; bad arguments are refused."""

import json
import os

import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels.cache import StaticKVCache
from layerskip_kernels.cli import main
from layerskip_kernels.model.export import export_draft

from helpers import make_hf_checkpoint

IDS = torch.tensor([[5, 17, 3, 42, 8, 29, 11, 60, 2, 33, 7]])


def early_exit_logits(model, ids, E):
    cache = StaticKVCache.for_model(model, ids.shape[0], ids.shape[1])
    return model.exit_head(model.forward_layers(model.embed(ids), 0, E, cache))


@pytest.mark.parametrize("name,E", [("gqa_tied", 2), ("mha_untied", 1), ("gqa3_llama3_rope", 2)])
def test_exported_draft_logits_are_the_early_exit_logits(tmp_path, name, E):
    transformers = pytest.importorskip("transformers")
    make_hf_checkpoint(tmp_path / "full", name)
    # shipped beside the weights by our trainer; must not follow into the draft's directory
    (tmp_path / "full" / "token_frequencies.npy").write_bytes(b"")
    assert main(["export-draft", "--exit-layer", str(E), str(tmp_path / "full"), str(tmp_path / "draft")]) == 0
    draft_dir = tmp_path / "draft"
    assert sorted(os.listdir(draft_dir)) == ["config.json", "generation_config.json", "model.safetensors"]
    cfg = json.loads((draft_dir / "config.json").read_text())
    assert cfg["num_hidden_layers"] == E and cfg["layerskip_draft"]["exit_layer"] == E

    full = lk.LlamaForCausalLM.from_pretrained(tmp_path / "full")
    want = early_exit_logits(full, IDS, E)
    hf = transformers.LlamaForCausalLM.from_pretrained(draft_dir).eval()
    with torch.no_grad():
        got = hf(IDS).logits
    assert hf.config.num_hidden_layers == E
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    # ... and the full model's last-layer logits differ (the test sees which layer exits)
    assert (full(IDS) - want).abs().max() > 1e-2
    # our loader reads it too, and the parameters are exactly the source's
    ours = lk.LlamaForCausalLM.from_pretrained(draft_dir)
    torch.testing.assert_close(ours(IDS), want, atol=0, rtol=0)
    assert ours.config.tie_word_embeddings == full.config.tie_word_embeddings


def test_embedded_model_exports_in_its_own_dtype(tmp_path):
    from safetensors import safe_open

    out = export_draft(lk.default_model_path(), 3, tmp_path / "d")
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16
    assert {n.split(".")[2] for n in names if n.startswith("model.layers.")} == {"0", "1", "2"}
    assert "lm_head.weight" not in names  # tied: the head is the embedding, saved once
    assert "tokenizer.json" in os.listdir(out)
    assert "layerskip" not in json.loads(open(os.path.join(out, "config.json")).read())
    full = lk.LlamaForCausalLM.from_pretrained()
    draft = lk.LlamaForCausalLM.from_pretrained(out)
    torch.testing.assert_close(draft(IDS), early_exit_logits(full, IDS, 3), atol=0, rtol=0)


def test_bad_export_arguments_are_refused(tmp_path, capsys):
    make_hf_checkpoint(tmp_path / "full", "gqa_tied")  # 4 layers
    for E in (0, 4, 2.0, True):
        with pytest.raises(ValueError, match="exit_layer must be an int in \\[1, 3\\]"):
            export_draft(tmp_path / "full", E, tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(ValueError, match="not an empty directory"):
        export_draft(tmp_path / "full", 2, tmp_path / "busy")
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        export_draft(tmp_path / "nope", 2, tmp_path / "out")
    assert main(["export-draft", "--exit-layer", "9", str(tmp_path / "full"), str(tmp_path / "out")]) == 1
    assert "exit_layer must be" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
