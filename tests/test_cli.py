"""The `layerskip` console entry point."""

import os
import subprocess
import sys

import pytest

import layerskip_kernels as lk
from layerskip_kernels.cli import main

from helpers import make_hf_checkpoint


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tmp_path_factory):
    from layerskip_kernels.train.data import train_tokenizer

    path = tmp_path_factory.mktemp("cli")
    texts = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n"] * 20
    tok = train_tokenizer(texts, 300)
    tok.save(str(path / "tokenizer.json"))
    make_hf_checkpoint(path, "gqa_tied", vocab_size=tok.get_vocab_size(), num_hidden_layers=4)
    return path


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in lk.backends.BACKENDS:
        assert name in out
    assert "build_info" in out


@pytest.mark.parametrize("extra", [["--exit-layer", "2", "--num-speculations", "3"], ["--exit-layer", "0"],
                                   ["--exit-layer", "1", "--sample", "--seed", "3", "--top-p", "0.9"]])
def test_generate_streams_text_and_stats(tiny_with_tokenizer, capsys, extra):
    rc = main(["generate", "--model", str(tiny_with_tokenizer), "--prompt", "def add(", "--max-new-tokens", "7",
               "--dtype", "float32"] + extra)
    assert rc == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("def add(")
    assert "7 tokens" in captured.err and "tokens/s" in captured.err and "acceptance" in captured.err
    if extra[1] == "0":
        assert "autoregressive" in captured.err


def test_generate_unknown_backend_is_an_error(tiny_with_tokenizer):
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(tiny_with_tokenizer), "--prompt", "x", "--backend", "nope"])


def _has_default_model():
    try:
        lk.default_model_path()
        return True
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not _has_default_model(), reason="this checkout has no embedded default model")
def test_generate_with_default_model_offline():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([sys.executable, "-m", "layerskip_kernels.cli", "generate", "--prompt", "import os\n",
                          "--max-new-tokens", "16"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("import os\n") and len(res.stdout) > len("import os\n")
    assert "self-speculative" in res.stderr and "16 tokens" in res.stderr
