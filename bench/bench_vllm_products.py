"""Few-row matrix products inside vLLM on the CPU: ours (load_format
"layerskip", integrations.vllm_linear.kernel_linear on the plain weights)
against vLLM's own (oneDNN on a packed copy, made from the same weights as
vLLM's CPU dispatch makes it), in one vLLM process.

The Llama-3.2-1B-shaped checkpoint of bench_vllm.py (bf16) is loaded with
load_format="layerskip"; then, for each row count, passes over all 64 layer
matrices and the LM head in layer order (weights streamed from DRAM, as in a
decode step), ours and oneDNN's alternated pass by pass (their order swapped
every repetition), one warm-up pass each and --reps timed ones. Rows: mean
time of a pass per matrix kind and in all, and the GB/s it streams; the CPU
model and our CPU level on every row.

    python bench/bench_vllm_products.py              # from the vLLM venv (README, "Serving with vLLM")
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import metadata, print_table, results_path, write_csv  # noqa: E402

KINDS = ("qkv", "o", "gate_up", "down", "head")


def probe(model, rows_list, reps: int) -> list[dict]:
    """The timed passes in the engine's process (LLM.apply_model)."""
    import time

    import torch
    from vllm import _custom_ops as ops

    from layerskip_kernels.integrations.vllm_linear import kernel_linear

    mods = [(kind, m) for layer in model.model.layers
            for kind, m in zip(KINDS, (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj,
                                        layer.mlp.down_proj))] + [("head", model.lm_head)]
    packed = [ops.create_onednn_mm(m.weight.t(), 32) for _, m in mods]
    nbytes = {kind: sum(m.weight.numel() * m.weight.element_size() for k, m in mods if k == kind) for kind in KINDS}
    impls = {"ours": lambda i, m, x: kernel_linear(x, m.weight, None),
             "onednn": lambda i, m, x: ops.onednn_mm(packed[i], x, None)}
    out = []
    for rows in rows_list:
        xs = [torch.randn(rows, m.weight.shape[1], dtype=m.weight.dtype) for _, m in mods]
        spent = {impl: dict.fromkeys(KINDS, 0.0) for impl in impls}
        for rep in range(reps + 1):  # rep 0 warms up
            order = list(impls) if rep % 2 == 0 else list(reversed(impls))
            for impl in order:
                for i, (kind, m) in enumerate(mods):
                    t = time.perf_counter()
                    impls[impl](i, m, xs[i])
                    if rep:
                        spent[impl][kind] += (time.perf_counter() - t) / reps
        for impl in impls:
            for kind in KINDS + ("all",):
                t = sum(spent[impl].values()) if kind == "all" else spent[impl][kind]
                b = sum(nbytes.values()) if kind == "all" else nbytes[kind]
                out.append(dict(product=impl, rows=rows, matrices=kind, ms=t * 1e3, GBps=b / t / 1e9))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 5, 8, 16, 64])
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--out", default=None, help="CSV path without extension (default: results_path('vllm_products'))")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # apply_model runs in this process
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from vllm import LLM, __version__ as vllm_version

    from bench_vllm import default_cache_dir, llama1b_dir
    from layerskip_kernels.integrations.vllm_linear import LOAD_FORMAT

    llm = LLM(model=llama1b_dir(default_cache_dir()), dtype="bfloat16", enforce_eager=True, max_model_len=512,
              max_num_seqs=4, skip_tokenizer_init=True, load_format=LOAD_FORMAT)
    reps, rows_list = args.reps, args.rows
    rows = llm.apply_model(lambda model: json.dumps(probe(model, rows_list, reps)))[0]
    meta = dict(metadata(), vllm=vllm_version, model="llama1b-shaped", dtype="bfloat16", reps=args.reps,
                note=args.note)
    rows = [dict(meta, **r) for r in json.loads(rows)]
    ours = {(r["rows"], r["matrices"]): r["ms"] for r in rows if r["product"] == "ours"}
    for r in rows:
        r["ours_speedup"] = r["ms"] / ours[r["rows"], r["matrices"]] if r["product"] == "onednn" else 1.0
    print_table(rows, ["product", "rows", "matrices", "ms", "GBps", "ours_speedup"])
    out = args.out or results_path("vllm_products")
    write_csv(out + ".csv", rows)
    print(f"wrote {out}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
