"""A realistic shape: a Llama-3.2-1B-shaped model with random bf16 weights,
autoregressive against self-speculative decoding on this machine.

The embedded model (20 MB) lives in the last-level cache; a 1B model's 2.5 GB
of bf16 weights stream from DRAM every step, which is where most users' decode
time goes. Random weights have no acceptance of their own, so the layers from
the exit layer on are damped (their o_proj and down_proj write `--damp` times
less into the residual stream, as the test suite's high-acceptance fixture
does): the early exit then agrees with the last layer most of the time. The
damping is calibrated (`--calibrate`) so that drafts are accepted about 80% of
the time; the acceptance of every run is measured and written on its row.

Rows: autoregressive and self-speculative tokens/s (bf16 and int8 draft head)
interleaved `--reps` times in one process (medians), as generate counts them
(the prompt's prefill included) and of the decoding alone (`decode_*`: new
tokens / (time - prefill_s)), the step costs c and v
relative to an autoregressive step, the analytic limit, the weight-streaming
time of an autoregressive step (weight bytes / copy bandwidth measured in the
same run), the CPU model and the CPU level that ran.

    python bench/bench_llama1b.py                 # E=4 k=4, batch 1, 64 new tokens
    python bench/bench_llama1b.py --cpu-level avx2
    python bench/bench_llama1b.py --calibrate     # search the damping for ~80% acceptance first
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_e2e import acceptance_from_tokens_per_step, analytic_limit, step_costs  # noqa: E402
from common import copy_bandwidth_gbs, metadata, print_table, results_path, write_csv  # noqa: E402

import layerskip_kernels as lk  # noqa: E402
from layerskip_kernels.model import LlamaConfig, LlamaForCausalLM  # noqa: E402

# Llama-3.2-1B's shape (its config.json): 16 layers, hidden 2048, 32 query and
# 8 kv heads of 64, MLP 8192, vocabulary 128256, tied embeddings, llama3 RoPE.
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
                rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=8192))
# Found by --calibrate on this shape and seeds (acceptance 0.72-0.93 at 0.019-0.037
# over 32 tokens; 0.81 at 0.022, E=4 k=4).
DEFAULT_DAMP = 0.022
DEFAULT_EXIT_LAYER, DEFAULT_K = 4, 4  # the exit layer the damping is calibrated for, and k


def random_model(exit_layer: int, damp: float, seed: int = 0, device="cpu", **shape) -> LlamaForCausalLM:
    """The 1B shape (with `shape` overriding config fields: a smaller model for
    dry runs) with N(0, std) bf16 weights, built on `device`; layers >=
    exit_layer damped.

    The scale (std 0.05 for projections, embeddings N(0, 1)) makes every layer
    move the residual stream visibly, so the argmax is not just the input token
    (with GPT-2's std 0.02 the tied head would echo the input forever)."""
    cfg = LlamaConfig(**dict(LLAMA_1B, **shape))
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device=device).to(torch.bfloat16)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
                continue
            std = 1.0 if "embed_tokens" in name else 0.05
            # Fill in fp32 blocks of rows: one fp32 copy of a 128256 x 2048 matrix would be 1 GB.
            for r0 in range(0, p.shape[0], 4096):
                block = p[r0:r0 + 4096]
                block.copy_(torch.randn(block.shape, generator=g, device=device) * std)
    damp_late_layers(model, exit_layer, damp)
    model.eval()
    return model


def run(model, prompts, n_new, exit_layer, k, compile=False, draft_quantization=None) -> dict:
    out = lk.generate(model, prompts, max_new_tokens=n_new, exit_layer=exit_layer, num_speculations=k,
                      eos_token_id=[], compile=compile, draft_quantization=draft_quantization)
    s = out.stats
    return dict(sequences=out.sequences, tokens_per_s=s["tokens_per_s"], acceptance=s["acceptance_rate"],
                tokens_per_step=s["tokens_per_step"], prefill_s=s["prefill_s"],
                decode_tokens_per_s=s["new_tokens"] / (s["time_s"] - s["prefill_s"]))


def damp_late_layers(model: LlamaForCausalLM, exit_layer: int, factor: float) -> None:
    """Multiply o_proj and down_proj of layers >= exit_layer by factor, in place."""
    with torch.no_grad():
        for layer in model.model.layers[exit_layer:]:
            layer.self_attn.o_proj.weight.mul_(factor)
            layer.mlp.down_proj.weight.mul_(factor)


def calibrate(model, exit_layer: int, k: int, prompts, damp: float, target: float = 0.8) -> float:
    """Bisect the damping (log scale) for acceptance ~target, rescaling the
    model's late layers in place (it ends damped by the returned factor)."""
    lo, hi, current = 0.005, 1.0, damp
    for _ in range(7):
        mid = math.sqrt(lo * hi)
        damp_late_layers(model, exit_layer, mid / current)
        current = mid
        acc = run(model, prompts, 32, exit_layer, k)["acceptance"]
        print(f"damp {mid:.4f}: acceptance {acc:.3f}")
        lo, hi = (mid, hi) if acc > target else (lo, mid)
    damp_late_layers(model, exit_layer, math.sqrt(lo * hi) / current)
    return math.sqrt(lo * hi)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exit-layer", type=int, default=DEFAULT_EXIT_LAYER)
    ap.add_argument("--num-speculations", type=int, default=DEFAULT_K)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions of every engine")
    ap.add_argument("--damp", type=float, default=DEFAULT_DAMP)
    ap.add_argument("--calibrate", action="store_true", help="search --damp for ~80%% acceptance first")
    ap.add_argument("--compile", action="store_true", help="compiled steps (compilation in warm-up, untimed)")
    ap.add_argument("--cpu-level", default=None, help="force this CPU level of the cpu backend")
    ap.add_argument("--out", default=None, help="CSV/PNG path without extension (default: per CPU kind)")
    ap.add_argument("--note", default="", help="conditions of the run, written on every row")
    args = ap.parse_args(argv)
    if args.cpu_level:
        from layerskip_kernels import _C

        _C.set_cpu_level(args.cpu_level)
    E, k, B = args.exit_layer, args.num_speculations, args.batch_size
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, LLAMA_1B["vocab_size"], (B, args.prompt_tokens), generator=g).tolist()
    model = random_model(E, args.damp)
    damp = calibrate(model, E, k, prompts, args.damp) if args.calibrate else args.damp
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    meta = dict(metadata(), model="llama-3.2-1b-shaped random bf16", dtype="bfloat16", note=args.note, damp=damp,
                batch=B, exit_layer=E, k=k, max_new_tokens=args.max_new_tokens, compiled=args.compile)

    engines = {"autoregressive": dict(exit_layer=None), "self-speculative": dict(exit_layer=E),
               "self-speculative int8 head": dict(exit_layer=E, draft_quantization="int8")}
    for kw in engines.values():  # warm-up (with --compile: the graphs)
        run(model, prompts, 8, k=k, compile=args.compile, **kw)
    results = {name: [] for name in engines}
    with torch.inference_mode():
        for _ in range(args.reps):
            for name, kw in engines.items():
                results[name].append(run(model, prompts, args.max_new_tokens, k=k, compile=args.compile, **kw))
    copy_gbs = copy_bandwidth_gbs()
    costs = step_costs(model, B, args.prompt_tokens + args.max_new_tokens // 2, E, k, reps=10,
                       compile=args.compile)
    stream_s = weight_bytes / (copy_gbs / 2 * 1e9)  # a copy moves each byte twice (read + write)
    ar_tps = statistics.median(r["tokens_per_s"] for r in results["autoregressive"])
    ar_decode = statistics.median(r["decode_tokens_per_s"] for r in results["autoregressive"])
    rows = []
    for name, runs in results.items():
        tps = statistics.median(r["tokens_per_s"] for r in runs)
        decode = statistics.median(r["decode_tokens_per_s"] for r in runs)
        row = dict(meta, engine=name, tokens_per_s=tps, speedup_vs_ar=tps / ar_tps,
                   prefill_s=statistics.median(r["prefill_s"] for r in runs), decode_tokens_per_s=decode,
                   decode_speedup_vs_ar=decode / ar_decode,
                   same_tokens=runs[0]["sequences"] == results["autoregressive"][0]["sequences"])
        if name == "autoregressive":
            row.update(ar_step_s=costs["ar"], weight_stream_s=stream_s, ar_step_over_stream=costs["ar"] / stream_s,
                       copy_gbs=copy_gbs, weight_gb=weight_bytes / 1e9)
        else:
            tau = statistics.median(r["tokens_per_step"] for r in runs)
            a = acceptance_from_tokens_per_step(tau, k)
            it = costs["iteration_int8" if "int8" in name else "iteration"] / costs["ar"]
            draft = costs["draft_int8" if "int8" in name else "draft"]
            row.update(acceptance=statistics.median(r["acceptance"] for r in runs), tokens_per_step=tau, a=a,
                       c=draft / costs["ar"], v=costs["verify"] / costs["ar"], iteration_over_ar=it,
                       analytic_limit=analytic_limit(a, k, 0.0, it))
        rows.append(row)
    print(f"{meta['model']}  E={E} k={k} batch {B}  {meta['cpu']}  cpu level {meta.get('cpu_level', '?')}")
    print_table(rows, ["engine", "tokens_per_s", "speedup_vs_ar", "decode_speedup_vs_ar", "prefill_s", "acceptance",
                       "tokens_per_step", "c", "v", "iteration_over_ar", "analytic_limit", "ar_step_over_stream", "same_tokens"])
    out = args.out or results_path("llama1b" + ("_compiled" if args.compile else ""))
    write_csv(out + ".csv", rows)
    _plot(rows, out + ".png")
    return 0


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    names = [r["engine"] for r in rows]
    ax.barh(names, [r["tokens_per_s"] for r in rows], color=["gray", "tab:blue", "tab:green"][: len(rows)])
    for i, r in enumerate(rows):
        ax.text(r["tokens_per_s"], i, f" {r['speedup_vs_ar']:.2f}x", va="center")
    r0 = rows[0]
    ax.set_xlabel("tokens/s")
    ax.set_title(f"Llama-3.2-1B shape, bf16, batch {r0['batch']}, E={r0['exit_layer']} k={r0['k']}\n"
                 f"{r0['cpu']}, cpu level {r0.get('cpu_level', '?')}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
