"""The matrix products of a decode step: few rows, many calls.

A decode step multiplies 1 (autoregressive, draft) to k+1 (verify) rows per
sequence by every weight matrix of the layers it runs. On a CPU, ATen's bf16
GEMM (oneDNN) costs ~14 us per call at any such size, several times the time
to stream a 256 x 256 weight, so the step was mostly per-call cost. Two
changes, both for the decode path only (training keeps the checkpoint's
modules):

- `ConcatWeight`: q/k/v, and gate/up, run as one product each (4 products per
  layer instead of 7). The concatenated matrix is derived from the modules'
  weights and rebuilt whenever one of them changes (another storage, an
  in-place update), so loading, `.to()` and training steps are seen. A
  compiled step cannot read version counters: it uses the weights of the last
  `LlamaForCausalLM.refresh_decode_weights()`, which generate runs at the start
  of every call (as a captured CUDA graph reads the buffers it captured).
- `decode_linear`: bf16 products of few rows on a CPU (ROWS_ALWAYS, or up to
  ROWS_MAX within ROWS_X_BYTES of rows x weight bytes; ROWS_ALWAYS per CPU
  level where measured otherwise: at the avx2 and avx512 levels every bf16
  product, prompts included), and fp32 ones of at
  most ROWS_ALWAYS_FP32 rows, go to `ops.linear_rows` (our kernel, for the
  running CPU level), eager or compiled: inside a compiled step the op stays
  opaque. (Writing a single-row product as multiply + fp32 sum for inductor to
  vectorize was measured too: the kernel made compiled steps 18%
  (autoregressive) and 27% (self-speculative) faster, side by side on the
  default model.) Everything else (GPUs, prompts and more rows at
  avx512_bf16 or off x86, fp32 past ROWS_ALWAYS_FP32) is `F.linear`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import backends, ops

__all__ = ["ROWS_ALWAYS", "ROWS_ALWAYS_BY_LEVEL", "ROWS_ALWAYS_FP32", "ROWS_MAX", "ROWS_X_BYTES",
           "cpu_kernel_runs", "decode_linear", "decode_linear_int8", "int8_route", "linear_int8_aten", "ConcatWeight"]

# Which products go to ops.linear_rows (bench/bench_linear.py,
# bench/results/linear_rows.csv): any of at most ROWS_ALWAYS rows (1.5-3.8x
# ATen at 1-4 rows on every weight measured, up to Llama-3.2-1B's), and up to
# ROWS_MAX rows while rows x weight bytes stays within ROWS_X_BYTES. Past
# that the kernel is compute-bound and ATen's GEMM is as fast: e.g. the
# default model's 2 MB LM head at 16 rows, its 0.8 MB gate/up at 32 rows,
# Llama-3.2-1B's 12 MB q/k/v at 8 rows.
ROWS_ALWAYS = 4
ROWS_MAX = 32
ROWS_X_BYTES = 24 << 20
# ROWS_ALWAYS per CPU level, where it differs.
# - avx2 and avx512 (no bf16 dot product; ATen, oneDNN and our kernels all
#   limited to the level: the machine emulated on a Zen 4 with
#   ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA): ATen's bf16 GEMM runs at
#   15-38 GFLOPS on two cores at any row count, our kernel at 60-130, so
#   every bf16 product runs the kernel, prompts included: at 5-256 rows, on
#   every matrix of the default model and of Llama-3.2-1B, 1.75-6.7x ATen at
#   avx2 and 1.06-6x at avx512
#   (bench/results/amd-epyc-avx512_bf16/linear_rows_s17_prompt_rows_{avx2,avx512}.csv).
#   A Llama-3.2-1B prompt of 64 tokens took 3.7-3.8 s at avx2 through ATen,
#   1.27-1.33 s through the kernel (the two rules alternated in one process).
# - avx512_bf16: the rows x bytes rule sent the verify passes of Llama-3.2-1B
#   (k = 4: 5 rows) to ATen for every matrix (5 x 12-525 MB > ROWS_X_BYTES),
#   where the kernel, since it splits streamed weights over all threads and
#   prefetches them (csrc/cpu/linear.cpp), streams 4-6 rows from DRAM at
#   25-58 GB/s, 1.2-2.8x ATen's GEMM, and 7-8 rows at 22-36 GB/s, still
#   1.2-1.8x: linear_rows_probe_rows4-8.csv and linear_rows_probe_rows7-8.csv
#   there. End to end the 1B shape's verify pass fell from 2.2 to 1.25
#   autoregressive steps (llama1b_routing_{before,after}.csv). From 16 rows
#   ATen's GEMM (VDPBF16PS, oneDNN) is level with the kernel, and from 64
#   rows faster (0.56-0.8x), so prompts stay with ATen there.
ROWS_ALWAYS_BY_LEVEL = {"avx512_bf16": 8, "avx512": math.inf, "avx2": math.inf}
# fp32 x and weights (bench/bench_linear.py's fp32 rows): the kernel's FMAs on
# fp32 weights beat ATen's fp32 GEMM at 1-4 rows on the default model's
# matrices (1.2-2.6x at the avx2 level, side by side on a Zen 4 CPU, one
# thread); from 8 rows on they are level.
ROWS_ALWAYS_FP32 = 4


def decode_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ weight[N, K]^T -> [..., N], by the fastest path for its size (module docstring)."""
    if x.device.type != "cpu" or x.dtype not in (torch.bfloat16, torch.float32) or weight.dtype != x.dtype:
        return F.linear(x, weight)
    rows = x.numel() // x.shape[-1]  # a Python int under torch.compile(dynamic=False)
    if x.dtype == torch.float32:
        few = rows <= ROWS_ALWAYS_FP32
    else:
        few = rows <= ROWS_ALWAYS or _few_at_level(rows, weight.numel() * weight.element_size())
    if few and cpu_kernel_runs(x, weight):
        return torch.ops.layerskip.linear_rows(x, weight)
    return F.linear(x, weight)


def _few_at_level(rows: int, weight_bytes: int) -> bool:
    """The rule past ROWS_ALWAYS rows (every level's ROWS_ALWAYS is at least that)."""
    return rows <= _level_rows_always() or (rows <= ROWS_MAX and rows * weight_bytes <= ROWS_X_BYTES)


def _level_rows_always() -> float:
    """ROWS_ALWAYS for the running CPU level. Eager calls ask the extension and
    keep the answer; a traced step reads the kept one as a constant (the
    extension cannot be called inside a graph; the engine's eager prefill runs
    before its compiled steps), and dynamo's guard on it recompiles a step when
    a later eager call finds another level."""
    if not torch.compiler.is_compiling():
        native = backends.native()
        level = native.cpu_level() if native is not None and hasattr(native, "cpu_level") else ""
        _RULE[0] = ROWS_ALWAYS_BY_LEVEL.get(level, ROWS_ALWAYS)
    return _RULE[0]


_RULE: list = [ROWS_ALWAYS]


def decode_linear_int8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(x [..., K] @ weight[N, K]^T) * scale[N] for int8 weights (ops.linear_rows_int8),
    by the path `int8_route` picks."""
    route = int8_route(x.device.type, x.dtype, cpu_kernel_runs(x, weight), backends.get_backend())
    if route == "kernel":
        return torch.ops.layerskip.linear_rows_int8(x, weight, scale)
    if route == "aten":
        return linear_int8_aten(x, weight, scale)
    return ops.linear_rows_int8(x, weight, scale)


def int8_route(device_type: str, dtype: torch.dtype, cpu_kernel: bool, selected: str | None) -> str:
    """How an int8 product of a decode step runs:

    - "kernel": on a CPU, our cpu kernel, where `decode_linear` would call it;
    - "aten": on a GPU (bf16/fp32 activations, no backend forced to `torch`),
      ATen's GEMM on the int8 rows widened to the activations' dtype
      (`linear_int8_aten`). The reference instead widens the whole weight to
      fp32 at every call: for a Llama-3 vocabulary's int8 draft head a 1 GB
      copy per draft step, four times the bytes it saves;
    - "op": `ops.linear_rows_int8`, which picks the backend (the reference
      where it has no kernel).
    """
    if device_type == "cpu":
        return "kernel" if cpu_kernel else "op"
    if dtype in (torch.bfloat16, torch.float32) and selected != "torch":
        return "aten"
    return "op"


def linear_int8_aten(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(x @ weight^T) * scale by ATen's GEMM (cuBLAS on a GPU) in x's dtype, fp32
    accumulation: the int8 rows become x's dtype (exact: |q| <= 127), never
    fp32 for a bf16 x. Compiled, inductor may fuse the widening into the
    product; eager, it is one temporary of the head in x's dtype per call.
    The product is rounded to x's dtype, scaled in fp32 and rounded again:
    one rounding more than the reference, within its bf16 tolerance."""
    return (F.linear(x, weight.to(x.dtype)).float() * scale).to(x.dtype)


def cpu_kernel_runs(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a decode-step op may call our cpu kernel (the raw op) directly: it
    is built, no other backend was asked for, and no gradient is needed (the
    ops have no backward). decode_linear and model/attention.py ask it."""
    differentiable = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    return not differentiable and backends.native() is not None and backends.get_backend() in (None, "cpu")


class ConcatWeight:
    """The weights of several bias-free nn.Linear, concatenated along the output
    dimension, for one product instead of several; split the result with
    `sizes`. Not a parameter: derived, and rebuilt when a source changes."""

    def __init__(self, *linears: nn.Linear):
        self._linears = linears
        self.sizes = [lin.out_features for lin in linears]
        self._key = None
        self._value: torch.Tensor | None = None

    def _state(self):
        return tuple((w.data_ptr(), w._version, w.dtype, w.device, w.shape)
                     for w in (lin.weight for lin in self._linears))

    def refresh(self) -> torch.Tensor:
        key = self._state()
        if key != self._key:
            with torch.no_grad():
                self._value = torch.cat([lin.weight.detach() for lin in self._linears])
            if self._value.device.type == "cuda":
                # An input of captured CUDA graphs: static, not copied at each replay.
                torch._dynamo.mark_static_address(self._value, guard=False)
            self._key = key
        return self._value

    def __call__(self) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # Traced code cannot read version counters: a compiled step reads the
            # weights of the last refresh (generate refreshes at every call), or
            # concatenates inside the graph when there was none.
            if self._value is None:
                return torch.cat([lin.weight for lin in self._linears])
            return self._value
        return self.refresh()
