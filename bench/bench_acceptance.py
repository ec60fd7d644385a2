"""Microbenchmark of verify_greedy and verify_sampling.

B in {1, 8, 32}, k in {1, 4, 8}, V in {32000, 128256}: greedy on fp32 and bf16
logits, sampling on fp32 probabilities. Backends side by side in one run, plus
`peer`: greedy acceptance as it is usually written in plain torch (argmax,
compare, cumprod), the baseline a user would otherwise have.

GB/s divides the bytes of the op's inputs (logits, or draft + target
probabilities) by the time. Greedy needs every position's argmax and streams
all of it. Sampling only needs the race at the first rejected position of each
row (the accept coins read p and q at the drafted ids alone), so the cpu kernel
streams 1 or 2 of the 2k+1 rows of V per batch row: its GB/s is an effective
figure that can exceed the copy bandwidth; `streamed_bytes` gives what it read.

Times are of the backend implementations themselves: the Python input checks
of layerskip_kernels.ops (identical for every backend; for sampling a NaN scan
of both inputs) are left out.

    python bench/bench_acceptance.py [--quick] [--out PREFIX]
Writes bench/results/acceptance.csv and acceptance.png.
"""

from __future__ import annotations

import itertools

import torch

import common  # noqa: E402  (puts the checkout on sys.path)
from layerskip_kernels import ops, reference


def peer_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor):
    """Greedy acceptance as peers write it: argmax, compare, cumprod, gather."""
    k = draft_tokens.shape[1]
    target = target_logits.argmax(dim=-1)  # [B, k+1]
    n = (draft_tokens == target[:, :k]).int().cumprod(dim=1).sum(dim=1)  # [B]
    idx = torch.arange(k + 1, device=target.device)[None, :]
    out = torch.where(idx <= n[:, None], target, torch.full_like(target, -1))
    return n.int(), out


def greedy_inputs(B, k, V, dtype, device):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, k + 1, V, generator=g)
    target = logits.argmax(-1)
    draft = torch.randint(0, V, (B, k), generator=g)
    for b in range(B):  # row b agrees with the target on its first b % (k+1) drafts
        n = b % (k + 1)
        draft[b, :n] = target[b, :n]
    return draft.to(device), logits.to(device=device, dtype=dtype)


def sampling_inputs(B, k, V, device):
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(B, k + 1, V, generator=g) * 3, -1)
    q = torch.softmax(0.7 * torch.log(p[:, :k]) + torch.randn(B, k, V, generator=g), -1)  # a related draft
    draft = torch.multinomial(q.reshape(B * k, V), 1, generator=g).reshape(B, k)
    return draft.to(device), q.to(device), p.to(device), 1234, 0


def grid(quick: bool, tiny: bool = False):
    cases = [("greedy", "fp32"), ("greedy", "bf16"), ("sampling", "fp32")]
    if tiny:
        return itertools.product(cases, (2,), (4,), (1000,))
    if quick:
        return itertools.product(cases, (1, 8), (4,), (32000, 128256))
    return itertools.product(cases, (1, 8, 32), (1, 4, 8), (32000, 128256))


def main(argv=None):
    args = common.kernel_bench_args(__doc__, "acceptance", 20, argv)
    meta, pairs, bw = common.start_run(args.device)

    rows = []
    for (op, dname), B, k, V in grid(args.quick, args.tiny):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dname]
        runs = list(pairs)
        if op == "greedy":
            runs += [("peer", dev) for dev in sorted({d for _, d in pairs})]
        base = {}
        for backend, device in runs:
            if op == "greedy":
                inputs = greedy_inputs(B, k, V, dtype, device)
                fn = peer_greedy if backend == "peer" else ops._impl("verify_greedy", backend)
                nbytes = inputs[1].numel() * inputs[1].element_size()
            else:
                inputs = sampling_inputs(B, k, V, device)
                fn = ops._impl("verify_sampling", backend)
                nbytes = (inputs[1].numel() + inputs[2].numel()) * 4
            expect = reference.verify_greedy(*inputs) if op == "greedy" else reference.verify_sampling(*inputs)
            try:
                got = fn(*inputs)
                # A mismatch is recorded on the row (matches_reference), never an
                # exception that would lose the rows measured so far.
                matches = all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(got, expect))
            except Exception as e:  # noqa: BLE001 -- recorded, the next configuration runs
                rows.append({**meta, "op": f"verify_{op}", "backend": backend, "device": device,
                             "impl": f"{backend}@{device}", "B": B, "k": k, "V": V, "dtype": dname,
                             "matches_reference": False, "error": f"{type(e).__name__}: {e}"[:300]})
                common.write_csv(args.out + ".csv", rows)
                print(f"{op:8s} {dname} B={B:2d} k={k} V={V:6d} {backend:6s}@{device}: ERROR {rows[-1]['error']}",
                      flush=True)
                continue
            streamed = nbytes
            if op == "sampling" and backend == "cpu":
                n = expect[0].cpu()
                streamed = int(sum((2 if int(a) < k else 1) * V * 4 for a in n))
            make = (lambda: tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in inputs))
            call = common.rotating_calls(fn, make, nbytes, min_total=0 if args.tiny else 256 << 20)
            probe = common.time_fn(call, warmup=1, reps=1, device=device)["median_s"]
            reps = max(3, min(args.reps, int(2.0 / max(probe, 1e-9))))
            t = common.time_fn(call, warmup=1, reps=reps, min_time_s=0.2, device=device)
            del inputs, call
            if backend == "torch":
                base[device] = t["median_s"]
            rows.append({
                **meta,
                "op": f"verify_{op}",
                "backend": backend,
                "device": device,
                "impl": f"{backend}@{device}",
                "B": B, "k": k, "V": V, "dtype": dname,
                "streamed_bytes": streamed,
                "matches_reference": matches,
                **common.timing_columns(t, nbytes, bw[device], base.get(device, t["median_s"])),
            })
            common.write_csv(args.out + ".csv", rows)  # after every row: a killed run keeps what it measured
            r = rows[-1]
            print(f"{op:8s} {dname} B={B:2d} k={k} V={V:6d} {backend:6s}@{device}: {r['median_ms']:9.3f} ms  "
                  f"{r['gbs']:6.1f} GB/s ({100 * r['frac_of_copy']:5.1f}% of copy)  x{r['speedup_vs_torch']:.2f} vs torch"
                  + ("" if matches else "  MISMATCH with the reference"), flush=True)

    common.write_csv(args.out + ".csv", rows)
    if args.no_plot:
        print(f"wrote {args.out}.csv")
        return
    print()
    common.print_table(rows, ["op", "dtype", "B", "k", "V", "backend", "device", "median_ms", "p20_ms",
                              "p80_ms", "gbs", "frac_of_copy", "speedup_vs_torch", "matches_reference"])
    common.plot_bars(
        args.out + ".png", [r for r in rows if "gbs" in r],
        label=lambda r: f"{r['op'][7:]} {r['dtype']} B{r['B']} k{r['k']} V{r['V']}",
        series="impl", value="gbs", ylabel="GB/s (input bytes / time)",
        title=f"verify_greedy / verify_sampling on {meta['gpu'] if args.device == 'cuda' else meta['cpu']}",
        hline=bw.get("cpu", bw.get("cuda")), hline_label=("CPU" if "cpu" in bw else "GPU") + " copy bandwidth",
    )
    print(f"wrote {args.out}.csv and {args.out}.png")


if __name__ == "__main__":
    main()
