"""The steps of bench/gpu_suite.py that run Python on the device, one per process:

    python bench/gpu_steps.py smoke     --out DIR [--dry-run]
    python bench/gpu_steps.py e2e       --out DIR [--dry-run]
    python bench/gpu_steps.py attention --out DIR [--dry-run]

Each writes its CSV into DIR row by row as results exist (a step killed at its
timeout keeps what it measured) and never raises on a wrong result: a mismatch
is a row with ok=False (or same_tokens=False) and an error column.

--dry-run runs the same code on the CPU with tiny shapes, where every
GPU-only piece (CUDA-graph capture, compilation, the triton and cuda backends)
is replaced by its CPU counterpart or skipped with a row that says so: CI runs
it (tests/test_gpu_suite.py) so that the suite cannot rot between GPU sessions.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402  (puts the checkout on sys.path)

import layerskip_kernels as lk  # noqa: E402
from layerskip_kernels import ops, reference  # noqa: E402
from layerskip_kernels.model.config import LlamaConfig  # noqa: E402
from layerskip_kernels.model.llama import rope_tables  # noqa: E402


class RowWriter:
    """A CSV that is rewritten after every row (small files: every row is on
    disk as soon as it exists, whatever columns later rows add)."""

    def __init__(self, path: str, meta: dict):
        self.path, self.meta, self.rows = path, meta, []

    def add(self, **row) -> dict:
        row = dict(self.meta, **row)
        self.rows.append(row)
        fields: list[str] = []
        for r in self.rows:
            fields += [k for k in r if k not in fields]
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)
        print(" ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k not in self.meta), flush=True)
        return row


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _meta(device: str) -> dict:
    m = common.metadata()
    keep = ("gpu", "torch", "triton", "layerskip", "build_cuda")
    out = {k: m[k] for k in keep}
    out["device"] = device
    return out


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


# --------------------------------------------------------------------------- smoke


def smoke(out: str, device: str, dry: bool) -> int:
    """Import, build info, and one call of every op on every backend that runs
    on `device`, each compared with the reference."""
    info = lk.backends.native().build_info() if lk.backends.native() is not None else {}
    print("build_info:", info, flush=True)
    print("backends:", lk.available_backends(), flush=True)
    w = RowWriter(os.path.join(out, "smoke.csv"), _meta(device))
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s, dtype=torch.bfloat16: torch.randn(*s, generator=g).to(device=device, dtype=dtype)
    B, S, Hq, Hkv, D, T, k, V = 2, 3, 8, 2, 64, 64, 4, 1000
    cos, sin = (t.to(device) for t in rope_tables(LlamaConfig(hidden_size=D, num_attention_heads=1, head_dim=D), T))
    lens = torch.tensor([5, 40], dtype=torch.int32, device=device)
    attn = (rnd(B, S, Hq, D), rnd(B, Hkv, T, D), rnd(B, Hkv, T, D), rnd(B, S, Hkv, D), rnd(B, S, Hkv, D), lens, cos,
            sin)
    logits = rnd(B, k + 1, V, dtype=torch.float32)
    drafts = logits[:, :k].argmax(-1)
    drafts[1, 2] = (drafts[1, 2] + 1) % V
    q = torch.softmax(rnd(B, k, V, dtype=torch.float32), -1)
    p = torch.softmax(logits, -1)
    x, wq, sc = rnd(3, 64), torch.randint(-127, 128, (96, 64), generator=g, dtype=torch.int8).to(device), \
        torch.rand(96, generator=g).to(device)
    cases = {
        "draft_verify_attention": (lambda: tuple(a.clone() for a in attn), 2e-2),
        "verify_greedy": (lambda: (drafts, logits), 0),
        "verify_sampling": (lambda: (drafts, q, p, 7, 0), 0),
        "linear_rows_int8": (lambda: (x, wq, sc), 2e-2),
    }
    names = [n for n in lk.backends.BACKENDS if lk.backends.why_unavailable(n, device) is None]
    failures = 0
    for op, (make, tol) in cases.items():
        expect = getattr(reference, op)(*make())
        for name in names:
            t0 = time.perf_counter()
            try:
                with lk.use_backend(name):
                    got = getattr(ops, op)(*make())
                common.sync(device)
                got_t = got if isinstance(got, tuple) else (got,)
                exp_t = expect if isinstance(expect, tuple) else (expect,)
                err = max(float((a.float().cpu() - b.float().cpu()).abs().max()) for a, b in zip(got_t, exp_t))
                ok, msg = err <= tol, ""
            except Exception as e:  # noqa: BLE001 -- recorded, the next case runs
                ok, err, msg = False, math.nan, _error(e)
            failures += not ok
            w.add(step="smoke", op=op, backend=name, ok=ok, max_abs_err=err,
                  seconds=time.perf_counter() - t0, error=msg)
    # A short greedy generation through the engine, per backend (a dry run
    # leaves out Triton's interpreter: minutes of CI for no GPU code).
    for name in [n for n in names if not (dry and n == "triton")]:
        t0 = time.perf_counter()
        try:
            model = lk.LlamaForCausalLM.from_pretrained(dtype=torch.bfloat16, device=device)
            with lk.use_backend(name):
                got = lk.generate(model, [[1, 2, 3, 4]], max_new_tokens=8, exit_layer=3, eos_token_id=[]).sequences
            with lk.use_backend("torch"):
                ref = lk.generate(model, [[1, 2, 3, 4]], max_new_tokens=8, eos_token_id=[]).sequences
            ok, msg = got == ref, "" if got == ref else f"{got} != {ref}"
        except Exception as e:  # noqa: BLE001
            ok, msg = False, _error(e)
        failures += not ok
        w.add(step="smoke", op="generate", backend=name, ok=ok, max_abs_err=math.nan,
              seconds=time.perf_counter() - t0, error=msg)
    return 1 if failures else 0


# --------------------------------------------------------------------------- end to end


def _models(device: str, dry: bool):
    """(name, builder, exit layer, k, new tokens) in the order they are measured."""
    import bench_llama1b

    def llama1b():
        shape = dict(num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, vocab_size=512) if dry else {}
        return bench_llama1b.random_model(4 if not dry else 2, bench_llama1b.DEFAULT_DAMP, device=device, **shape)

    def embedded():
        return lk.LlamaForCausalLM.from_pretrained(dtype=torch.bfloat16, device=device)

    from layerskip_kernels.generation.config import SpeculationConfig

    spec = SpeculationConfig.from_model(lk.default_model_path(), drafting=True)
    n1b = 8 if dry else 64
    return [("llama-3.2-1b-shaped", llama1b, 4 if not dry else 2, 4, n1b),
            ("embedded", embedded, spec.exit_layer, 4, 8 if dry else 128)]


def e2e(out: str, device: str, dry: bool) -> int:
    """Tokens/s of greedy decoding, autoregressive and self-speculative (bf16
    head, and int8 head on the 1B shape), eager and compiled (CUDA graphs), at
    batch 1 and 8, with each run's tokens compared with eager autoregressive
    decoding of the same prompts. Compiled runs are warmed up first with
    enough tokens for every graph to be captured (steps._ONE_TIME_CALLS)."""
    w = RowWriter(os.path.join(out, "e2e.csv"), _meta(device))
    copy_gbs = common.copy_bandwidth_gbs(device=device, nbytes=(1 << 30) if not dry else (8 << 20))
    print(f"copy bandwidth {device}: {copy_gbs:.0f} GB/s", flush=True)
    failures = 0
    # Priority order: what a killed step should have measured first.
    plan = [(False, 1), (True, 1), (False, 8), (True, 8)] if not dry else [(False, 1), (True, 8)]
    for name, build, E, k, n_new in _models(device, dry):
        t0 = time.perf_counter()
        model = build()
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        stream_s = weight_bytes / (copy_gbs / 2 * 1e9)
        print(f"{name}: built in {time.perf_counter() - t0:.1f} s, {weight_bytes / 1e9:.2f} GB of weights", flush=True)
        engines = [("autoregressive", dict(exit_layer=None)), ("self-speculative", dict(exit_layer=E))]
        if name.startswith("llama"):
            engines.append(("self-speculative int8 head", dict(exit_layer=E, draft_quantization="int8")))
        refs = {}  # batch -> eager autoregressive tokens of its prompts
        for compiled, B in plan:
            g = torch.Generator().manual_seed(B)
            prompts = torch.randint(3, model.config.vocab_size, (B, 32), generator=g).tolist()
            for engine, kw in engines:
                compile = compiled and not dry  # dry run: the compiled rows run eagerly (no inductor in CI)
                row = dict(step="e2e", model=name, engine=engine, batch=B, compiled=compiled,
                           mode="cuda graphs" if compile and device == "cuda" else ("compiled" if compile else "eager"),
                           exit_layer=kw["exit_layer"], k=k if kw["exit_layer"] is not None else 0, new_tokens=n_new)
                try:
                    if B not in refs:
                        refs[B] = lk.generate(model, prompts, max_new_tokens=n_new, eos_token_id=[]).sequences
                    t0 = time.perf_counter()
                    # Warm-up: every graph compiled and captured (steps._ONE_TIME_CALLS) before the timed run.
                    warm = lk.generate(model, prompts, max_new_tokens=min(n_new, 24), num_speculations=k,
                                       eos_token_id=[], compile=compile, **kw)
                    warm_s = time.perf_counter() - t0
                    res = lk.generate(model, prompts, max_new_tokens=n_new, num_speculations=k, eos_token_id=[],
                                      compile=compile, **kw)
                    s = res.stats
                    same = res.sequences == refs[B]
                    diff = next((i for i, (a, b) in enumerate(zip(res.sequences, refs[B])) if a != b), None)
                    iteration_s = s["time_s"] / (s["steps"] if s.get("steps") else math.nan)
                    # The run's re-capture (a new cache) is compile time, its tokens are not removed:
                    # tokens_per_s_with_capture is the lower bound.
                    row.update(tokens_per_s=s["tokens_per_s"],
                               tokens_per_s_with_capture=s["new_tokens"] / (s["time_s"] + (s["compile_s"] or 0.0)),
                               acceptance=s["acceptance_rate"], tokens_per_step=s["tokens_per_step"],
                               same_tokens=same, first_different_row=diff, warmup_s=warm_s,
                               warmup_compile_s=warm.stats.get("compile_s"), run_compile_s=s.get("compile_s"),
                               time_s=s["time_s"], iteration_s=iteration_s, weight_stream_s=stream_s,
                               iteration_over_stream=iteration_s / stream_s, copy_gbs=copy_gbs,
                               weight_gb=weight_bytes / 1e9, error="")
                except Exception as e:  # noqa: BLE001 -- recorded, the next configuration runs
                    traceback.print_exc()
                    row.update(same_tokens=False, error=_error(e))
                    failures += 1
                w.add(**row)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return 1 if failures else 0


# --------------------------------------------------------------------------- attention vs SDPA and flex_attention

HEADS = {"llama-3.2-1b": (32, 8, 64), "llama-3-8b": (32, 8, 128)}
# (model, B, S, context): the target shape first (B = 16 verify at 8K).
SHAPES = [("llama-3-8b", 16, 5, 8192), ("llama-3.2-1b", 16, 5, 8192), ("llama-3-8b", 16, 1, 8192),
          ("llama-3.2-1b", 1, 1, 2048), ("llama-3.2-1b", 1, 5, 2048), ("llama-3-8b", 1, 5, 2048),
          ("llama-3-8b", 4, 5, 2048), ("llama-3.2-1b", 8, 5, 8192), ("llama-3-8b", 1, 33, 8192)]
FLEX_SHAPES = {("llama-3-8b", 16, 5, 8192), ("llama-3.2-1b", 1, 5, 2048), ("llama-3-8b", 1, 5, 2048)}


def _attention_inputs(model, B, S, context, device, dtype=torch.bfloat16):
    import bench_attention

    Hq, Hkv, D = HEADS[model]
    bench_attention.MODELS.setdefault(model, (Hq, Hkv, D))
    return bench_attention.make_inputs(model, B, S, context, dtype, device)


def _rope_and_write(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos, sin):
    """RoPE on q and the new keys, the cache write by index_copy_ (every row at
    the same length, as in this benchmark); positions are tensors, so the
    whole baseline is graph-capturable. Returns (rotated q, positions [S])."""
    S = q.shape[1]
    pos = cache_seqlens[:1].long() + torch.arange(S, device=q.device)  # [S]
    c, s = cos[pos][None, :, None, :], sin[pos][None, :, None, :]
    q = reference.apply_rope(q.float(), c, s).to(q.dtype)
    k_new = reference.apply_rope(k_new.float(), c, s).to(k_new.dtype)
    k_cache.index_copy_(2, pos, k_new.transpose(1, 2))
    v_cache.index_copy_(2, pos, v_new.transpose(1, 2))
    return q, pos


def sdpa_attention(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos, sin):
    """The peer baseline as a decode engine writes it: _rope_and_write, then SDPA
    over the cache with GQA (enable_gqa) and a bottom-right causal mask."""
    import torch.nn.functional as F

    q, pos = _rope_and_write(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos, sin)
    mask = torch.arange(k_cache.shape[2], device=q.device)[None, :] <= pos[:, None]  # [S, T]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k_cache, v_cache, attn_mask=mask, enable_gqa=True)
    return out.transpose(1, 2)


def _flex_attention(S, context, device, compile: bool):
    """_rope_and_write, then flex_attention with a bottom-right causal block mask
    (compiled on a GPU; the mask is built once per shape, outside the timing)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    offset = context - S

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offset

    block_mask = create_block_mask(causal, None, None, S, context, device=device)
    fn = torch.compile(flex_attention, fullgraph=True) if compile else flex_attention

    def run(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos, sin):
        q, _ = _rope_and_write(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos, sin)
        return fn(q.transpose(1, 2), k_cache, v_cache, block_mask=block_mask, enable_gqa=True).transpose(1, 2)

    return run


def attention(out: str, device: str, dry: bool) -> int:
    """draft_verify_attention of the triton and cuda backends against SDPA and
    flex_attention, each timed inside a CUDA graph (common._time_cuda), GB/s
    against the copy bandwidth measured now, and every output compared with
    the reference."""
    w = RowWriter(os.path.join(out, "attention.csv"), _meta(device))
    copy_gbs = common.copy_bandwidth_gbs(device=device, nbytes=(1 << 30) if not dry else (8 << 20))
    print(f"copy bandwidth {device}: {copy_gbs:.0f} GB/s", flush=True)
    # The GPU backends; a dry run times the cpu kernel in their place (Triton's interpreter is too slow).
    gpu = ("triton", "cuda") if not dry else ("cpu",)
    ours = [n for n in gpu if lk.backends.why_unavailable(n, device) is None] or ["torch"]
    shapes = [(m, 1, S, 64) for m, _, S, _ in SHAPES[:3]] if dry else SHAPES
    failures = 0
    for model, B, S, context in shapes:
        Hq, Hkv, D = HEADS[model]
        nbytes = (2 * B * Hkv * context * D + 2 * B * S * Hq * D) * 2
        inputs = _attention_inputs(model, B, S, context, device)
        ref_inputs = tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in inputs)
        expect = reference.draft_verify_attention(*ref_inputs)
        impls = [(n, ops._impl("draft_verify_attention", n)) for n in ours] + [("sdpa", sdpa_attention)]
        if (model, B, S, context) in FLEX_SHAPES or dry:
            impls.append(("flex_attention", None))
        for name, fn in impls:
            row = dict(step="attention", model=model, impl=name, B=B, S=S, Hq=Hq, Hkv=Hkv, D=D, context=context,
                       dtype="bf16", bytes=nbytes)
            try:
                t0 = time.perf_counter()
                if fn is None:
                    fn = _flex_attention(S, context, device, compile=device == "cuda")
                got = fn(*tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in inputs))
                common.sync(device)
                setup_s = time.perf_counter() - t0
                err = float((got.float() - expect.float()).abs().max())
                ok = err <= 3e-2
                call = common.rotating_calls(fn, lambda: _attention_inputs(model, B, S, context, device), nbytes,
                                             min_total=(256 << 20) if not dry else 0)
                t = common.time_fn(call, warmup=1, reps=3 if dry else 20, min_time_s=0 if dry else 0.2,
                                   device=device)
                del call
                gbs = nbytes / t["median_s"] / 1e9
                row.update(ok=ok, max_abs_err=err, median_us=t["median_s"] * 1e6, p20_us=t["p20_s"] * 1e6,
                           p80_us=t["p80_s"] * 1e6, gbs=gbs, copy_gbs=copy_gbs, frac_of_copy=gbs / copy_gbs,
                           timing=t["timing"], first_call_s=setup_s, error="")
                failures += not ok and name in ours
            except Exception as e:  # noqa: BLE001 -- recorded, the next implementation runs
                traceback.print_exc()
                row.update(ok=False, error=_error(e))
                failures += name in ours
            w.add(**row)
        del inputs, ref_inputs
        if device == "cuda":
            torch.cuda.empty_cache()
    return 1 if failures else 0


STEPS = {"smoke": smoke, "e2e": e2e, "attention": attention}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=sorted(STEPS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes (CI)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_steps: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    return STEPS[args.step](args.out, device, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
