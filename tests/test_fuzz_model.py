"""Bad input at the model boundary: from_pretrained (config, index, checkpoint)
and generate() arguments.

Every bad input must end in one ValueError / FileNotFoundError that names the
file and key (loader) or the argument (generate) and what was expected; no file
outside the model directory is ever opened; no model is built and no cache is
allocated for sizes the checkpoint or the memory cannot back.
"""

import builtins
import json
import math
import os
import shutil
import uuid
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import layerskip_kernels as lk
from layerskip_kernels.generation import MAX_SPECULATIONS
from layerskip_kernels.model import llama as llama_mod
from layerskip_kernels.model import loading

from helpers import make_hf_checkpoint

# generate()'s documented smallest sampling temperature (below it, logits / T
# overflows float32 for ordinary logits; greedy decoding is the limit anyway).
MIN_TEMPERATURE = 1e-5

# derandomize: CI runs the same examples every time (a failure is reproducible, never flaky).
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One untied and one tied checkpoint, copied per case by `fresh`."""
    root = tmp_path_factory.mktemp("fuzz_base")
    make_hf_checkpoint(root / "untied", "mha_untied")
    make_hf_checkpoint(root / "tied", "gqa_tied")
    hf = make_hf_checkpoint(root / "one", "mha_untied")
    hf.save_pretrained(root / "sharded", max_shard_size="20KB")
    return root


@pytest.fixture
def fresh(base, tmp_path):
    """fresh(name) -> a private copy of a base checkpoint directory."""

    def copy(name="untied"):
        dst = tmp_path / f"{name}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(base / name, dst)
        return dst

    return copy


def edit_json(path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def load(path):
    return lk.LlamaForCausalLM.from_pretrained(path)


@pytest.fixture
def no_modules_built():
    """Counts Block constructions: a refused config must build none."""
    built = []
    orig = llama_mod.Block.__init__

    def counting(self, cfg):
        built.append(1)
        orig(self, cfg)

    with mock.patch.object(llama_mod.Block, "__init__", counting):
        yield built


class OpenRecorder:
    """Records every path opened through open() or safetensors.safe_open
    inside `with recorder:` blocks (the loads), not while a test builds files."""

    def __init__(self):
        self.seen = []
        self._patches = []

    def _rec(self, real):
        def opener(file, *a, **k):
            if isinstance(file, (str, bytes, os.PathLike)):
                self.seen.append(os.path.realpath(os.fsdecode(file)))
            return real(file, *a, **k)

        return opener

    def __enter__(self):
        self._patches = [mock.patch.object(builtins, "open", self._rec(builtins.open)),
                         mock.patch.object(loading, "safe_open", self._rec(loading.safe_open))]
        for p in self._patches:
            p.start()
        return self

    def __exit__(self, *exc):
        for p in self._patches:
            p.stop()

    def clear(self):
        self.seen.clear()


@pytest.fixture
def opened_files():
    return OpenRecorder()


def assert_inside(rec, root):
    seen = rec.seen
    root = os.path.realpath(root)
    outside = [p for p in seen if os.path.commonpath([root, p]) != root]
    assert not outside, f"opened outside {root}: {outside}"


# --------------------------------------------------------------------------- shard index: path traversal


def _point_index_at(model_dir, shard_name):
    """Rewrite the sharded index so that its first shard's tensors come from `shard_name`."""
    index_path = model_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"] = {k: (shard_name if v == first else v) for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    return first


@pytest.mark.parametrize("absolute", [False, True])
def test_index_entry_outside_is_refused_and_never_opened(fresh, opened_files, absolute):
    model = fresh("sharded")
    other = fresh("sharded")  # a foreign, fully valid checkpoint beside it
    first = sorted(f for f in os.listdir(other) if f.endswith(".safetensors"))[0]
    os.remove(model / first)
    entry = str(other / first) if absolute else f"../{other.name}/{first}"
    _point_index_at(model, entry)
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json.*outside the model directory") as e:
        with opened_files:
            load(model)
    assert repr(entry) in str(e.value)
    assert_inside(opened_files, model)


def test_shard_symlink_escaping_the_directory_is_refused(fresh, opened_files):
    model = fresh("sharded")
    other = fresh("sharded")
    first = sorted(f for f in os.listdir(model) if f.endswith(".safetensors"))[0]
    os.remove(model / first)
    os.symlink(other / first, model / first)
    with pytest.raises(ValueError, match=f"{first}.*outside the model directory"):
        with opened_files:
            load(model)
    assert_inside(opened_files, model)


def test_single_file_and_config_symlinks_escaping_are_refused(fresh, opened_files):
    for name in ("model.safetensors", "config.json"):
        model, other = fresh("untied"), fresh("untied")
        os.remove(model / name)
        os.symlink(other / name, model / name)
        with pytest.raises(ValueError, match=f"{name}.*outside the model directory"):
            with opened_files:
                load(model)
        assert_inside(opened_files, model)
        opened_files.clear()


def test_symlink_inside_the_directory_is_fine(fresh):
    model = fresh("untied")
    os.makedirs(model / "weights")
    os.rename(model / "model.safetensors", model / "weights" / "real.safetensors")
    os.symlink("weights/real.safetensors", model / "model.safetensors")
    assert torch.isfinite(load(model)(torch.tensor([[1, 2, 3]]))).all()


def test_hub_cache_snapshot_layout_loads(fresh, tmp_path, opened_files):
    """huggingface_hub's cache: snapshots/<rev>/<file> are symlinks to ../../blobs/<hash>."""
    src = fresh("sharded")
    repo = tmp_path / "models--x--y"
    snap = repo / "snapshots" / "abc123"
    os.makedirs(repo / "blobs")
    os.makedirs(snap)
    for i, f in enumerate(sorted(os.listdir(src))):
        shutil.copy(src / f, repo / "blobs" / f"blob{i}")
        os.symlink(f"../../blobs/blob{i}", snap / f)
    ids = torch.tensor([[1, 2, 3]])
    with opened_files:
        snap_model = load(snap)
    assert torch.equal(snap_model(ids), load(src)(ids))
    assert_inside(opened_files, repo)


def test_valid_sharded_load_opens_only_files_inside(fresh, opened_files):
    model = fresh("sharded")
    with opened_files:
        load(model)
    shards = [f for f in os.listdir(model) if f.endswith(".safetensors")]
    assert len(opened_files.seen) >= len(shards) + 1, "the recorder does not see the loader's files"
    assert_inside(opened_files, model)


# --------------------------------------------------------------------------- config.json / index: not JSON objects


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "null", '"llama"', "\xff\xfe", "{\"a\": NaN"])
@pytest.mark.parametrize("file", ["config.json", "model.safetensors.index.json"])
def test_unreadable_json_names_the_file(fresh, file, text):
    model = fresh("sharded")
    with open(model / file, "w", encoding="latin-1") as f:
        f.write(text)
    with pytest.raises(ValueError, match=file.replace(".", r"\.")):
        load(model)


@pytest.mark.parametrize("weight_map", [None, [], {}, {"model.norm.weight": 3}, {"model.norm.weight": None},
                                        "model.safetensors"])
def test_bad_weight_map_names_the_index(fresh, weight_map):
    model = fresh("sharded")
    edit_json(model / "model.safetensors.index.json", weight_map=weight_map)
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json.*weight_map"):
        load(model)


# --------------------------------------------------------------------------- config values

_ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4), st.lists(st.integers(0, 9), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.sampled_from([0, -1, 1, 2, 2**31, 10**7, 10**10, "false", "4", 4.0]),
)
_UNTIED = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=4, head_dim=12)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v):
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an int beyond float's range
        return False


def _config_value_ok(key, v):
    """The spec: which values of `key` a loader must accept for the untied base checkpoint."""
    if key in _UNTIED:
        if v is None and key in ("num_key_value_heads", "head_dim"):
            return True  # derived from num_attention_heads / hidden_size
        return _is_int(v) and v == _UNTIED[key]
    if key == "max_position_embeddings":
        return _is_int(v) and 1 <= v <= 2**31 - 1  # positions are int32 in the kernels
    if key == "rms_norm_eps":
        return _is_real(v) and v >= 0
    if key == "rope_theta":
        return _is_real(v) and v >= 1
    if key == "tie_word_embeddings":
        return isinstance(v, bool)
    if key in ("bos_token_id", "pad_token_id"):
        return v is None or _is_int(v)
    if key == "eos_token_id":
        ids = v if isinstance(v, list) else [v]
        return v is None or all(_is_int(t) and 0 <= t < 97 for t in ids)
    raise AssertionError(key)


_KEYS = sorted(_UNTIED) + ["max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings",
                           "bos_token_id", "pad_token_id", "eos_token_id"]


@FUZZ
@given(key=st.sampled_from(_KEYS), value=_ANY)
# Found by this test: a JSON int past int64 reached torch as rms_norm_eps.
@example(key="rms_norm_eps", value=2**64)
@example(key="rope_theta", value=10**400)
def test_config_values_fuzz(fresh, no_modules_built, key, value):
    no_modules_built.clear()  # one fixture instance serves every example
    model = fresh("untied")
    edit_json(model / "config.json", **{key: value})
    if _config_value_ok(key, value):
        m = load(model)
        logits = m(torch.tensor([[1, 2, 3, 4]]))
        assert torch.isfinite(logits).all(), f"{key}={value!r} loads into a model with non-finite logits"
        return
    with pytest.raises(ValueError) as e:
        load(model)
    msg = str(e.value)
    assert "config.json" in msg, msg
    assert key in msg or ("layer" in msg and key == "num_hidden_layers"), msg
    assert not no_modules_built, f"{len(no_modules_built)} blocks built before {key}={value!r} was refused"


@pytest.mark.parametrize("value", [0.0, -1.0, -1e-3, float("nan"), float("inf"), 1e-300, "10000"])
def test_rope_theta_in_rope_parameters(fresh, value):
    model = fresh("untied")
    edit_json(model / "config.json", rope_parameters={"rope_theta": value, "rope_type": "default"})
    with pytest.raises(ValueError, match="config.json.*rope_theta"):
        load(model)


@pytest.mark.parametrize(
    "scaling,key",
    [
        (dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16),
         "factor"),
        (dict(rope_type="llama3", factor=8.0, high_freq_factor=4.0, original_max_position_embeddings=16),
         "low_freq_factor"),
        (dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, original_max_position_embeddings=16),
         "high_freq_factor"),
        (dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0),
         "original_max_position_embeddings"),
        (dict(rope_type="llama3", factor=0.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=16), "factor"),
        (dict(rope_type="llama3", factor="8", low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=16), "factor"),
        (dict(rope_type="llama3", factor=8.0, low_freq_factor=4.0, high_freq_factor=4.0,
              original_max_position_embeddings=16), "high_freq_factor"),
        (dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=0), "original_max_position_embeddings"),
        (["llama3"], "rope_scaling"),
        ("llama3", "rope_scaling"),
        (dict(factor=8.0), "rope_type"),
    ],
)
def test_rope_scaling_checked_at_load(fresh, scaling, key):
    model = fresh("untied")
    edit_json(model / "config.json", rope_scaling=scaling)
    with pytest.raises(ValueError, match=f"config.json.*{key}"):
        load(model)


def test_layerskip_section_must_be_an_object(fresh):
    model = fresh("untied")
    edit_json(model / "config.json", layerskip=[4])
    with pytest.raises(ValueError, match="config.json.*layerskip"):
        load(model)


@pytest.mark.parametrize("key,value", [("num_hidden_layers", 10**7), ("vocab_size", 10**9),
                                       ("hidden_size", 10**6), ("intermediate_size", 10**9)])
def test_sizes_the_checkpoint_does_not_hold_build_nothing(fresh, no_modules_built, key, value):
    model = fresh("untied")
    edit_json(model / "config.json", **{key: value})
    with pytest.raises(ValueError, match="config.json"):
        load(model)
    assert not no_modules_built


def test_rope_tables_sized_by_the_call_not_the_config(fresh):
    model = fresh("untied")
    edit_json(model / "config.json", max_position_embeddings=2**31 - 1)
    m = load(model)
    out = lk.generate(m, [[1, 2, 3]], max_new_tokens=4, eos_token_id=[])
    assert len(out.sequences[0]) == 4
    assert m._rope[0].shape[0] <= 64, f"RoPE tables of {m._rope[0].shape[0]} rows for a 7-token call"


# --------------------------------------------------------------------------- checkpoint tensors


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int32, torch.int64, torch.bool])
def test_integer_and_bool_weights_refused(fresh, dtype):
    model = fresh("untied")
    w = load_file(model / "model.safetensors")
    w["model.layers.1.mlp.up_proj.weight"] = torch.ones_like(w["model.layers.1.mlp.up_proj.weight"], dtype=dtype)
    save_file(w, model / "model.safetensors")
    with pytest.raises(ValueError, match=r"up_proj.*model\.safetensors.*dtype"):
        load(model)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_float_weights_of_any_width_load(fresh, dtype):
    model = fresh("untied")
    w = load_file(model / "model.safetensors")
    w["model.norm.weight"] = w["model.norm.weight"].to(dtype)
    save_file(w, model / "model.safetensors")
    assert torch.isfinite(load(model)(torch.tensor([[1, 2]]))).all()


@FUZZ
@given(data=st.data())
def test_tensor_shapes_fuzz(fresh, data):
    model = fresh("untied")
    w = load_file(model / "model.safetensors")
    name = data.draw(st.sampled_from(sorted(w)))
    shape = tuple(data.draw(st.lists(st.integers(0, 100), min_size=0, max_size=3)))
    if shape == tuple(w[name].shape):
        return
    w[name] = torch.zeros(shape)
    save_file(w, model / "model.safetensors")
    with pytest.raises(ValueError, match=f"{name}.*shape"):
        load(model)


@pytest.mark.parametrize("shape", [(3, 7), (101,), (101, 64, 1), (100, 64)])
def test_tied_model_checks_a_present_lm_head(fresh, shape):
    model = fresh("tied")
    w = load_file(model / "model.safetensors")
    w["lm_head.weight"] = torch.zeros(shape)
    save_file(w, model / "model.safetensors")
    with pytest.raises(ValueError, match="lm_head.weight.*shape"):
        load(model)


def test_tied_model_with_matching_lm_head_loads(fresh):
    model = fresh("tied")
    w = load_file(model / "model.safetensors")
    w["lm_head.weight"] = w["model.embed_tokens.weight"].clone()
    save_file(w, model / "model.safetensors")
    m = load(model)
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()


def test_tensor_in_two_shards_is_an_error(fresh):
    model = fresh("sharded")
    shards = sorted(f for f in os.listdir(model) if f.endswith(".safetensors"))
    a, b = load_file(model / shards[0]), load_file(model / shards[1])
    dup = sorted(a)[0]
    b[dup] = a[dup] + 1  # the silent "last wins" would load this one
    save_file(b, model / shards[1])
    with pytest.raises(ValueError, match=f"{dup}.*{shards[0]}.*{shards[1]}|{dup}.*{shards[1]}.*{shards[0]}"):
        load(model)


def test_corrupt_safetensors_names_the_file(fresh):
    model = fresh("untied")
    (model / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        load(model)


@pytest.mark.parametrize("kw,match", [(dict(dtype=torch.int64), "dtype"), (dict(dtype="float32"), "dtype"),
                                      (dict(device="nope"), "device"), (dict(device=3.5), "device")])
def test_from_pretrained_arguments(fresh, kw, match):
    with pytest.raises(ValueError, match=match):
        lk.LlamaForCausalLM.from_pretrained(fresh("untied"), **kw)


# --------------------------------------------------------------------------- generate() arguments


@pytest.fixture(scope="module")
def tiny(base):
    return lk.LlamaForCausalLM.from_pretrained(base / "tied")  # 4 layers, vocab 101, eos 2


@pytest.fixture
def model_never_runs(tiny):
    """A refused call must not reach the model or allocate its cache."""
    with mock.patch.object(tiny, "embed", side_effect=AssertionError("the model ran")), \
         mock.patch.object(lk.cache.StaticKVCache, "allocate", side_effect=AssertionError("cache allocated")):
        yield tiny


def test_numpy_and_torch_integer_scalars_are_ints(tiny):
    ref = lk.generate(tiny, [[5, 6, 7]], max_new_tokens=3, eos_token_id=[], exit_layer=2, num_speculations=2)
    out = lk.generate(tiny, [[np.int64(5), np.int32(6), torch.tensor(7)]], max_new_tokens=np.int64(3),
                      eos_token_id=[np.int64(99)], exit_layer=np.int16(2), num_speculations=torch.tensor(2),
                      seed=np.uint64(3), top_k=np.int8(0))
    assert out.sequences == ref.sequences
    assert lk.generate(tiny, [[5]], max_new_tokens=2, eos_token_id=np.int64(2)).sequences is not None


BAD_CALLS = [
    (dict(input_ids=[[1, True]]), "input_ids"),
    (dict(input_ids=[[1, 2.0]]), "input_ids"),
    (dict(input_ids=[[1, "2"]]), "input_ids"),
    (dict(input_ids=[[1, np.int64(101)]]), r"input_ids.*101.*\[0, vocab_size=101\)"),
    (dict(input_ids=[[1, 2**70]]), "input_ids"),
    (dict(input_ids=[1, 2]), "input_ids"),
    (dict(input_ids="hello"), "input_ids"),
    (dict(input_ids=torch.tensor([[1.0, 2.0]])), "input_ids"),
    (dict(input_ids=torch.tensor([[1, 2]]), attention_mask=[[1, 1]]), "attention_mask"),
    (dict(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.tensor([[1, 2]])), "attention_mask"),
    (dict(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.tensor([[0, 0]])), "attention_mask"),
    (dict(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.tensor([[1.0, 1.0]])), "attention_mask"),
    (dict(eos_token_id=0.5), "eos_token_id"),
    (dict(eos_token_id="2"), "eos_token_id"),
    (dict(eos_token_id=2**70), "eos_token_id"),
    (dict(eos_token_id=[None]), "eos_token_id"),
    (dict(eos_token_id=-1), "eos_token_id"),
    (dict(eos_token_id=True), "eos_token_id"),
    (dict(eos_token_id={"a": 1}), "eos_token_id"),
    (dict(do_sample=True, temperature=1e-40), "temperature"),
    (dict(do_sample=True, temperature=float("nan")), "temperature"),
    (dict(do_sample=True, temperature=float("inf")), "temperature"),
    (dict(do_sample=True, temperature="1"), "temperature"),
    (dict(do_sample=True, top_p=float("nan")), "top_p"),
    (dict(do_sample=True, top_p=1.5), "top_p"),
    (dict(do_sample=True, top_k=2.5), "top_k"),
    (dict(do_sample=True, top_k=True), "top_k"),
    (dict(do_sample="yes"), "do_sample"),
    (dict(seed=2**63), "seed"),
    (dict(seed=2**64 - 1), "seed"),
    (dict(seed=-(2**63) - 1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(seed="1"), "seed"),
    (dict(max_new_tokens=True), "max_new_tokens"),
    (dict(max_new_tokens=2.0), "max_new_tokens"),
    (dict(exit_layer=2.0), "exit_layer"),
    (dict(exit_layer=True), "exit_layer"),
    (dict(exit_layer=2, num_speculations=2.0), "num_speculations"),
    (dict(max_cache_len=0), "max_cache_len"),
    (dict(max_cache_len="9"), "max_cache_len"),
    (dict(max_cache_len=2**40), "max_cache_len"),
    (dict(max_new_tokens=10**9, max_cache_len=10**9 + 10), "max_new_tokens"),
    (dict(streamer=3), "streamer"),
]


@pytest.mark.parametrize("kwargs,match", BAD_CALLS, ids=[str(i) for i in range(len(BAD_CALLS))])
def test_bad_generate_arguments(model_never_runs, kwargs, match):
    args = dict(input_ids=[[1, 2, 3]], max_new_tokens=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        lk.generate(model_never_runs, **args)


def test_huge_cache_refused_before_allocating(tiny, model_never_runs):
    with pytest.raises(ValueError, match=r"max_new_tokens.*(memory|bytes|GB)"):
        lk.generate(tiny, [[1, 2, 3]], max_new_tokens=10**9, max_cache_len=10**9 + 3)


def test_seed_range_edges_work(tiny):
    for seed in (-(2**63), 2**63 - 1, 0, np.int64(-5)):
        out = lk.generate(tiny, [[1, 2, 3]], max_new_tokens=5, exit_layer=2, do_sample=True, seed=seed,
                          eos_token_id=[])
        assert len(out.sequences[0]) == 5
    a = lk.generate(tiny, [[1, 2, 3]], max_new_tokens=6, do_sample=True, seed=-7, eos_token_id=[])
    b = lk.generate(tiny, [[1, 2, 3]], max_new_tokens=6, do_sample=True, seed=-7, eos_token_id=[])
    assert a.sequences == b.sequences


def test_smallest_documented_temperature_samples(tiny):
    from layerskip_kernels.generation import validation

    assert validation.MIN_TEMPERATURE == MIN_TEMPERATURE
    t = MIN_TEMPERATURE
    out = lk.generate(tiny, [[1, 2, 3]], max_new_tokens=4, do_sample=True, temperature=t, seed=0, eos_token_id=[])
    greedy = lk.generate(tiny, [[1, 2, 3]], max_new_tokens=4, eos_token_id=[])
    assert out.sequences == greedy.sequences  # so cold it is greedy


_ARG_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3), st.lists(st.one_of(st.none(), st.integers(-3, 200)), max_size=2),
    st.sampled_from([np.int64(3), np.float32(0.5), torch.tensor(2), 1e-40, 2**63, -(2**63)]),
)


def _int_like(v):
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.dtype.is_floating_point and v.dtype != torch.bool:
        return int(v)
    return None


def _real(v):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None
    return float(v) if math.isfinite(float(v)) else None


def _arg_ok(name, v):
    """The documented ranges (generate's docstring) of each argument, for the tiny model (L=4, V=101)."""
    i = _int_like(v)
    if name == "max_new_tokens":
        return i is not None and 1 <= i <= 256 - 3  # max_cache_len defaults to max_position_embeddings
    if name == "exit_layer":
        return v is None or (i is not None and 1 <= i <= 3)
    if name == "num_speculations":
        return i is not None and 1 <= i <= MAX_SPECULATIONS
    if name == "temperature":
        r = _real(v)
        return r is not None and r >= MIN_TEMPERATURE
    if name == "top_k":
        return i is not None and i >= 0
    if name == "top_p":
        r = _real(v)
        return r is not None and 0 < r <= 1 and np.float32(r) > 0  # the nucleus is cut in float32
    if name == "seed":
        return v is None or (i is not None and -(2**63) <= i < 2**63)
    if name == "eos_token_id":
        ids = v if isinstance(v, list) else [v]
        return v is None or all(_int_like(t) is not None and 0 <= _int_like(t) < 101 for t in ids)
    if name == "max_cache_len":
        return v is None or (i is not None and 3 + 3 <= i <= 2**31 - 1)  # prompt + max_new_tokens
    raise AssertionError(name)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["max_new_tokens", "exit_layer", "num_speculations", "temperature", "top_k", "top_p",
                             "seed", "eos_token_id", "max_cache_len"]), value=_ARG_VALUES)
def test_generate_arguments_fuzz(tiny, name, value):
    args = dict(max_new_tokens=3, exit_layer=2, num_speculations=2, do_sample=True, eos_token_id=[], seed=0)
    args[name] = value
    if _arg_ok(name, value):
        out = lk.generate(tiny, [[1, 2, 3]], **args)
        n = _int_like(args["max_new_tokens"])
        assert 1 <= len(out.sequences[0]) <= n and all(0 <= t < 101 for t in out.sequences[0])
        return
    with pytest.raises(ValueError, match=name):
        lk.generate(tiny, [[1, 2, 3]], **args)
