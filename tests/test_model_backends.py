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
