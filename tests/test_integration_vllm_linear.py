"""The product vLLM's linear layers call under load_format "layerskip"
(integrations/vllm_linear.py), which needs no vLLM: equal to F.linear within
the dtype's tolerance, eager and compiled with a symbolic row count (as vLLM
compiles its forward), at row counts on both sides of our routing rule. In
vLLM itself: tests/vllm/test_vllm_linear.py."""

import pytest
import torch
import torch.nn.functional as F

from layerskip_kernels.integrations.vllm_linear import LOAD_FORMAT, kernel_linear

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=6e-2, rtol=2e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("compiled", [False, True])
def test_kernel_linear_equals_f_linear(dtype, compiled):
    torch.manual_seed(0)
    w = torch.randn(96, 64).to(dtype)
    b = torch.randn(96).to(dtype)
    fn = kernel_linear
    if compiled:
        torch._dynamo.reset()
        fn = torch.compile(kernel_linear, dynamic=True, fullgraph=True, backend="eager")
    for rows in (1, 3, 40):  # 1 and 3 rows: our kernel; 40 (a prompt): ATen's GEMM
        x = torch.randn(rows, 64).to(dtype)
        want = F.linear(x.float(), w.float())
        torch.testing.assert_close(fn(x, w, None).float(), want, **TOL[dtype])
        torch.testing.assert_close(fn(x, w, b).float(), want + b.float(), **TOL[dtype])
    assert fn(torch.randn(2, 5, 64).to(dtype), w, None).shape == (2, 5, 96)


def test_load_format_name():
    assert LOAD_FORMAT == "layerskip"
