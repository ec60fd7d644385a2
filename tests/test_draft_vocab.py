"""Reduced draft vocabulary (generation.draft_vocab): the draft head scores a
subset of tokens, verification all of them. Greedy output stays exact (with
the decoding aids too, and compiled); the token-frequency file of a model
directory is read safely; bad subsets are refused naming draft_vocab. The
sampling distribution under a reduced draft is checked by the chi-square test
of test_generation."""

import os

import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels.generation import steps
from layerskip_kernels.generation.draft_head import DraftHead
from layerskip_kernels.generation.draft_vocab import (FREQUENCIES_FILE, check_draft_vocab, frequent_tokens,
                                                      load_frequencies, save_frequencies)
from layerskip_kernels.cache import StaticKVCache
from layerskip_kernels.vocab import LEGACY_FREQUENCIES_FILE

from helpers import damp_late_layers, make_hf_checkpoint

RAGGED = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Layers >= 2 barely change the residual: drafts from E = 2 are often accepted,
    so a reduced head changes which drafts are accepted, not only rejections."""
    path = tmp_path_factory.mktemp("draft_vocab")
    make_hf_checkpoint(path, "gqa_tied", num_hidden_layers=4, edit=damp_late_layers(2))
    return path


@pytest.fixture(scope="module")
def model(model_dir):
    return lk.LlamaForCausalLM.from_pretrained(model_dir)


def test_reduced_draft_step_scores_the_subset_only(model):
    V = model.config.vocab_size
    ids = torch.tensor([0, 3, 7, V - 1])
    cache_a = StaticKVCache.for_model(model, 2, 16)
    cache_b = StaticKVCache.for_model(model, 2, 16)
    model.rope(16, torch.device("cpu"))
    tok, pos = torch.tensor([5, 9]), torch.tensor([0, 3], dtype=torch.int32)
    with torch.inference_mode():
        h, full = steps.draft(model, 2, tok, cache_a, pos)
        h2, reduced = steps.draft(model, 2, tok, cache_b, pos, DraftHead(model, ids))
    torch.testing.assert_close(h2, h, atol=0, rtol=0)
    torch.testing.assert_close(reduced[:, ids], full[:, ids], atol=1e-6, rtol=1e-6)
    keep = torch.zeros(V, dtype=torch.bool)
    keep[ids] = True
    assert torch.isneginf(reduced[:, ~keep]).all()
    torch.testing.assert_close(cache_b.k, cache_a.k, atol=0, rtol=0)  # the same K/V written


def _subsets(V):
    return {"half": list(range(0, V, 2)), "one-token": [3], "all": list(range(V))}


@pytest.mark.parametrize("subset", ["half", "one-token", "all"])
@pytest.mark.parametrize("speculation", ["static", "adaptive"])
def test_greedy_with_reduced_draft_equals_autoregressive(model, subset, speculation):
    ids = _subsets(model.config.vocab_size)[subset]
    kw = dict(max_new_tokens=24, eos_token_id=[])
    ar = lk.generate(model, RAGGED, **kw)
    full = lk.generate(model, RAGGED, exit_layer=2, num_speculations=3, speculation=speculation, **kw)
    out = lk.generate(model, RAGGED, exit_layer=2, num_speculations=3, speculation=speculation, draft_vocab=ids, **kw)
    assert out.sequences == ar.sequences
    if subset == "all" and speculation == "static":  # (adaptive plans depend on measured speed)
        assert out.stats["accepted"] == full.stats["accepted"]
    if subset == "one-token":  # only token 3 can be drafted: every accepted draft is a 3
        assert out.stats["accepted"] <= sum(s.count(3) for s in ar.sequences)


@pytest.mark.parametrize("aids,ids", [
    (dict(repetition_penalty=1.3, no_repeat_ngram_size=2), [3, 8]),
    (dict(repetition_penalty=1.3, no_repeat_ngram_size=2), "every third"),
    # no token twice and a one-token subset: once 3 is in a row's context the
    # draft has no allowed token, drafts from a uniform q, and stays exact
    (dict(no_repeat_ngram_size=1), [3]),
])
def test_reduced_draft_with_decoding_aids_stays_exact(model, aids, ids):
    ids = list(range(0, model.config.vocab_size, 3)) if ids == "every third" else ids
    kw = dict(max_new_tokens=30, eos_token_id=[], **aids)
    ar = lk.generate(model, RAGGED, **kw)
    out = lk.generate(model, RAGGED, exit_layer=2, num_speculations=4, draft_vocab=ids, **kw)
    assert out.sequences == ar.sequences


def test_reduced_draft_sampling_with_every_subset_token_banned(model):
    # Sampling: rows whose draft has no allowed token must not produce NaN
    # probabilities; the result is a valid sample of the same length.
    out = lk.generate(model, RAGGED, exit_layer=2, num_speculations=3, do_sample=True, seed=5, eos_token_id=[],
                      max_new_tokens=20, no_repeat_ngram_size=1, draft_vocab=[3])
    assert [len(s) for s in out.sequences] == [20] * 3
    for p, s in zip(RAGGED, out.sequences):
        assert len(set(p + s)) == len(p + s)  # no_repeat_ngram_size=1: no token twice


def test_compiled_reduced_draft_equals_autoregressive(model):
    ids = _subsets(model.config.vocab_size)["half"]
    kw = dict(max_new_tokens=12, eos_token_id=[])
    ar = lk.generate(model, RAGGED, **kw)
    out = lk.generate(model, RAGGED, exit_layer=2, num_speculations=2, draft_vocab=ids, compile=True, **kw)
    assert out.sequences == ar.sequences


@pytest.mark.parametrize("bad,match", [
    ([], "non-empty"), ([[1, 2]], "1-D"), ([1.0, 2.0], "integer"), ([True, False], "integer"),
    ([1, 1], "distinct"), ([-1, 2], r"\[0, "), ([1, 10**6], r"\[0, "), ("abc", "draft_vocab"),
])
def test_bad_draft_vocab_is_refused(model, bad, match):
    with pytest.raises(ValueError, match=match) as e:
        lk.generate(model, [[1, 2, 3]], max_new_tokens=2, exit_layer=2, draft_vocab=bad)
    assert "draft_vocab" in str(e.value)
    with pytest.raises(ValueError, match="draft_vocab"):
        lk.Engine(model, 1, exit_layer=2, draft_vocab=bad)


def test_check_draft_vocab_sorts_and_accepts_tensors():
    ids = check_draft_vocab(torch.tensor([9, 2, 5], dtype=torch.int32), 10)
    assert ids.dtype == torch.int64 and ids.tolist() == [2, 5, 9]
    assert check_draft_vocab(None, 10) is None


# --------------------------------------------------------------------------- frequency file


def test_frequencies_round_trip_and_most_frequent_first(tmp_path):
    counts = torch.tensor([5, 0, 9, 9, 1, 7], dtype=torch.int64)
    save_frequencies(str(tmp_path), counts)
    assert torch.equal(load_frequencies(str(tmp_path), 6), counts)
    # shipped with the model, so readable by every user (safetensors alone writes 0600)
    assert os.stat(tmp_path / FREQUENCIES_FILE).st_mode & 0o777 == 0o644
    assert sorted(os.listdir(tmp_path)) == [FREQUENCIES_FILE]  # no temporary file left
    # the 3 most frequent: 2 and 3 (9, tie: lower id first), then 5 (7); returned sorted
    assert frequent_tokens(str(tmp_path), 3).tolist() == [2, 3, 5]
    assert frequent_tokens(str(tmp_path), 4).tolist() == [0, 2, 3, 5]
    for n in (0, 7, 2.0, True):
        with pytest.raises(ValueError, match="draft vocabulary size"):
            frequent_tokens(str(tmp_path), n)
    with pytest.raises(ValueError, match="vocabulary of 8"):
        load_frequencies(str(tmp_path), 8)


def test_bad_frequency_files_are_refused(tmp_path):
    import numpy as np

    with pytest.raises(ValueError, match="no token_frequencies.npy"):
        load_frequencies(str(tmp_path))
    f = tmp_path / FREQUENCIES_FILE
    np.save(f, np.ones(4))
    with pytest.raises(ValueError, match="int64"):
        load_frequencies(str(tmp_path))
    np.save(f, np.ones((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="1-D int64"):
        load_frequencies(str(tmp_path))
    np.save(f, -np.ones(4, dtype=np.int64))
    with pytest.raises(ValueError, match="non-negative"):
        load_frequencies(str(tmp_path))
    np.save(f, np.array([{"counts": 1}], dtype=object))  # pickled objects are never loaded
    with pytest.raises(ValueError, match="not a readable .npy"):
        load_frequencies(str(tmp_path))
    f.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a readable .npy"):
        load_frequencies(str(tmp_path))
    # a symlink leaving the model directory is not followed
    outside = tmp_path.parent / f"{tmp_path.name}_outside.npy"
    np.save(outside, np.ones(4, dtype=np.int64))
    f.unlink()
    os.symlink(outside, f)
    with pytest.raises(ValueError, match="outside the model directory"):
        load_frequencies(str(tmp_path))
    with pytest.raises(ValueError, match="counts must be"):
        save_frequencies(str(tmp_path), torch.ones(3))


def test_legacy_safetensors_frequencies_are_read_and_replaced(tmp_path):
    """Directories written before the .npy file keep working; saving removes the
    legacy safetensors file, which vLLM would try to load as model weights."""
    from safetensors.torch import save_file

    legacy = tmp_path / LEGACY_FREQUENCIES_FILE
    counts = torch.tensor([3, 0, 8, 1], dtype=torch.int64)
    save_file({"counts": counts}, str(legacy))
    assert torch.equal(load_frequencies(str(tmp_path), 4), counts)
    assert frequent_tokens(str(tmp_path), 2).tolist() == [0, 2]
    for bad, match in (({"counts": torch.ones(4)}, "int64"),
                       ({"counts": counts, "x": torch.ones(1)}, "exactly one tensor")):
        save_file(bad, str(legacy))
        with pytest.raises(ValueError, match=match):
            load_frequencies(str(tmp_path))
    legacy.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_frequencies(str(tmp_path))
    save_frequencies(str(tmp_path), counts)
    assert sorted(os.listdir(tmp_path)) == [FREQUENCIES_FILE]
    assert torch.equal(load_frequencies(str(tmp_path), 4), counts)


def test_embedded_model_has_one_safetensors_file():
    """vLLM loads every *.safetensors file of a model directory as weights: the
    shipped directory must have only the model's, and its frequencies as .npy."""
    d = lk.default_model_path()
    assert sorted(n for n in os.listdir(d) if n.endswith(".safetensors")) == ["model.safetensors"]
    assert load_frequencies(d, lk.LlamaForCausalLM.from_pretrained(d).config.vocab_size).sum() > 0


def test_frequencies_cli_counts_the_training_split(tmp_path):
    from layerskip_kernels.train import data
    from layerskip_kernels.train.frequencies import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(80):  # enough files for the hash split to hold some out
        (corpus / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n")
    model = tmp_path / "model"
    model.mkdir()
    tok = data.train_tokenizer([f"def f{i}(x):\n    return x + {i}\n" for i in range(12)], 300)
    tok.save(str(model / "tokenizer.json"))
    assert main([str(model), "--corpus", str(corpus)]) == 0
    counts = load_frequencies(str(model), tok.get_vocab_size())
    train_files, held = data.split_files(data.list_corpus_files(str(corpus)))
    expect = data.encode_files(tok, data.read_texts(str(corpus), sorted(train_files)))
    assert held and int(counts.sum()) == expect.numel()  # held-out files not counted
