"""The `layerskip` console entry point."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

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


def expected_cli_text(tok, model, prompt, healing, bos=True, **kw):
    """What the CLI prints on stdout, from the same generation through the API."""
    from layerskip_kernels.generation.token_healing import heal_prompt

    ids = tok.encode(prompt, add_special_tokens=bos).ids
    h = heal_prompt(tok, ids) if healing else None
    prefix = h.ids if h is not None and h.allowed is not None else ids
    first = [h.allowed] if prefix is not ids else None
    ref = lk.generate(model, [prefix], first_token_ids=first, **kw)
    text = tok.decode(prefix + ref.sequences[0])
    return prompt + text[len(tok.decode(ids)):] + "\n", ref


@pytest.mark.parametrize("extra,E,k,sample", [
    (["--exit-layer", "2", "--num-speculations", "3"], 2, 3, {}),
    (["--exit-layer", "0"], None, 4, {}),
    (["--exit-layer", "1", "--sample", "--seed", "3", "--top-p", "0.9"], 1, 4, dict(do_sample=True, seed=3, top_p=0.9)),
    (["--exit-layer", "2", "--no-token-healing"], 2, 4, {}),
    (["--exit-layer", "2", "--no-bos"], 2, 4, {}),
    (["--exit-layer", "2", "--num-speculations", "3", "--compile"], 2, 3, {}),
    (["--exit-layer", "1", "--repetition-penalty", "1.5", "--no-repeat-ngram-size", "2"], 1, 4,
     dict(repetition_penalty=1.5, no_repeat_ngram_size=2)),
])
def test_generate_streams_text_and_stats(tiny_with_tokenizer, capsys, extra, E, k, sample):
    from tokenizers import Tokenizer

    rc = main(["generate", "--model", str(tiny_with_tokenizer), "--prompt", "def add(", "--max-new-tokens", "7",
               "--dtype", "float32"] + extra)
    assert rc == 0
    captured = capsys.readouterr()
    # The same generation through the API (seeded sampling is reproducible).
    tok = Tokenizer.from_file(str(tiny_with_tokenizer / "tokenizer.json"))
    model = lk.LlamaForCausalLM.from_pretrained(tiny_with_tokenizer)
    text, ref = expected_cli_text(tok, model, "def add(", "--no-token-healing" not in extra, "--no-bos" not in extra,
                                  max_new_tokens=7,
                                  exit_layer=E, num_speculations=k, **sample)
    tokens = ref.sequences[0]
    assert captured.out == text
    mode = f"self-speculative E={E} k={k}" if E else "autoregressive"
    acc = "n/a" if E is None else f"{ref.stats['acceptance_rate']:.1%}"
    tps = f"{ref.stats['tokens_per_step']:.2f}"
    stats_line = (re.escape(f"[{mode}] {len(tokens)} tokens in ") + r"\d+\.\d\d s: \d+\.\d tokens/s, "
                  + re.escape(f"acceptance {acc}, {tps} tokens/iteration, float32, backend cpu"))
    if "--compile" in extra:
        stats_line += r", compiled \(\+\d+\.\d s compiling\)"
    assert re.fullmatch(stats_line + "\n", captured.err), captured.err


@pytest.mark.parametrize("extra,healed", [([], True), (["--no-token-healing"], False)])
def test_prompt_starts_with_bos_unless_no_bos(tiny_with_tokenizer, capsys, monkeypatch, extra, healed):
    """The prompt reads as the start of a file (<|endoftext|> first, as every file
    follows one in training) unless --no-bos; healing backs up the last token only."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_with_tokenizer / "tokenizer.json"))
    body = tok.encode("def add(", add_special_tokens=False).ids
    seen = []
    real = lk.generate
    monkeypatch.setattr(lk, "generate", lambda model, prompts, **kw: seen.append(prompts[0]) or real(model, prompts, **kw))
    for bos in (True, False):
        rc = main(["generate", "--model", str(tiny_with_tokenizer), "--prompt", "def add(", "--max-new-tokens", "2",
                   "--exit-layer", "0"] + extra + ([] if bos else ["--no-bos"]))
        assert rc == 0
    full = [[0] + body, body]
    assert seen == ([p[:-1] for p in full] if healed else full)
    assert capsys.readouterr().out.count("def add(") == 2


def test_empty_prompt_is_refused(tiny_with_tokenizer, capsys):
    # The BOS alone is not a prompt.
    rc = main(["generate", "--model", str(tiny_with_tokenizer), "--prompt", "", "--max-new-tokens", "2"])
    assert rc == 2 and "--prompt encodes to no tokens" in capsys.readouterr().err


def _copy_with_generation_config(src, dst, cfg):
    import json
    import shutil

    shutil.copytree(src, dst)
    (dst / "generation_config.json").write_text(json.dumps(cfg) if not isinstance(cfg, str) else cfg)
    return dst


@pytest.mark.parametrize("extra,aids", [
    ([], dict(repetition_penalty=1.5, no_repeat_ngram_size=2)),  # the model's recommendation
    (["--no-repeat-ngram-size", "0"], dict(repetition_penalty=1.5, no_repeat_ngram_size=0)),
    (["--repetition-penalty", "1.0", "--no-repeat-ngram-size", "3"], dict(repetition_penalty=1.0,
                                                                         no_repeat_ngram_size=3)),
])
def test_generate_takes_decoding_aids_from_generation_config(tiny_with_tokenizer, tmp_path, capsys, extra, aids):
    from tokenizers import Tokenizer

    path = _copy_with_generation_config(tiny_with_tokenizer, tmp_path / "m",
                                        {"do_sample": False, "repetition_penalty": 1.5, "no_repeat_ngram_size": 2})
    rc = main(["generate", "--model", str(path), "--prompt", "def add(", "--max-new-tokens", "12", "--dtype",
               "float32", "--exit-layer", "2", "--num-speculations", "3"] + extra)
    assert rc == 0
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    model = lk.LlamaForCausalLM.from_pretrained(path)
    text, _ = expected_cli_text(tok, model, "def add(", True, max_new_tokens=12, exit_layer=2, num_speculations=3,
                                **aids)
    plain, _ = expected_cli_text(tok, model, "def add(", True, max_new_tokens=12, exit_layer=2, num_speculations=3)
    out = capsys.readouterr().out
    assert out == text
    if aids["no_repeat_ngram_size"] == 2:  # the aids change this tiny model's output: the check can fail
        assert out != plain


@pytest.mark.parametrize("cfg,match", [
    ({"repetition_penalty": 0}, "repetition_penalty"), ({"repetition_penalty": "1.2"}, "repetition_penalty"),
    ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"), ({"no_repeat_ngram_size": 1.5}, "no_repeat_ngram_size"),
    ("[1, 2]", "JSON object"), ("{not json", "not a readable JSON"),
])
def test_bad_generation_config_is_refused(tiny_with_tokenizer, tmp_path, capsys, cfg, match):
    path = _copy_with_generation_config(tiny_with_tokenizer, tmp_path / "m", cfg)
    rc = main(["generate", "--model", str(path), "--prompt", "def add(", "--max-new-tokens", "4"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and "generation_config.json" in err and match in err, err


def test_generate_with_a_reduced_draft_vocabulary(tiny_with_tokenizer, tmp_path, capsys):
    import shutil

    from tokenizers import Tokenizer

    from layerskip_kernels.generation.draft_vocab import frequent_tokens, save_frequencies

    path = tmp_path / "m"
    shutil.copytree(tiny_with_tokenizer, path)
    args = ["generate", "--model", str(path), "--prompt", "def add(", "--max-new-tokens", "8", "--dtype", "float32",
            "--exit-layer", "2", "--num-speculations", "3", "--draft-vocab", "40"]
    assert main(args) == 1  # no frequency file yet
    assert "token_frequencies.npy" in capsys.readouterr().err
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    V = tok.get_vocab_size()
    save_frequencies(str(path), torch.arange(V, dtype=torch.int64) % 7)
    assert main(args) == 0
    captured = capsys.readouterr()
    model = lk.LlamaForCausalLM.from_pretrained(path)
    text, _ = expected_cli_text(tok, model, "def add(", True, max_new_tokens=8, exit_layer=2, num_speculations=3,
                                draft_vocab=frequent_tokens(str(path), 40))
    assert captured.out == text and "draft-vocab=40" in captured.err
    assert main(args[:-1] + [str(V + 1)]) == 2
    assert "--draft-vocab" in capsys.readouterr().err
    assert main(args[:-1] + ["-1"]) == 2


def test_generate_with_an_int8_draft_head(tiny_with_tokenizer, tmp_path, capsys):
    """--draft-quantization int8 (or a recorded default) drafts with the int8 head;
    the text is the autoregressive one; a bad recorded value is refused."""
    from tokenizers import Tokenizer

    path = _copy_with_layerskip_defaults(tiny_with_tokenizer, tmp_path / "m", default_draft_quantization="int8")
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    model = lk.LlamaForCausalLM.from_pretrained(path)
    ar, _ = expected_cli_text(tok, model, "def add(", True, max_new_tokens=8)
    base = ["generate", "--model", str(path), "--prompt", "def add(", "--max-new-tokens", "8", "--dtype", "float32",
            "--exit-layer", "2", "--num-speculations", "3"]
    seen = []
    real = lk.generate
    try:
        lk.generate = lambda *a, **kw: seen.append(kw["draft_quantization"]) or real(*a, **kw)
        assert main(base) == 0
        assert main(base + ["--draft-quantization", "none"]) == 0
    finally:
        lk.generate = real
    captured = capsys.readouterr()
    assert captured.out == ar + ar and seen == ["int8", None]
    assert "[self-speculative E=2 k=3 draft-head=int8]" in captured.err
    bad = _copy_with_layerskip_defaults(tiny_with_tokenizer, tmp_path / "bad", default_draft_quantization="int4")
    assert main(["generate", "--model", str(bad), "--prompt", "x", "--max-new-tokens", "2"]) == 1
    assert "default_draft_quantization" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse's choices
        main(base + ["--draft-quantization", "int4"])
    assert exc.value.code == 2 and "--draft-quantization" in capsys.readouterr().err


def _copy_with_layerskip_defaults(src, dst, **layerskip):
    import json
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.setdefault("layerskip", {}).update(layerskip)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_generate_takes_speculation_defaults_from_config(tiny_with_tokenizer, tmp_path, capsys):
    """bench_adaptive.py --record writes the faster drafting mode, its exit layer
    and k_max and the draft vocabulary into config.json; the CLI uses them unless
    a flag says otherwise, and the output stays exact."""
    from tokenizers import Tokenizer

    from layerskip_kernels.generation.draft_vocab import frequent_tokens, save_frequencies

    adaptive = dict(exit_layer=1, num_speculations=6, threshold=0.5, per_row_k=False, bandit=False)
    path = _copy_with_layerskip_defaults(tiny_with_tokenizer, tmp_path / "m", default_exit_layer=2,
                                         default_num_speculations=3, default_speculation="adaptive",
                                         default_draft_vocab=40, adaptive=adaptive)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    save_frequencies(str(path), torch.arange(tok.get_vocab_size(), dtype=torch.int64) % 7)
    model = lk.LlamaForCausalLM.from_pretrained(path)
    ar, _ = expected_cli_text(tok, model, "def add(", True, max_new_tokens=10)
    base = ["generate", "--model", str(path), "--prompt", "def add(", "--max-new-tokens", "10", "--dtype", "float32"]
    seen = []
    real = lk.generate
    try:
        lk.generate = lambda *a, **kw: seen.append(kw) or real(*a, **kw)
        assert main(base) == 0
        assert main(base + ["--speculation", "static", "--draft-vocab", "0"]) == 0
    finally:
        lk.generate = real
    captured = capsys.readouterr()
    assert captured.out == ar + ar  # greedy: every mode gives the autoregressive text
    first, second = seen
    assert (first["speculation"], first["exit_layer"], first["num_speculations"]) == ("adaptive", 1, 6)
    assert first["draft_vocab"].tolist() == frequent_tokens(str(path), 40).tolist()
    assert (second["speculation"], second["exit_layer"], second["num_speculations"]) == ("static", 2, 3)
    assert second["draft_vocab"] is None
    assert "[self-speculative adaptive E=1 k<=6 draft-vocab=40]" in captured.err  # no bandit: E stays
    assert "[self-speculative E=2 k=3]" in captured.err


def test_a_recorded_draft_vocabulary_is_not_needed_without_drafting(tiny_with_tokenizer, tmp_path, capsys):
    """--exit-layer 0 never drafts: a recorded default_draft_vocab without its
    frequency file does not refuse it (an explicit --draft-vocab still does)."""
    path = _copy_with_layerskip_defaults(tiny_with_tokenizer, tmp_path / "m", default_draft_vocab=40)
    base = ["generate", "--model", str(path), "--prompt", "def add(", "--max-new-tokens", "3", "--exit-layer"]
    assert main(base + ["0"]) == 0
    assert "[autoregressive]" in capsys.readouterr().err
    assert main(base + ["2"]) == 1  # drafting needs the recorded vocabulary's frequencies
    assert main(base + ["0", "--draft-vocab", "40"]) == 1
    assert capsys.readouterr().err.count("token_frequencies.npy") == 2


@pytest.mark.parametrize("layerskip,match", [
    (dict(default_speculation="dynamic"), "layerskip.default_speculation"),
    (dict(default_draft_vocab=-1), "layerskip.default_draft_vocab"),
    (dict(default_draft_vocab=True), "layerskip.default_draft_vocab"),
    (dict(default_speculation="adaptive", adaptive=dict(threshold=True)), "layerskip.adaptive.threshold"),
    (dict(default_speculation="adaptive", adaptive=dict(threshold=2)), "layerskip.adaptive.threshold"),
    (dict(default_speculation="adaptive", adaptive=dict(bandit="yes")), "layerskip.adaptive.bandit"),
    (dict(default_speculation="adaptive", adaptive=dict(k_max=4)), "unknown keys ['k_max']"),
    (dict(default_speculation="adaptive", adaptive=dict(exit_layer=4)), "layerskip.adaptive.exit_layer"),
    (dict(default_speculation="adaptive", adaptive=dict(num_speculations=16)), "layerskip.adaptive.num_speculations"),
    (dict(default_speculation="adaptive", adaptive=[1]), "layerskip.adaptive must be an object"),
])
def test_bad_speculation_defaults_are_refused(tiny_with_tokenizer, tmp_path, capsys, layerskip, match):
    path = _copy_with_layerskip_defaults(tiny_with_tokenizer, tmp_path / "m", **layerskip)
    rc = main(["generate", "--model", str(path), "--prompt", "def add(", "--max-new-tokens", "4"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and "config.json" in err and match in err, err


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
    """README's first command, offline: self-speculative at the model's recorded
    defaults (static or adaptive, config.json); in fp32 its text is exactly the
    autoregressive one through the API (in bf16 a near-tie may round either way)."""
    from tokenizers import Tokenizer

    from layerskip_kernels.generation.config import recorded_aids as _generation_defaults
    from layerskip_kernels.generation.policy import adaptive_settings

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "layerskip_kernels.cli", "generate", "--prompt", "import os\n", "--max-new-tokens",
           "16"]
    path = lk.default_model_path()
    model = lk.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    defaults = model.config.extra.get("layerskip", {})
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    if defaults.get("default_speculation", "static") == "adaptive":
        settings = adaptive_settings(model.config)  # the record merged with the built-in settings
        near = "~" if settings["bandit"] else "="
        mode = f"self-speculative adaptive E{near}{settings.get('exit_layer', defaults.get('default_exit_layer'))} "
    else:
        mode = f"self-speculative E={defaults.get('default_exit_layer')} "
    assert f"[{mode}" in res.stderr and " tokens/s, acceptance " in res.stderr, res.stderr
    res = subprocess.run(cmd + ["--dtype", "float32"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    aids = _generation_defaults(path)  # the decoding aids the CLI applies
    text, ref = expected_cli_text(tok, model, "import os\n", True, max_new_tokens=16, exit_layer=None, **aids)
    assert res.stdout == text
    assert f"[{mode}" in res.stderr and f"{len(ref.sequences[0])} tokens" in res.stderr


# --------------------------------------------------------------------------- --compare


def _compare_lines(err):
    lines = [l for l in err.strip().splitlines() if l.startswith(("[", "ERROR: ["))]
    assert len(lines) == 3, err
    return lines


@pytest.mark.parametrize("extra", [[], ["--repetition-penalty", "1.3", "--no-repeat-ngram-size", "2"]])
def test_compare_prints_both_speeds_and_checks_identity(tiny_with_tokenizer, capsys, extra):
    args = ["generate", "--model", str(tiny_with_tokenizer), "--prompt", "def add(", "--max-new-tokens", "9",
            "--dtype", "float32", "--exit-layer", "2", "--num-speculations", "3", "--compare", *extra]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert main(args[:-len(extra) - 1 if extra else -1] + extra) == 0  # the same run without --compare
    single_out, single_err = capsys.readouterr()
    assert out == single_out  # the streamed text is the self-speculative run's, once
    spec, ar, verdict = _compare_lines(err)
    n = int(spec.split("] ")[1].split(" ")[0])  # 9, or fewer when the model emits EOS
    assert spec.startswith(f"[self-speculative E=2 k=3] {n} tokens") and ar.startswith(f"[autoregressive] {n} tokens")
    assert spec.split("tokens/s")[1] == single_err.strip().split("tokens/s")[1]  # same acceptance, same backend
    tps = [float(line.split(" tokens/s")[0].rsplit(" ", 1)[1]) for line in (spec, ar)]
    ratio = float(verdict.split(": ")[1].split("x")[0])
    assert ratio == pytest.approx(tps[0] / tps[1], rel=0.02, abs=0.01)
    assert verdict.endswith(f"greedy tokens identical ({n} tokens)") and 1 <= n <= 9


def test_compare_reports_a_mismatch(tiny_with_tokenizer, capsys, monkeypatch):
    """The identity check can fail: a self-speculative run that differs is reported, exit status 1."""
    real = lk.generate

    def wrong_drafts(model, ids, **kw):
        out = real(model, ids, **kw)
        if kw.get("exit_layer") and kw.get("max_new_tokens") == 9:
            out.sequences[0][4] = (out.sequences[0][4] + 1) % model.config.vocab_size
        return out

    monkeypatch.setattr(lk, "generate", wrong_drafts)
    args = ["generate", "--model", str(tiny_with_tokenizer), "--prompt", "def add(", "--max-new-tokens", "9",
            "--exit-layer", "2", "--compare"]
    assert main(args + ["--dtype", "float32"]) == 1
    verdict = _compare_lines(capsys.readouterr().err)[2]
    assert verdict.startswith("ERROR: [compare]") and "greedy tokens differ from token 4 on" in verdict
    # In bfloat16 a difference is reported with its likely cause, not as an error.
    assert main(args + ["--dtype", "bfloat16"]) == 0
    verdict = _compare_lines(capsys.readouterr().err)[2]
    assert "greedy tokens differ from token 4 on" in verdict and "--dtype float32 checks exactness" in verdict


def test_compare_when_sampling_says_what_is_compared(tiny_with_tokenizer, capsys):
    rc = main(["generate", "--model", str(tiny_with_tokenizer), "--prompt", "def add(", "--max-new-tokens", "6",
               "--exit-layer", "1", "--sample", "--seed", "5", "--compare"])
    assert rc == 0
    verdict = _compare_lines(capsys.readouterr().err)[2]
    assert "same seed and the same distribution, not compared token for token" in verdict
    assert "identical" not in verdict


def test_compare_without_drafting_is_refused(tiny_with_tokenizer, capsys):
    rc = main(["generate", "--model", str(tiny_with_tokenizer), "--prompt", "def add(", "--max-new-tokens", "4",
               "--exit-layer", "0", "--compare"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.startswith("error: --compare") and "autoregressive already" in err


def test_dtype_auto_is_the_measured_choice_of_the_running_cpu_level(cpu_level, tiny_with_tokenizer, capsys):
    """--dtype auto (the default) loads the weights in the dtype recorded for the
    CPU level that runs (model.dtypes), and the stats line names it; GPUs get bf16."""
    from layerskip_kernels.model.dtypes import DECODE_DTYPE_BY_CPU_LEVEL, decode_dtype

    want = DECODE_DTYPE_BY_CPU_LEVEL[cpu_level][0]
    assert decode_dtype("cpu") == getattr(torch, want)
    assert decode_dtype("cuda") == torch.bfloat16
    rc = main(["generate", "--model", str(tiny_with_tokenizer), "--prompt", "def add(", "--max-new-tokens", "3",
               "--exit-layer", "1", "--num-speculations", "2"])
    assert rc == 0
    assert f" tokens/iteration, {want}, backend cpu" in capsys.readouterr().err
