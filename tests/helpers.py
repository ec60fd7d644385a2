"""Tiny random checkpoints written with transformers' save_pretrained, and
small utilities of the tests."""

import contextlib
import math

import torch

CONFIGS = {
    "mha_untied": dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=4, vocab_size=97, tie_word_embeddings=False),
    "gqa_tied": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=8,
                     num_key_value_heads=2, vocab_size=101, tie_word_embeddings=True),
    "gqa3_llama3_rope": dict(hidden_size=72, intermediate_size=100, num_hidden_layers=3, num_attention_heads=6,
                             num_key_value_heads=2, vocab_size=89, tie_word_embeddings=True, rope_theta=500000.0,
                             rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                               high_freq_factor=4.0, original_max_position_embeddings=16)),
    "odd_hidden_headdim": dict(hidden_size=66, intermediate_size=70, num_hidden_layers=2, num_attention_heads=3,
                               num_key_value_heads=1, head_dim=16, vocab_size=64, tie_word_embeddings=False),
}


def make_hf_checkpoint(path, name="gqa_tied", seed=0, edit=None, **overrides):
    """Save a random transformers LlamaForCausalLM to `path`; returns the HF model (fp32, eval).

    edit: optional function called on the HF model (under no_grad) before saving.
    """
    import transformers

    kw = dict(CONFIGS[name], max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    kw.update(overrides)
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**kw)
    model = transformers.LlamaForCausalLM(cfg).eval()
    # Larger-than-default init so that logits are far from uniform and argmax ties are rare.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
        if edit is not None:
            edit(model)
    model.save_pretrained(path)
    return model


def damp_late_layers(start, factor=0.05):
    """An `edit` for make_hf_checkpoint: layers >= start write `factor` times
    less into the residual stream (o_proj and down_proj scaled), so an early
    exit at any E >= start mostly agrees with the last layer: a high-acceptance
    model whose drafts run long, with some rejections left."""

    def edit(model):
        for layer in model.model.layers[start:]:
            layer.self_attn.o_proj.weight.mul_(factor)
            layer.mlp.down_proj.weight.mul_(factor)

    return edit


def bf16_errors(got, ref, truth):
    """(max, RMS) errors of got and of ref against the fp32 truth."""
    d_got, d_ref = got.float() - truth, ref.float() - truth
    return (d_got.abs().max().item(), d_ref.abs().max().item(),
            d_got.pow(2).mean().sqrt().item(), d_ref.pow(2).mean().sqrt().item())


def check_bf16_rule(got, ref, truth):
    """bf16 logits vs an independent bf16 run (transformers), both against the
    fp32 truth: max error within the reference's plus 2 ulp of the logits'
    magnitude, RMS error within 1% of the reference's. 8 x 40 tokens make the
    RMS stable to a few percent; an RMSNorm without its fp32 upcast raises it
    by 5-16%."""
    err, err_ref, rms, rms_ref = bf16_errors(got, ref, truth)
    ulp = 2.0**-7 * 2.0 ** math.floor(math.log2(truth.abs().max().item()))
    assert err <= err_ref + 2 * ulp, (err, err_ref)
    assert rms <= 1.01 * rms_ref, (rms, rms_ref)


def tiny_model(layers=4, seed=0):
    """A tiny random LlamaForCausalLM (fp32), built directly, no checkpoint."""
    from layerskip_kernels.model import LlamaConfig, LlamaForCausalLM
    from layerskip_kernels.train.trainer import init_weights

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    init_weights(model, std=0.2)  # large init: layers change the hidden state visibly
    return model


@contextlib.contextmanager
def torch_threads(n):
    """torch's intra-op thread count set to n inside the block, restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
