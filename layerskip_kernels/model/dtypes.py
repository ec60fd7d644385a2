"""The weight dtype decoding defaults to on each device and CPU level.

bf16 weights halve the bytes a decode step streams; fp32 weights need no
widening before an FMA, which matters where no instruction multiplies bf16
(everything below avx512_bf16). Which one decodes faster end to end is
measured, not assumed: `bench/bench_dtype.py` runs the embedded model in
both dtypes side by side, autoregressive and self-speculative, and
DECODE_DTYPE_BY_CPU_LEVEL records the winner per level (the CSVs are in
bench/results/<cpu>/dtype*.csv; README, "Which dtype"). `--dtype auto`, the
default of the CLI, bench_defaults.py and bench_serving.py, resolves through
`decode_dtype`.
"""

from __future__ import annotations

import torch

from .. import backends

__all__ = ["DECODE_DTYPE_BY_CPU_LEVEL", "decode_dtype"]

# level -> (dtype, where the choice comes from). Measured on a Zen 4 EPYC with
# the level forced (ATen and oneDNN limited to the same ISA), session 12:
# self-speculative tokens/s of fp32 weights over bf16 ones at batch 1 / 8.
DECODE_DTYPE_BY_CPU_LEVEL: dict[str, tuple[str, str]] = {
    "avx512_bf16": ("bfloat16", "dtype.csv: fp32 0.74x / 0.51x"),
    "avx512": ("bfloat16", "dtype_avx512.csv: fp32 0.75x / 0.69x"),
    "avx2": ("bfloat16", "dtype_avx2.csv: fp32 0.79x / 0.85x"),
    "baseline": ("float32", "dtype_baseline.csv: fp32 1.60x at batch 1 (no vector kernel widens bf16)"),
}


def decode_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """The dtype to load weights in for decoding on `device`: bf16 on GPUs
    (tensor cores, half the bytes), the measured choice of the running CPU
    level on CPUs (float32 when the extension is not built: ATen's fp32
    GEMM is vectorized on every CPU, its bf16 one not always)."""
    device = torch.device(device)
    if device.type != "cpu":
        return torch.bfloat16
    native = backends.native()
    level = native.cpu_level() if native is not None and hasattr(native, "cpu_level") else "baseline"
    return getattr(torch, DECODE_DTYPE_BY_CPU_LEVEL.get(level, DECODE_DTYPE_BY_CPU_LEVEL["baseline"])[0])
