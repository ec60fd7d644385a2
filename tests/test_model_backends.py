"""The model produces the same greedy tokens with every backend that runs here."""

import pytest
import torch

import layerskip_kernels as lk

from conftest import backend_device, backend_params
from helpers import make_hf_checkpoint

PROMPTS = [[5, 6, 7, 8, 9, 10], [3, 4, 11]]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("backends")
    make_hf_checkpoint(path, "gqa_tied", num_hidden_layers=4)
    return path


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("exit_layer", [None, 2])
def test_greedy_tokens_match_reference_backend(model_path, backend, exit_layer):
    model = lk.LlamaForCausalLM.from_pretrained(model_path)
    with lk.use_backend("torch"):
        ref = lk.generate(model, PROMPTS, max_new_tokens=8, exit_layer=exit_layer, num_speculations=3,
                          eos_token_id=[]).sequences
    model = lk.LlamaForCausalLM.from_pretrained(model_path, device=backend_device(backend))
    with lk.use_backend(backend):
        got = lk.generate(model, PROMPTS, max_new_tokens=8, exit_layer=exit_layer, num_speculations=3,
                          eos_token_id=[]).sequences
    assert got == ref
