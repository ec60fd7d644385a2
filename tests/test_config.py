"""generation.config: SpeculationConfig.from_model (the recorded defaults the
CLI and the benchmarks read) and validate(model)."""

import json

import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels.cli import main
from layerskip_kernels.generation.config import SamplingParams, SpeculationConfig

from helpers import make_hf_checkpoint


def _record(path, layerskip=None, generation=None):
    cfg_file = path / "config.json"
    cfg = json.loads(cfg_file.read_text())
    if layerskip is not None:
        cfg["layerskip"] = layerskip
    cfg_file.write_text(json.dumps(cfg))
    if generation is not None:
        (path / "generation_config.json").write_text(json.dumps(generation))
    return path


@pytest.fixture
def model_dir(tmp_path):
    make_hf_checkpoint(tmp_path, "gqa_tied", num_hidden_layers=4)
    return tmp_path


def test_nothing_recorded(model_dir):
    spec = SpeculationConfig.from_model(model_dir)
    assert (spec.exit_layer, spec.num_speculations, spec.speculation) == (None, 4, "static")
    assert (spec.repetition_penalty, spec.no_repeat_ngram_size, spec.draft_vocab) == (1.0, 0, None)
    # Callers that must draft get one fallback exit layer, L // 4.
    assert SpeculationConfig.from_model(model_dir, drafting=True).exit_layer == 1


def test_recorded_defaults_and_what_wins(model_dir):
    _record(model_dir, {"default_exit_layer": 2, "default_num_speculations": 3,
                        "adaptive": {"exit_layer": 1, "num_speculations": 6, "bandit": False}},
            {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3})
    model = lk.LlamaForCausalLM.from_pretrained(model_dir)
    spec = SpeculationConfig.from_model(model_dir, model)
    assert (spec.exit_layer, spec.num_speculations, spec.speculation) == (2, 3, "static")
    assert (spec.repetition_penalty, spec.no_repeat_ngram_size) == (1.2, 3)
    adaptive = SpeculationConfig.from_model(model_dir, speculation="adaptive")
    assert (adaptive.exit_layer, adaptive.num_speculations) == (1, 6) and adaptive.adaptive["bandit"] is False
    given = SpeculationConfig.from_model(model_dir, exit_layer=0, num_speculations=5, repetition_penalty=1.0)
    assert (given.exit_layer, given.num_speculations, given.repetition_penalty) == (None, 5, 1.0)
    # A model object alone: its config's record, no files of its directory.
    assert SpeculationConfig.from_model(model).exit_layer == 2
    out = lk.generate(model, [[1, 2, 3]], max_new_tokens=5, **SpeculationConfig.from_model(model).generate_kwargs())
    assert out.sequences == lk.generate(model, [[1, 2, 3]], max_new_tokens=5).sequences


@pytest.mark.parametrize("record, key", [({"default_exit_layer": 9}, "layerskip.default_exit_layer"),
                                         ({"default_num_speculations": 0}, "layerskip.default_num_speculations"),
                                         ({"default_speculation": "fast"}, "layerskip.default_speculation"),
                                         ({"default_draft_quantization": "int4"},
                                          "layerskip.default_draft_quantization")])
def test_a_bad_record_names_its_key(model_dir, record, key):
    _record(model_dir, record)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        SpeculationConfig.from_model(model_dir)


def test_a_bad_record_is_ignored_when_the_value_is_given(model_dir):
    _record(model_dir, {"default_exit_layer": 9})
    assert SpeculationConfig.from_model(model_dir, exit_layer=1).exit_layer == 1


def test_validate_normalises_and_names_the_setting(model_dir):
    model = lk.LlamaForCausalLM.from_pretrained(model_dir)
    spec = SpeculationConfig(exit_layer=torch.tensor(2), num_speculations=3, draft_vocab=[5, 1]).validate(model)
    assert spec.exit_layer == 2 and type(spec.exit_layer) is int and spec.draft_vocab.tolist() == [1, 5]
    for bad, name in ((dict(exit_layer=4), "exit_layer"), (dict(exit_layer=1, num_speculations=0), "num_speculations"),
                      (dict(repetition_penalty=0), "repetition_penalty"), (dict(compile="yes"), "compile"),
                      (dict(speculation="fast"), "speculation"), (dict(draft_quantization="int4"), "draft_quantization")):
        with pytest.raises(ValueError, match=name):
            SpeculationConfig(**bad).validate(model)


def test_engine_submit_takes_sampling_params(model_dir):
    model = lk.LlamaForCausalLM.from_pretrained(model_dir)
    engine = lk.Engine(model, max_batch_size=2, exit_layer=2, num_speculations=2, do_sample=True)
    engine.submit([1, 2, 3], SamplingParams(max_new_tokens=6, temperature=0.7, seed=11, eos_token_id=[]))
    engine.add([1, 2, 3], max_new_tokens=6, temperature=0.7, seed=11, eos_token_id=[])
    a, b = engine.run()
    assert a.tokens == b.tokens and len(a.tokens) == 6


def test_info_prints_the_op_by_backend_table(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for op in lk.backends.OPS:
        assert op in out
    assert "reference" in out  # triton and cuda run the reference linear_rows
