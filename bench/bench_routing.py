"""Routing probe: ATen's bf16 GEMM against our linear_rows kernel at the row
counts of verify passes (5-32 rows), at the running CPU level, for the default
model's matrices (weights from cache) and Llama-3.2-1B's (weights from DRAM:
rotating copies). It decided model/linear.py's ROWS_X_BYTES_BY_LEVEL.

    LAYERSKIP_CPU_CAPABILITY=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/bench_routing.py
    python bench/bench_routing.py

Prints one line per (matrix, rows): both medians and ours / aten.
"""
import sys

import torch
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
import common
import torch.nn.functional as F
from layerskip_kernels import _C
torch.manual_seed(0)
shapes = {"s qkv 256x384": (256, 384), "s gate_up 256x1536": (256, 1536), "s down 768x256": (768, 256),
          "s head 256x4096": (256, 4096), "qkv 2048x3072": (2048, 3072), "o 2048x2048": (2048, 2048), "gate_up 2048x16384": (2048, 16384),
          "down 8192x2048": (8192, 2048), "head 2048x128256": (2048, 128256)}
print("level", _C.cpu_level())
for name, (K, N) in shapes.items():
    for M in ((8, 16, 32) if name.startswith('s ') else (5, 8, 16)):
        res = {}
        for impl in ("aten", "ours"):
            fn = F.linear if impl == "aten" else torch.ops.layerskip.linear_rows
            make = lambda: (torch.randn(M, K).bfloat16(), torch.randn(N, K).bfloat16())
            call = common.rotating_calls(fn, make, N * K * 2, min_total=(0 if name.startswith('s ') else 96 << 20), max_copies=8)
            with torch.inference_mode():
                t = common.time_fn(call, warmup=2, reps=8, min_time_s=0.3)
            res[impl] = t["median_s"]
            del call
        print(f"{name:20s} rows={M:2d} aten {res['aten']*1e3:7.2f} ms ours {res['ours']*1e3:7.2f} ms  ours/aten {res['ours']/res['aten']:.2f}", flush=True)
