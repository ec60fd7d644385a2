"""Bad input to `layerskip generate`: every value argparse does not type-check is
validated before the prompt is echoed; the CLI prints one `error: ...` line on
stderr and exits non-zero (2: a bad flag value, 1: an unusable model or
tokenizer file), never a traceback."""

import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import layerskip_kernels as lk
from layerskip_kernels.generation import MAX_SPECULATIONS
from layerskip_kernels.cli import main

from test_cli import tiny_with_tokenizer  # noqa: F401  (the shared fixture)

MIN_TEMPERATURE = 1e-5  # generate()'s documented smallest sampling temperature
LAYERS, MAX_POS = 4, 256


@pytest.fixture(scope="module")
def tiny(tiny_with_tokenizer):
    return tiny_with_tokenizer  # 4 layers, max_position_embeddings 256


def run_cli(capsys, model, *flags, prompt="def add("):
    argv = ["generate", "--model", str(model), "--prompt", prompt, "--max-new-tokens", "3", "--dtype", "float32"]
    rc = main(argv + list(flags))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error_line(rc, out, err, code, *needles):
    assert rc == code, (rc, out, err)
    assert out == "", f"the prompt was echoed before the error: {out!r}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


# --------------------------------------------------------------------------- exact lines


@pytest.mark.parametrize(
    "flags,line",
    [
        (["--exit-layer", "4"], f"error: --exit-layer must be an int in [0, 3] for this {LAYERS}-layer model "
                                "(0 = autoregressive), got 4"),
        (["--exit-layer", "-1"], f"error: --exit-layer must be an int in [0, 3] for this {LAYERS}-layer model "
                                 "(0 = autoregressive), got -1"),
        (["--exit-layer", "2", "--num-speculations", "0"], "error: --num-speculations must be an int in [1, 15], got 0"),
        (["--num-speculations", "16"], "error: --num-speculations must be an int in [1, 15], got 16"),
        (["--temperature", "0"], "error: --temperature must be a finite number >= 1e-05, got 0.0"),
        (["--sample", "--temperature", "nan"], "error: --temperature must be a finite number >= 1e-05, got nan"),
        (["--sample", "--temperature", "inf"], "error: --temperature must be a finite number >= 1e-05, got inf"),
        (["--top-p", "0"], "error: --top-p must be a number in (0, 1], got 0.0"),
        (["--top-p", "1.5"], "error: --top-p must be a number in (0, 1], got 1.5"),
        (["--top-p", "nan"], "error: --top-p must be a number in (0, 1], got nan"),
        (["--top-k", "-1"], "error: --top-k must be an int >= 0 (0 disables it), got -1"),
        (["--seed", str(2**63)], f"error: --seed must be an int in [-2^63, 2^63), got {2**63}"),
        (["--seed", str(-(2**63) - 1)], f"error: --seed must be an int in [-2^63, 2^63), got {-(2**63) - 1}"),
        (["--max-new-tokens", "0"], "error: --max-new-tokens must be an int >= 1, got 0"),
    ],
)
def test_bad_flag_values_exact_line(tiny, capsys, flags, line):
    rc, out, err = run_cli(capsys, tiny, *flags)
    assert_one_error_line(rc, out, err, 2)
    assert err == line + "\n"


def test_over_long_prompt(tiny, capsys):
    rc, out, err = run_cli(capsys, tiny, "--max-new-tokens", str(MAX_POS))
    assert_one_error_line(rc, out, err, 2, "--prompt", "--max-new-tokens", f"max_position_embeddings={MAX_POS}")


def test_huge_max_new_tokens(tiny, capsys):
    rc, out, err = run_cli(capsys, tiny, "--max-new-tokens", str(10**12))
    assert_one_error_line(rc, out, err, 2, "--max-new-tokens")


def test_unavailable_backend(tiny, capsys):
    missing = [n for n, why in lk.available_backends().items() if why is not None]
    if not missing:
        pytest.skip("every backend is available on this machine")
    rc, out, err = run_cli(capsys, tiny, "--backend", missing[0])
    assert_one_error_line(rc, out, err, 2, f"--backend {missing[0]}", "not available")


@pytest.mark.parametrize("device", ["nope", "cuda:99", "meta"])
def test_bad_device(tiny, capsys, device):
    rc, out, err = run_cli(capsys, tiny, "--device", device)
    assert_one_error_line(rc, out, err, 2, "--device")


def test_invalid_utf8_prompt_in_process(tiny, capsys):
    # What Python makes of undecodable argv bytes (PEP 383 surrogate escapes).
    rc, out, err = run_cli(capsys, tiny, prompt="def \udcff(")
    assert_one_error_line(rc, out, err, 2, "--prompt", "UTF-8")


@pytest.mark.parametrize("prompt", ["", " "])
def test_prompt_without_tokens(tiny, capsys, prompt):
    rc, out, err = run_cli(capsys, tiny, prompt=prompt)
    if rc == 0:  # a space may be a token of this tokenizer
        assert out.startswith(prompt)
        return
    assert_one_error_line(rc, out, err, 2, "--prompt")


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"model": 3}', b"\xff\xfe\x00"])
def test_corrupt_tokenizer(tiny, tmp_path, capsys, content):
    model = tmp_path / "m"
    shutil.copytree(tiny, model)
    (model / "tokenizer.json").write_bytes(content)
    rc, out, err = run_cli(capsys, model)
    assert_one_error_line(rc, out, err, 1, "tokenizer.json")


def test_tokenizer_symlink_outside_the_model_is_refused(tiny, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(tiny, model)
    os.remove(model / "tokenizer.json")
    os.symlink(tiny / "tokenizer.json", model / "tokenizer.json")
    rc, out, err = run_cli(capsys, model)
    assert_one_error_line(rc, out, err, 1, "tokenizer.json", "outside the model directory")


@pytest.mark.parametrize("break_it", ["no_dir", "config", "weights", "no_tokenizer", "default_exit_layer"])
def test_unusable_model_directory(tiny, tmp_path, capsys, break_it):
    model = tmp_path / "m"
    shutil.copytree(tiny, model)
    if break_it == "no_dir":
        model = tmp_path / "absent"
    elif break_it == "config":
        (model / "config.json").write_text("{")
    elif break_it == "weights":
        (model / "model.safetensors").write_bytes(b"\x00" * 3)
    elif break_it == "no_tokenizer":
        os.remove(model / "tokenizer.json")
    else:
        import json

        cfg = json.loads((model / "config.json").read_text())
        cfg["layerskip"] = {"default_exit_layer": 9}
        (model / "config.json").write_text(json.dumps(cfg))
    rc, out, err = run_cli(capsys, model)
    assert_one_error_line(rc, out, err, 1)


def test_subprocess_invalid_utf8_and_corrupt_tokenizer(tiny, tmp_path):
    """The real process: exit status, the one stderr line, nothing on stdout."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "layerskip_kernels.cli", "generate", "--model", os.fsencode(tiny),
           "--prompt", b"def \xff(", "--max-new-tokens", "2"]
    res = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    assert res.returncode == 2 and res.stdout == b"", res
    assert b"Traceback" not in res.stderr
    assert res.stderr.decode(errors="replace").strip().splitlines()[-1].startswith("error: --prompt")

    model = tmp_path / "m"
    shutil.copytree(tiny, model)
    (model / "tokenizer.json").write_text("{")
    cmd[5] = os.fsencode(model)
    cmd[7] = b"def ("
    res = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    assert res.returncode == 1 and res.stdout == b"", res
    assert b"Traceback" not in res.stderr
    assert "tokenizer.json" in res.stderr.decode().strip().splitlines()[-1]


# --------------------------------------------------------------------------- property: numeric flags


def _flag_ok(flag, v):
    if flag == "--temperature":
        return math.isfinite(v) and v >= MIN_TEMPERATURE
    if flag == "--top-p":
        return 0 < v <= 1 and np.float32(v) > 0  # the nucleus is cut in float32
    if flag == "--top-k":
        return v >= 0
    if flag == "--seed":
        return -(2**63) <= v < 2**63
    if flag == "--exit-layer":
        return 0 <= v <= LAYERS - 1
    if flag == "--num-speculations":
        return 1 <= v <= MAX_SPECULATIONS
    if flag == "--max-new-tokens":
        return 1 <= v <= 8  # the oracle's choice below keeps valid runs short
    raise AssertionError(flag)


_INT = st.one_of(st.integers(-5, 40), st.integers(-2**70, 2**70))
_FLOAT = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 2), st.sampled_from([1e-40, 1e-5]))
_FLAG_VALUES = {"--temperature": _FLOAT, "--top-p": _FLOAT, "--top-k": _INT, "--seed": _INT,
                "--exit-layer": _INT, "--num-speculations": _INT, "--max-new-tokens": st.integers(-3, 8)}


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_numeric_flags_fuzz(tiny, capsys, data):
    flag = data.draw(st.sampled_from(sorted(_FLAG_VALUES)))
    value = data.draw(_FLAG_VALUES[flag])
    # --flag=value: argparse would read "-1e-05" or "-inf" as an option name.
    flags = ["--sample", "--seed=1", f"{flag}={value!r}"]
    if flag == "--num-speculations":
        flags += ["--exit-layer", "2"]
    rc, out, err = run_cli(capsys, tiny, *flags)
    if _flag_ok(flag, value):
        assert rc == 0, err
        assert out.startswith("def add(") and "tokens/s" in err
    else:
        assert_one_error_line(rc, out, err, 2, flag)
