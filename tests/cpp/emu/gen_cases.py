"""Writes the cases of the CUDA emulation (tests/cpp/emu/emu_main.cpp) from
layerskip_kernels/reference.py.

The grids are the ones the cpu backend passes in tests/test_attention_ops.py
and tests/test_acceptance_ops.py (imported from there, so the emulation follows
the tests), plus the cases only the emulation can run: values the CUDA op must
survive without a host check (cache_seqlens < 0 or past T_max, draft token ids
outside [0, V), draft_lens outside [0, k]), more than one query tile per kv
head (G*S > 128), and the segfault regression of the first H100 run (D = 16).
Acceptance cases with per-row draft lengths (lengths 0..k, all different where
B allows, garbage past each row's length) carry a "lens" tensor; the others run
the op's default (no draft_lens: a null pointer).

Usage: python gen_cases.py OUT_DIR. One file per case, a flat list of named
tensors: b"LSEMU1\\n", then per tensor: name (NUL-terminated), dtype code (u8),
ndim (u8), shape (int64 each), raw little-endian data.
"""

import os
import struct
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", ".."))  # the repository: layerskip_kernels
sys.path.insert(0, os.path.join(HERE, "..", ".."))  # tests/: the test modules and conftest

from layerskip_kernels import reference  # noqa: E402
import test_acceptance_ops as acc_tests  # noqa: E402
import test_attention_ops as attn_tests  # noqa: E402

CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3, torch.int32: 4, torch.int64: 5}


def write_case(path, tensors):
    with open(path, "wb") as f:
        f.write(b"LSEMU1\n")
        for name, t in tensors.items():
            t = t.contiguous().cpu()
            f.write(name.encode() + b"\0")
            f.write(struct.pack("<BB", CODES[t.dtype], t.dim()))
            f.write(struct.pack(f"<{t.dim()}q", *t.shape))
            raw = t.view(torch.int16) if t.dtype in (torch.float16, torch.bfloat16) else t
            f.write(raw.numpy().tobytes())


def scalar(x, dtype=torch.float64):
    return torch.tensor([x], dtype=dtype)


def attention_case(B, S, Hq, Hkv, D, dtype, rope, T_max=37, lens=None, seed=0, poison=False):
    q, kc, vc, kn, vn, seqlens, cos, sin = attn_tests.make_case(
        B, S, Hq, Hkv, D, dtype, rope, "cpu", T_max=T_max, seed=seed, noncontig_q=False
    )
    if lens is not None:
        seqlens = torch.tensor(lens, dtype=torch.int32)
    if poison:
        # NaN / inf in V of new keys (tests/test_triton_paths.py's case): the
        # queries before such a key must not see it (0 * NaN in P V), the ones
        # after it get NaN / inf as the reference does; stale NaN past the lengths.
        vn[0, 2, 0, 0] = float("nan")
        vn[-1, S - 1, -1, :4] = float("inf")
        vn[-1, 1, 0, 5] = -float("inf")
        vc[:, :, T_max - 4 :] = float("nan")
    # Rows whose length the op cannot honour: the CUDA kernels leave them
    # unread and unwritten with a zero output (attention_kernels.cuh); the
    # reference runs on the valid rows only.
    bad = (seqlens < 0) | (seqlens.long() + S > T_max)
    ref_lens = torch.where(bad, torch.zeros_like(seqlens), seqlens)
    args = [q, kc, vc, kn, vn, ref_lens, cos, sin]
    _, truth, ref_args, ref_out = attn_tests.reference_runs(args)
    truth[bad] = 0
    ref_out[bad] = 0
    k_ref, v_ref = ref_args[1], ref_args[2]
    k_ref[bad], v_ref[bad] = kc[bad], vc[bad]
    # tests/test_attention_ops.check_error's rule for the cuda backend on a GPU:
    # max error within 3x the reference's plus 2 ulp of the output; fp16/bf16
    # (the tensor-core kernel, which rounds P to the input dtype) also RMS
    # within RMS_SLACK_P_ROUNDED of the reference's.
    finite = truth.isfinite()  # the others must match exactly (emu_main.cpp)
    diff_ref = (ref_out.double() - truth)[finite]
    max_limit = 3 * diff_ref.abs().max().item() + 2 * attn_tests.ulp_of_output(truth, dtype)
    rms_ref = diff_ref.pow(2).mean().sqrt().item()
    rms_limit = attn_tests.RMS_SLACK_P_ROUNDED * rms_ref if dtype != torch.float32 else float("inf")
    t = {"q": q, "k_cache": kc, "v_cache": vc, "k_new": kn, "v_new": vn, "seqlens": seqlens}
    if rope:
        t.update(cos=cos, sin=sin)
    t.update(
        scale=scalar(1.0 / D**0.5),
        truth=truth,
        max_limit=scalar(max_limit),
        rms_limit=scalar(rms_limit),
        ulp=scalar(attn_tests.ULP[dtype]),
        k_ref=k_ref,
        v_ref=v_ref,
    )
    return t


def attention_cases():
    cases = [attention_case(B, S, Hq, Hkv, D, dt, rope) for B, S, (Hq, Hkv), D, dt, rope in attn_tests.FULL_GRID]
    # test_other_head_dims (D = 16 crashed the first H100 run) and test_long_prefill.
    for D in (96, 16):
        for dt in attn_tests.DTYPES:
            cases.append(attention_case(2, 3, 4, 2, D, dt, True))
    cases.append(attention_case(1, 33, 4, 2, 32, torch.float32, True))
    # GQA 4 with S = 16: 64 rows in one tile; G = 8, S = 16: 128 rows; S = 40,
    # G = 4: two tiles of 128 rows.
    cases.append(attention_case(2, 16, 8, 2, 128, torch.bfloat16, True, T_max=70))
    cases.append(attention_case(1, 16, 16, 2, 64, torch.float16, False, T_max=200))
    cases.append(attention_case(1, 40, 8, 2, 64, torch.float32, True, T_max=90))
    # Non-finite V among the new keys of a verify step, every dtype.
    for dt in attn_tests.DTYPES:
        cases.append(attention_case(2, 4, 4, 2, 32, dt, True, T_max=64, lens=[20, 3], seed=6, poison=True))
        cases.append(attention_case(2, 5, 8, 2, 64, dt, False, T_max=96, lens=[60, 0], seed=7, poison=True))
    # Long rows: automatic splits of at least 256 keys, and one row short
    # enough to leave the last splits empty.
    cases.append(attention_case(2, 3, 8, 1, 128, torch.bfloat16, True, T_max=1100, lens=[1090, 300]))
    cases.append(attention_case(1, 1, 4, 1, 64, torch.float16, False, T_max=1030, lens=[1029]))
    cases.append(attention_case(1, 2, 2, 1, 64, torch.float32, True, T_max=800, lens=[700]))
    # Lengths the op does not check on CUDA: negative, past T_max, huge.
    cases.append(attention_case(3, 2, 4, 2, 64, torch.float32, True, lens=[-1, 36, 5]))
    cases.append(attention_case(3, 5, 6, 3, 128, torch.bfloat16, True, lens=[2**31 - 3, 0, -2**31]))
    return cases


def acceptance_cases():
    cases = []
    grid = acc_tests.grid("cuda")
    for dt in acc_tests.DTYPES:
        for i, (B, k, V) in enumerate(grid):
            draft, logits = acc_tests.greedy_case(B, k, V, dt, seed=i)
            n, out = reference.verify_greedy(draft, logits)
            cases.append(greedy_tensors(draft, logits, n, out))
    for i, (B, k, V) in enumerate(grid):
        draft, q, p = acc_tests.sampling_case(B, k, V, seed=i)
        for seed, offset in ((i, 0), (2**40 + i, 7), (-3, 2**32 - 1)):
            n, out = reference.verify_sampling(draft, q, p, seed, offset)
            cases.append(sampling_tensors(draft, q, p, seed, offset, n, out))
    # Draft ids outside [0, V): greedy rejects there (no id equals the argmax).
    draft, logits = acc_tests.greedy_case(4, 4, 50, torch.float32, seed=3)
    draft[0, 0], draft[2, 1], draft[3, 2] = -1, 50, 2**62
    n, out = reference.verify_greedy(draft, logits)
    cases.append(greedy_tensors(draft, logits, n, out))
    # Sampling rejects there as for a token of draft probability 0: the
    # reference sees id 0 with p(0) = 0 (certain rejection, same residual).
    B, k, V = 4, 4, 50
    draft, q, p = acc_tests.sampling_case(B, k, V, seed=4)
    p[:, :, 0] = 0
    p /= p.sum(-1, keepdim=True)
    bad = draft.clone()
    for b, i, v in ((0, 0, -5), (1, 2, V), (3, 3, 2**40)):
        draft[b, i], bad[b, i] = 0, v
    # A replaced position always rejects, so no replaced id is ever emitted and
    # the reference's output is the expected one as it stands.
    n, out = reference.verify_sampling(draft, q, p, 11, 3)
    cases.append(sampling_tensors(bad, q, p, 11, 3, n, out))
    return cases + draft_lens_cases()


def draft_lens_cases():
    """Per-row draft lengths on the test grid, as the parity tests run them:
    even rows accept all their drafts, expected outputs come from the
    reference on clean inputs, and the kernels run on inputs with garbage past
    each row's length (every variant of garbage_past_lens)."""
    cases = []
    grid = acc_tests.grid("cuda")
    for i, (B, k, V) in enumerate(grid):
        lens = acc_tests.draft_lens_for(B, k, seed=i)
        for variant in (0, 1, 2):
            dt = acc_tests.DTYPES[(i + variant) % len(acc_tests.DTYPES)]
            draft, logits = acc_tests.accepting_even_rows(*acc_tests.greedy_case(B, k, V, dt, seed=i))
            n, out = reference.verify_greedy(draft, logits, lens)
            bad_draft, bad_logits = acc_tests.garbage_past_lens(lens, draft, logits=logits, variant=variant)
            cases.append(greedy_tensors(bad_draft, bad_logits, n, out, lens))
            draft, q, p = acc_tests.accepting_even_rows(*acc_tests.sampling_case(B, k, V, seed=i), seed=i)
            n, out = reference.verify_sampling(draft, q, p, 2**40 + i, 7, lens)
            bad_draft, bad_q, bad_p = acc_tests.garbage_past_lens(lens, draft, q=q, p=p, variant=variant)
            cases.append(sampling_tensors(bad_draft, bad_q, bad_p, 2**40 + i, 7, n, out, lens))
    # Lengths equal to k: the op's default result, bit for bit.
    B, k, V = 5, 4, 1000
    full = torch.full((B,), k, dtype=torch.int32)
    draft, logits = acc_tests.greedy_case(B, k, V, torch.bfloat16, seed=21)
    cases.append(greedy_tensors(draft, logits, *reference.verify_greedy(draft, logits), full))
    draft, q, p = acc_tests.sampling_case(B, k, V, seed=21)
    cases.append(sampling_tensors(draft, q, p, 5, 6, *reference.verify_sampling(draft, q, p, 5, 6), full))
    # Lengths outside [0, k] (not read on the host by the CUDA op): clamped on
    # the device, so the reference's result for the clamped lengths.
    B, k, V = 4, 3, 64
    lens = torch.tensor([-3, k + 5, 2**31 - 1, -(2**31)], dtype=torch.int32)
    clamped = lens.clamp(0, k)
    draft, logits = acc_tests.accepting_even_rows(*acc_tests.greedy_case(B, k, V, torch.float32, seed=22))
    draft[1] = logits[1, :k].argmax(-1)  # a row clamped to k that accepts everything
    cases.append(greedy_tensors(draft, logits, *reference.verify_greedy(draft, logits, clamped), lens))
    draft, q, p = acc_tests.accepting_even_rows(*acc_tests.sampling_case(B, k, V, seed=22), seed=22)
    cases.append(sampling_tensors(draft, q, p, 1, 2, *reference.verify_sampling(draft, q, p, 1, 2, clamped), lens))
    return cases


def greedy_tensors(draft, logits, n, out, lens=None):
    t = {"kind": scalar(0, torch.int64), "draft": draft, "logits": logits, "n": n, "out": out}
    if lens is not None:
        t["lens"] = lens
    return t


def sampling_tensors(draft, q, p, seed, offset, n, out, lens=None):
    t = {
        "kind": scalar(1, torch.int64),
        "draft": draft,
        "q": q,
        "p": p,
        "seed": scalar(seed % 2**64 - (2**64 if seed % 2**64 >= 2**63 else 0), torch.int64),
        "offset": scalar(offset, torch.int64),
        "n": n,
        "out": out,
    }
    if lens is not None:
        t["lens"] = lens
    return t


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for old in os.listdir(out_dir):
        if old.endswith(".bin"):
            os.remove(os.path.join(out_dir, old))
    n_attn = n_acc = 0
    for i, t in enumerate(attention_cases()):
        write_case(os.path.join(out_dir, f"attn_{i:04d}.bin"), t)
        n_attn += 1
    for i, t in enumerate(acceptance_cases()):
        write_case(os.path.join(out_dir, f"acc_{i:04d}.bin"), t)
        n_acc += 1
    print(f"wrote {n_attn} attention and {n_acc} acceptance cases to {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1])
