"""Our rejection sampler in vLLM (integrations/vllm_rejection.py) against vLLM's
own RejectionSampler, on the same inputs: `forward(metadata, draft_probs,
logits, sampling_metadata)` as vLLM's model runner calls it after a
verification forward (ragged rows of k drafts, bonus tokens sampled by vLLM's
sampler in both).

Cases: all rows greedy; all random (temperature 0.8) without draft
probabilities (n-gram, custom_class, greedy drafts) and with them; mixed (every
other row greedy). B in {1, 8}, k in {3, 5}, V in {32000, 128256}. Ours hands
all-greedy batches to vLLM's own forward (the `path` column says which path
ran), so there its ratio is the cost of that dispatch only. Each row records
whether the greedy rows' tokens equal vLLM's and each sampler's
accepted-token rate (random rows differ draw by draw: same distributions,
other random numbers). On vLLM's CPU backend its random path computes on
uninitialised temperatures (docs/engines.md, "Sampling in vLLM 0.32.0's CPU
backend"): its time is still the cost of its path, its acceptance is not
meaningful.

Runs in the vLLM venv (README, "Serving with vLLM"):

    python bench/bench_vllm_rejection.py [--quick] [--tiny] [--out PREFIX]
Writes bench/results/<cpu kind>/vllm_rejection.csv and .png.
"""

from __future__ import annotations

import itertools

import torch

import common  # noqa: E402  (puts the checkout on sys.path)


def sampling_metadata(B, case):
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    if case == "greedy":
        temperature = None
    else:
        temperature = torch.full((B,), 0.8)
        if case == "mixed":
            temperature[::2] = 0.0
    return SamplingMetadata(
        temperature=temperature, all_greedy=temperature is None,
        all_random=temperature is not None and bool((temperature > 0).all()), top_p=None, top_k=None,
        generators={}, max_num_logprobs=None, no_penalties=True, prompt_token_ids=None,
        frequency_penalties=torch.zeros(B), presence_penalties=torch.zeros(B), repetition_penalties=torch.ones(B),
        output_token_ids=[[] for _ in range(B)], allowed_token_ids_mask=None, bad_words_token_ids={},
        logitsprocs=LogitsProcessors(), spec_token_ids=None)


def inputs(B, k, V, case):
    """SpecDecodeMetadata in the runner's layout (each row's k drafted positions,
    then its bonus position), logits [B (k + 1), V] and draft probabilities."""
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

    g = torch.Generator().manual_seed(B * k + V)
    logits = torch.randn(B * (k + 1), V, generator=g) * 3  # [B (k + 1), V]
    rows = torch.arange(B * (k + 1)).reshape(B, k + 1)
    target_idx = rows[:, :k].reshape(-1)
    q = torch.softmax(0.7 * logits[target_idx] + torch.randn(B * k, V, generator=g), -1)  # a related draft
    draft = torch.multinomial(q, 1, generator=g).flatten()
    draft[::3] = logits[target_idx[::3]].argmax(-1)  # some drafts are the target's argmax: greedy accepts them
    md = SpecDecodeMetadata.make_dummy(draft.reshape(B, k).tolist(), torch.device("cpu"))
    md.target_logits_indices = target_idx.to(torch.int32)
    md.bonus_logits_indices = rows[:, k].to(torch.int32)
    return md, (q if case == "random+draft_probs" else None), logits, sampling_metadata(B, case)


def greedy_reference(md, logits, sm):
    """What the greedy rows must emit: vLLM's rejection_sample (its CPU kernels
    are right) on the unscaled logits (a greedy row's temperature is 1), bonus
    tokens the argmax. Rows that are not greedy are not compared."""
    from vllm.v1.sample.rejection_sampler import rejection_sample

    bonus = logits[md.bonus_logits_indices.long()].argmax(-1, keepdim=True)
    return rejection_sample(md.draft_token_ids, md.num_draft_tokens, md.max_spec_len, md.cu_num_draft_tokens, None,
                            logits[md.target_logits_indices.long()], bonus, sm)


def grid(quick, tiny):
    cases = ("greedy", "random", "random+draft_probs", "mixed")
    if tiny:
        return itertools.product(cases, (2,), (3,), (1000,))
    if quick:
        return itertools.product(cases, (1, 8), (3,), (32000,))
    return itertools.product(cases, (1, 8), (3, 5), (32000, 128256))


def main(argv=None):
    from vllm.platforms import current_platform
    from vllm.v1.sample.rejection_sampler import RejectionSampler
    from vllm.v1.sample.sampler import Sampler

    from layerskip_kernels.integrations.vllm_rejection import LayerSkipRejectionSampler

    args = common.kernel_bench_args(__doc__, "vllm_rejection", 20, argv)
    current_platform.register_triton_kernel_overrides()  # vLLM's CPU fallbacks, as its engine registers them
    meta = common.metadata()
    import vllm

    meta["vllm"] = vllm.__version__
    samplers = {"vllm": RejectionSampler(Sampler()), "layerskip": LayerSkipRejectionSampler(Sampler())}
    rows = []
    for case, B, k, V in grid(args.quick, args.tiny):
        md, draft_probs, logits, sm = inputs(B, k, V, case)
        outs, times = {}, {}
        for name, sampler in samplers.items():
            call = lambda: sampler(md, draft_probs, logits, sm)  # noqa: E731 -- logits are only read (indexed copies)
            torch.manual_seed(0)
            outs[name] = call().sampled_token_ids
            probe = common.time_fn(call, warmup=1, reps=1)["median_s"]
            times[name] = common.time_fn(call, warmup=1, reps=max(3, min(args.reps, int(2.0 / max(probe, 1e-9)))),
                                         min_time_s=0.2)
        greedy = torch.ones(B, dtype=torch.bool) if sm.temperature is None else sm.temperature == 0
        want = greedy_reference(md, logits, sm)
        for name, t in times.items():
            out, sampler = outs[name], samplers[name]
            rows.append({
                **meta, "impl": name, "case": case, "B": B, "k": k, "V": V,
                "median_ms": t["median_s"] * 1e3, "p20_ms": t["p20_s"] * 1e3, "p80_ms": t["p80_s"] * 1e3,
                "reps": t["reps"], "timing": t["timing"],
                "path": "vllm" if name == "vllm" or sampler.uses_vllms_path(sm) else "layerskip",
                "speedup_vs_vllm": times["vllm"]["median_s"] / t["median_s"],
                "greedy_rows_exact": bool(torch.equal(out[greedy], want[greedy])),
                "accepted_per_draft": ((out >= 0).sum(1) - 1).sum().item() / (B * k),
            })
            r = rows[-1]
            print(f"{case:18s} B={B} k={k} V={V:6d} {name:9s} ({r['path']:9s} path): {r['median_ms']:8.3f} ms  "
                  f"x{r['speedup_vs_vllm']:.2f} vs vLLM  accepted/draft {r['accepted_per_draft']:.2f}"
                  + ("" if r["greedy_rows_exact"] else "  greedy rows are not the target's argmax"), flush=True)
        common.write_csv(args.out + ".csv", rows)  # after every configuration: a killed run keeps what it measured
    if args.no_plot:
        print(f"wrote {args.out}.csv")
        return rows
    print()
    common.print_table(rows, ["case", "B", "k", "V", "impl", "path", "median_ms", "p20_ms", "p80_ms",
                              "speedup_vs_vllm", "greedy_rows_exact", "accepted_per_draft"])
    common.plot_bars(args.out + ".png", rows, label=lambda r: f"{r['case']} B{r['B']} k{r['k']} V{r['V']}",
                     series="impl", value="median_ms", ylabel="ms per forward (lower is better)",
                     title=f"vLLM rejection sampler vs ours on {meta['cpu']}")
    print(f"wrote {args.out}.csv and {args.out}.png")
    return rows


if __name__ == "__main__":
    main()
