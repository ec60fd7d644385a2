"""Every Python block of docs/engines.md runs as written and shows what it claims."""

import os
import re

import pytest
import torch

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "engines.md")
BLOCKS = re.findall(r"```python\n(.*?)```", open(DOC).read(), flags=re.S)


def check_transformers_block(ns):
    # The engine swap generates what transformers' own greedy loop generates,
    # and the attention implementation gives sdpa's logits.
    hf = ns["hf"]
    for prompt, seq in zip([[5, 6, 7], [8, 9]], ns["out"].sequences):
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert seq == ref[0, len(prompt):].tolist()
    with torch.no_grad():
        sdpa = hf(torch.tensor([[5, 6, 7]])).logits
    assert (ns["logits"] - sdpa).abs().max().item() <= 1e-4


# Blocks without asserts of their own are checked by a function keyed by a name
# the block defines.
CHECKS = {"apply_layerskip": check_transformers_block}


def test_doc_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_doc_block_runs(i):
    ns = {}
    exec(compile(BLOCKS[i], f"docs/engines.md block {i}", "exec"), ns)
    checks = [fn for name, fn in CHECKS.items() if name in ns]
    assert "assert " in BLOCKS[i] or checks, f"block {i} asserts nothing and has no check here"
    for fn in checks:
        fn(ns)


def test_doc_lists_the_op_schemas():
    # The schemas the doc shows other engines are ops.SCHEMAS (which
    # tests/test_attention_ops.py compares with the compiled registration).
    from layerskip_kernels import ops

    text = open(DOC).read()
    for name, schema in ops.SCHEMAS.items():
        assert f"\nlayerskip::{schema}\n" in text, f"{name}: docs/engines.md lists another schema"
