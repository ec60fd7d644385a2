"""The compile-evidence gate of bench/gpu_compile.py (CI runs it on fresh
objects; this checks the gate itself and the committed CSV, without a GPU)."""

import csv
from pathlib import Path

from bench import gpu_compile

CSV = Path(__file__).resolve().parent.parent / "bench" / "results" / "gpu_compile.csv"
NUMERIC = ("registers", "spill_store_bytes", "spill_load_bytes", "stack_bytes", "shared_bytes")


def _rows():
    rows = list(csv.DictReader(CSV.open()))
    for r in rows:
        for k in NUMERIC:
            r[k] = int(r[k] or 0)
    return rows


def test_committed_evidence_passes_the_gate():
    rows = _rows()
    gated = [r for r in rows if gpu_compile.is_gated(r)]
    cuda = [r for r in gated if r["source"].startswith("cuda:")]
    triton = [r for r in gated if r["source"] == "triton"]
    # Both backends, both 16-bit dtypes, both archs, every CUDA head dim.
    assert {(r["dtype"], r["arch"]) for r in cuda} == {(d, a) for d in ("float16", "bfloat16") for a in ("80", "90")}
    assert {r["D"] for r in cuda} == {"16", "32", "64", "96", "128"}
    assert {(r["dtype"], r["arch"]) for r in triton} == {(d, a) for d in ("float16", "bfloat16") for a in ("80", "90")}
    assert gpu_compile.failures(rows) == []
    assert all(r["tensor_cores"] != "none" for r in gated)


def test_gate_rejects_fma_and_spills():
    row = dict(kernel="attention_mma_kernel", arch=90, dtype="bfloat16", D="128", S="",
               variant="c10::BFloat16, 128, 16", spill_store_bytes=0, spill_load_bytes=0,
               stack_bytes=0, tensor_cores="HMMA", source="cuda:attention.cu")
    assert gpu_compile.failures([row]) == []
    assert "no tensor-core" in gpu_compile.failures([dict(row, tensor_cores="none")])[0]
    assert "spills" in gpu_compile.failures([dict(row, stack_bytes=8)])[0]
    assert "spills" in gpu_compile.failures([dict(row, kernel="attention_split_kernel", spill_store_bytes=4)])[0]
    triton = dict(row, kernel="_draft_verify_attention_kernel", source="triton", tensor_cores="none")
    assert "no tensor-core" in gpu_compile.failures([triton])[0]
    # fp32 rows are reported, not gated.
    assert gpu_compile.failures([dict(row, dtype="float32", tensor_cores="none", stack_bytes=8)]) == []
