"""torch.compile(fullgraph=True) of the decode steps with our ops."""

import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels.cache import StaticKVCache

from helpers import make_hf_checkpoint

BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(lk.available_backends()[name] is not None,
                                                 reason=f"{name}: {lk.available_backends()[name]}"))
    for name in ("torch", "cpu")
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("compile")
    make_hf_checkpoint(path, "gqa_tied", num_hidden_layers=4)
    return lk.LlamaForCausalLM.from_pretrained(path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_draft_and_verify_steps_compile_fullgraph(model, backend):
    E, k = 2, 3
    torch._dynamo.reset()

    def draft_step(tok, lens, cache):  # one draft token: layers [0, E) + exit head
        h = model.forward_layers(model.embed(tok[:, None]), 0, E, cache, lens)
        return h[:, 0], model.exit_head(h)[:, 0].argmax(-1)

    def verify_step(hidden, lens, cache):  # layers [E, L) over k+1 positions
        return model.exit_head(model.forward_layers(hidden, E, model.num_layers, cache, lens))

    def fresh_cache():
        cache = StaticKVCache.for_model(model, 2, 32)
        cache.seqlens.copy_(torch.tensor([3, 9], dtype=torch.int32))
        return cache

    with lk.use_backend(backend), torch.inference_mode():
        eager_cache, compiled_cache = fresh_cache(), fresh_cache()
        cdraft = torch.compile(draft_step, fullgraph=True)
        cverify = torch.compile(verify_step, fullgraph=True)
        tok_e = tok_c = torch.tensor([5, 7])
        lens_e, lens_c = eager_cache.seqlens.clone(), compiled_cache.seqlens.clone()
        hid_e, hid_c = [], []
        for _ in range(k + 1):
            he, tok_e = draft_step(tok_e, lens_e, eager_cache)
            hc, tok_c = cdraft(tok_c, lens_c, compiled_cache)
            assert torch.equal(tok_e, tok_c)
            hid_e.append(he)
            hid_c.append(hc)
            lens_e += 1
            lens_c += 1
        le = verify_step(torch.stack(hid_e, 1), eager_cache.seqlens, eager_cache)
        lc = cverify(torch.stack(hid_c, 1), compiled_cache.seqlens, compiled_cache)
        assert torch.equal(le.argmax(-1), lc.argmax(-1))
        assert (le - lc).abs().max().item() <= 1e-4
        # The compiled steps wrote the same cache as the eager ones.
        assert (eager_cache.k - compiled_cache.k).abs().max().item() <= 1e-5
