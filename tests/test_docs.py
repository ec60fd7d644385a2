"""Every Python block of docs/engines.md runs as written."""

import os
import re

import pytest

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "engines.md")
BLOCKS = re.findall(r"```python\n(.*?)```", open(DOC).read(), flags=re.S)


def test_doc_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_doc_block_runs(i):
    exec(compile(BLOCKS[i], f"docs/engines.md block {i}", "exec"), {})
