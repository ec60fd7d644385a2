"""The model produces the same greedy tokens with every backend that runs here."""

import pytest
import torch

import layerskip_kernels as lk

from conftest import backend_device, backend_params
from helpers import make_hf_checkpoint

PROMPTS = [[5, 6, 7, 8, 9, 10], [3, 4, 11]]
# A head dim every backend's attention runs (the cuda kernel's are
# backends.registry.BY_NAME["cuda"].head_dims; gqa_tied's own, 64 / 8 = 8, is not one).
HEAD_DIM = 32


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("backends")
    make_hf_checkpoint(path, "gqa_tied", num_hidden_layers=4, head_dim=HEAD_DIM)
    return path


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("exit_layer", [None, 2])
def test_greedy_tokens_match_reference_backend(model_path, backend, exit_layer):
    model = lk.LlamaForCausalLM.from_pretrained(model_path)
    assert model.config.head_dim == HEAD_DIM
    with lk.use_backend("torch"):
        ref = lk.generate(model, PROMPTS, max_new_tokens=8, exit_layer=exit_layer, num_speculations=3,
                          eos_token_id=[]).sequences
    model = lk.LlamaForCausalLM.from_pretrained(model_path, device=backend_device(backend))
    with lk.use_backend(backend):
        got = lk.generate(model, PROMPTS, max_new_tokens=8, exit_layer=exit_layer, num_speculations=3,
                          eos_token_id=[]).sequences
    assert got == ref


@pytest.mark.skipif(lk.available_backends()["cuda"] is not None,
                    reason=f"cuda: {lk.available_backends()['cuda']}")
def test_unsupported_head_dim_on_cuda_raises_a_clear_error(tmp_path):
    """A model whose head dim the cuda kernel lacks is refused by name, with
    nothing written to the cache (the check runs before the kernel)."""
    make_hf_checkpoint(tmp_path, "gqa_tied", num_hidden_layers=2)  # head dim 8
    model = lk.LlamaForCausalLM.from_pretrained(tmp_path, device="cuda")
    assert model.config.head_dim not in lk.backends.registry.BY_NAME["cuda"].head_dims
    with lk.use_backend("cuda"), pytest.raises(ValueError, match=r"head dim D=8 .*'cuda' backend"):
        lk.generate(model, PROMPTS, max_new_tokens=2, eos_token_id=[])
    B, S, Hq, Hkv, D = 1, 1, 2, 1, 8
    kc = torch.zeros(B, Hkv, 8, D, device="cuda")
    with lk.use_backend("cuda"), pytest.raises(ValueError, match="head dim D=8"):
        lk.ops.draft_verify_attention(torch.randn(B, S, Hq, D, device="cuda"), kc, kc.clone(),
                                      torch.ones(B, S, Hkv, D, device="cuda"), torch.ones(B, S, Hkv, D, device="cuda"),
                                      torch.zeros(B, dtype=torch.int32, device="cuda"))
    assert not kc.any()


def _attention_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, 4, HEAD_DIM, generator=g).bfloat16()
    k_new, v_new = (torch.randn(2, 3, 2, HEAD_DIM, generator=g).bfloat16() for _ in range(2))
    cache = torch.randn(2, 2, 16, HEAD_DIM, generator=g).bfloat16()
    from layerskip_kernels.model import LlamaConfig, rope_tables

    cos, sin = rope_tables(LlamaConfig(head_dim=HEAD_DIM, hidden_size=128, num_attention_heads=4), 16)
    return q, cache, cache.clone(), k_new, v_new, torch.tensor([5, 13], dtype=torch.int32), cos, sin


@pytest.mark.skipif(lk.available_backends()["cpu"] is not None, reason=f"cpu: {lk.available_backends()['cpu']}")
@pytest.mark.parametrize("backend", [None, "cpu", "torch"])
def test_decode_attention_takes_the_raw_cpu_op_only_where_the_cpu_backend_runs(backend, monkeypatch):
    """The decode path's attention (model/attention.py) skips the Python checks
    only where ops.draft_verify_attention would run the cpu kernel: same output,
    same cache writes; with another backend selected it goes through ops."""
    from layerskip_kernels import ops
    from layerskip_kernels.model.attention import decode_attention

    raw, checked = torch.ops.layerskip.draft_verify_attention, ops.draft_verify_attention
    calls = []
    monkeypatch.setattr(torch.ops.layerskip, "draft_verify_attention", lambda *a: calls.append("raw") or raw(*a))
    monkeypatch.setattr(ops, "draft_verify_attention", lambda *a: calls.append("ops") or checked(*a))
    q, kc, vc, k_new, v_new, lens, cos, sin = _attention_case()
    want_k, want_v = kc.clone(), vc.clone()
    with lk.use_backend(backend), torch.no_grad():
        want = checked(q, want_k, want_v, k_new, v_new, lens, cos, sin)
        calls.clear()
        got = decode_attention(q, kc, vc, k_new, v_new, lens, cos, sin)
    assert calls[0] == ("raw" if backend in (None, "cpu") else "ops")
    assert torch.equal(got, want) and torch.equal(kc, want_k) and torch.equal(vc, want_v)


@pytest.mark.skipif(lk.available_backends()["cpu"] is not None, reason=f"cpu: {lk.available_backends()['cpu']}")
def test_decode_attention_raw_path_still_refuses_bad_input():
    """What the skipped Python checks caught, the raw op's C++ checks catch."""
    from layerskip_kernels.model.attention import decode_attention

    q, kc, vc, k_new, v_new, lens, cos, sin = _attention_case()
    with torch.no_grad():
        with pytest.raises(RuntimeError, match=r"cache_seqlens\[1\] \+ S = 14 \+ 3 exceeds"):
            decode_attention(q, kc, vc, k_new, v_new, torch.tensor([5, 14], dtype=torch.int32), cos, sin)
        with pytest.raises(RuntimeError, match="k_cache is written in place and must not share memory with v_cache"):
            decode_attention(q, kc, kc, k_new, v_new, lens, cos, sin)
        with pytest.raises(RuntimeError, match="k_new"):
            decode_attention(q, kc, vc, k_new[:, :2], v_new, lens, cos, sin)
