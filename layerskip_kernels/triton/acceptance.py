"""verify_greedy / verify_sampling in Triton, bit-identical to reference.py.

Two launches per op:

1. A vocabulary pass, one program per (row b, position i), looping over V in
   blocks: the target argmax (greedy) or the exponential-race winner (sampling)
   of every position, into a small int64 [B, k+1] buffer. When V is small a
   program takes several (row, position) pairs, so that thousands of rows (the
   statistical tests; batched decoding of a tiny vocabulary) are not thousands
   of programs.
2. `_accept_prefix_kernel`, one program per block of rows: the accept test of
   the k drafts (token match, or the Philox coin), the length of the accepted
   prefix and the emitted tokens. It needs the winners of all positions because
   the first rejection decides which one is emitted.

Random numbers follow the counter layout in the docstring of reference.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import interpreting, next_pow2

PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 tensors (Random123's round function and constants)."""
    for r in tl.static_range(10):
        if r > 0:
            k0 = k0 + PHILOX_W0  # uint32: wraps mod 2^32
            k1 = k1 + PHILOX_W1
        hi0 = tl.umulhi(c0, PHILOX_M0)
        lo0 = c0 * PHILOX_M0  # the low word of the 64-bit product is the wrapped product
        hi1 = tl.umulhi(c2, PHILOX_M1)
        lo1 = c2 * PHILOX_M1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@triton.jit
def _philox_uniform(x):
    # Top 23 bits plus one half: exact in fp32, never 0 or 1.
    return ((x >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07  # 2^-23


@triton.jit
def _argmax_kernel(
    logits_ptr,  # [B, K1, V] fp32/fp16/bf16
    out_ptr,  # int64 [B, K1]
    stride_b, stride_k, stride_v,
    K1, V, n_rows,  # n_rows = B * K1
    UPCAST: tl.constexpr,
    BLOCK_R: tl.constexpr,  # (row, position) pairs per program: > 1 only for small V
    BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows[:, None] < n_rows
    b = (rows // K1).to(tl.int64)[:, None]
    i = (rows % K1).to(tl.int64)[:, None]
    base = logits_ptr + b * stride_b + i * stride_k
    lanes = tl.arange(0, BLOCK_V)[None, :].to(tl.int64)
    # Per-lane running best; lanes start on the first block's ids so that an
    # all -inf row still reports id 0, like torch.argmax.
    best = tl.full([BLOCK_R, BLOCK_V], float("-inf"), tl.float32)
    best_id = tl.zeros([BLOCK_R, BLOCK_V], tl.int64) + lanes
    for v0 in range(0, V, BLOCK_V):
        v = v0 + lanes
        x = tl.load(base + v * stride_v, mask=row_ok & (v < V), other=float("-inf"))
        if UPCAST:
            x = x.to(tl.float32)
        # Strictly greater keeps the earlier (lower) id on ties; NaN counts as the
        # maximum and the first NaN of a lane stays.
        take = (x > best) | ((x != x) & (best == best))
        best = tl.where(take, x, best)
        best_id = tl.where(take, v, best_id)
    is_nan = best != best
    any_nan = tl.max(is_nan.to(tl.int32), 1)[:, None] > 0
    top = tl.max(tl.where(is_nan, float("-inf"), best), 1)[:, None]
    winner = tl.where(any_nan, is_nan, best == top)
    tl.store(out_ptr + rows, tl.min(tl.where(winner, best_id, V), 1), mask=rows < n_rows)


@triton.jit(do_not_specialize=["k0", "k1", "offset"])
def _race_kernel(
    target_ptr,  # fp32 [B, K + 1, V]
    draft_ptr,  # fp32 [B, K, V]
    out_ptr,  # int64 [B, K + 1]
    stride_tb, stride_tk, stride_tv,
    stride_db, stride_dk, stride_dv,
    K, V, n_rows,  # n_rows = B * (K + 1)
    k0, k1, offset,  # Philox key words and counter word 3, each in [0, 2^32)
    BLOCK_R: tl.constexpr,  # (row, position) pairs per program: > 1 only for small V
    BLOCK_G: tl.constexpr,  # groups of 4 vocabulary ids (one Philox call each)
):
    # [BLOCK_R, BLOCK_G, 4] tiles: [r, g, w] is id 4g + w of pair r, so the 4
    # words of one Philox call fill one group and memory order stays contiguous.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows[:, None, None] < n_rows
    b = (rows // (K + 1))[:, None, None]
    i = (rows % (K + 1))[:, None, None]
    t_base = target_ptr + b.to(tl.int64) * stride_tb + i.to(tl.int64) * stride_tk
    d_base = draft_ptr + b.to(tl.int64) * stride_db + i.to(tl.int64) * stride_dk
    has_draft = row_ok & (i < K)
    key0 = k0.to(tl.uint32)
    key1 = k1.to(tl.uint32)
    ctr1 = (2 * i).to(tl.uint32)
    ctr2 = b.to(tl.uint32)
    ctr3 = offset.to(tl.uint32)
    g = tl.arange(0, BLOCK_G)[None, :, None]
    word = tl.arange(0, 4)[None, None, :]

    # Two races share one pass and one set of uniforms: over the residual
    # max(p - q, 0) and over p itself (the fallback when the residual is zero
    # everywhere, which is only known at the end). At i = K there is no draft
    # distribution: q loads as 0, so the residual race is the race over p.
    best_r = tl.full([BLOCK_R, BLOCK_G, 4], -1.0, tl.float64)
    best_p = tl.full([BLOCK_R, BLOCK_G, 4], -1.0, tl.float64)
    id_r = tl.zeros([BLOCK_R, BLOCK_G, 4], tl.int64) + (g * 4 + word)
    id_p = id_r
    any_r = tl.zeros([BLOCK_R, BLOCK_G, 4], tl.int32)
    for g0 in range(0, tl.cdiv(V, 4), BLOCK_G):
        grp = g0 + g
        v = (grp * 4 + word).to(tl.int64)
        ok = row_ok & (v < V)
        p = tl.load(t_base + v * stride_tv, mask=ok, other=0.0)
        q = tl.load(d_base + v * stride_dv, mask=has_draft & (v < V), other=0.0)
        ctr0 = tl.zeros([1, BLOCK_G, 1], tl.uint32) + grp.to(tl.uint32)
        x0, x1, x2, x3 = _philox4x32_10(ctr0, ctr1, ctr2, ctr3, key0, key1)
        x = tl.where(word == 0, x0, tl.where(word == 1, x1, tl.where(word == 2, x2, x3)))
        # E = -log(u) and the keys in double: every backend then orders the
        # candidates the same way (up to the last bit of each libm's log).
        e = -tl.log(_philox_uniform(x).to(tl.float64))
        r = tl.maximum(p - q, 0.0)
        key_r = tl.where(r > 0, r.to(tl.float64) / e, -1.0)
        key_p = tl.where(p > 0, p.to(tl.float64) / e, -1.0)
        # Strictly greater: on equal keys the lower id (earlier block) stays.
        take_r = key_r > best_r
        take_p = key_p > best_p
        best_r = tl.where(take_r, key_r, best_r)
        id_r = tl.where(take_r, v, id_r)
        best_p = tl.where(take_p, key_p, best_p)
        id_p = tl.where(take_p, v, id_p)
        any_r = any_r | (r > 0).to(tl.int32)

    use_r = tl.max(tl.max(any_r, 2), 1)[:, None, None] > 0
    best = tl.where(use_r, best_r, best_p)
    ids = tl.where(use_r, id_r, id_p)
    top = tl.max(tl.max(best, 2), 1)[:, None, None]
    winner = tl.min(tl.min(tl.where(best == top, ids, V), 2), 1)
    tl.store(out_ptr + rows, winner, mask=rows < n_rows)


@triton.jit(do_not_specialize=["k0", "k1", "offset"])
def _accept_prefix_kernel(
    draft_tokens_ptr,  # int64 [B, K]
    winners_ptr,  # int64 [B, K + 1]: argmax / race winner of every position
    target_ptr,  # fp32 [B, K + 1, V] (SAMPLING only)
    draft_ptr,  # fp32 [B, K, V]     (SAMPLING only)
    num_ptr,  # int32 [B]
    out_ptr,  # int64 [B, K + 1]
    stride_xb, stride_xk,
    stride_tb, stride_tk, stride_tv,
    stride_db, stride_dk, stride_dv,
    B, K,
    k0, k1, offset,
    SAMPLING: tl.constexpr,
    BLOCK_B: tl.constexpr,  # rows per program
    BLOCK_K: tl.constexpr,  # >= K + 1 positions
):
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = b < B
    b64 = b.to(tl.int64)[:, None]
    i = tl.arange(0, BLOCK_K)[None, :]
    in_k = b_ok[:, None] & (i < K)
    draft = tl.load(draft_tokens_ptr + b64 * stride_xb + i * stride_xk, mask=in_k, other=0)
    winners = tl.load(winners_ptr + b64 * (K + 1) + i, mask=b_ok[:, None] & (i <= K), other=0)
    if SAMPLING:
        q_d = tl.load(draft_ptr + b64 * stride_db + i * stride_dk + draft * stride_dv, mask=in_k, other=0.0)
        p_d = tl.load(target_ptr + b64 * stride_tb + i * stride_tk + draft * stride_tv, mask=in_k, other=0.0)
        zero = tl.zeros([BLOCK_B, BLOCK_K], tl.uint32)
        x0, x1, x2, x3 = _philox4x32_10(
            zero,
            zero + (2 * i + 1).to(tl.uint32),
            zero + b[:, None].to(tl.uint32),
            zero + offset.to(tl.uint32),
            k0.to(tl.uint32),
            k1.to(tl.uint32),
        )
        u = _philox_uniform(x0)
        # u * q is exact in double (two 24-bit significands): P(accept) = min(1, p/q).
        accepted = (q_d > 0) & (u.to(tl.float64) * q_d.to(tl.float64) < p_d.to(tl.float64))
    else:
        accepted = draft == winners
    rejected = in_k & ~accepted
    n = tl.min(tl.where(rejected, i, K), 1)[:, None]
    last = tl.sum(tl.where(i == n, winners, 0), 1)[:, None]
    out = tl.where(i < n, draft, tl.where(i == n, last, -1))
    tl.store(num_ptr + b, tl.reshape(n, [BLOCK_B]).to(tl.int32), mask=b_ok)
    tl.store(out_ptr + b64 * (K + 1) + i, out, mask=b_ok[:, None] & (i <= K))


def _tiles(n_rows: int, V: int, device: torch.device) -> tuple[int, int]:
    """(rows per program, vocabulary block) of the vocabulary pass."""
    # The interpreter pays per program and per block iteration, numpy barely per
    # element: big tiles. On a GPU, 2048 elements keep a few loads in flight per
    # program; several (row, position) pairs share a program only when V is small.
    cap = 32768 if interpreting(device) else 2048
    block_v = max(4, min(next_pow2(V), cap))
    block_r = max(1, min(next_pow2(n_rows), cap // block_v))
    return block_r, block_v


def _rows_per_program(B: int, k: int, device: torch.device) -> int:
    cap = 32768 if interpreting(device) else 256
    return max(1, min(next_pow2(B), cap // next_pow2(k + 1)))


def _outputs(B: int, k: int, device: torch.device):
    num = torch.empty((B,), dtype=torch.int32, device=device)
    out = torch.empty((B, k + 1), dtype=torch.int64, device=device)
    winners = torch.empty((B, k + 1), dtype=torch.int64, device=device)
    return num, out, winners


def verify_greedy(
    draft_tokens: torch.Tensor,  # int64 [B, k]
    target_logits: torch.Tensor,  # [B, k+1, V]
) -> tuple[torch.Tensor, torch.Tensor]:  # int32 [B], int64 [B, k+1]
    """Triton launcher; inputs are checked by layerskip_kernels.ops."""
    B, k = draft_tokens.shape
    V = target_logits.shape[2]
    dev = target_logits.device
    num, out, winners = _outputs(B, k, dev)
    if B == 0:
        return num, out
    n_rows = B * (k + 1)
    block_r, block_v = _tiles(n_rows, V, dev)
    _argmax_kernel[(triton.cdiv(n_rows, block_r),)](
        target_logits, winners, *target_logits.stride(), k + 1, V, n_rows,
        # Half-precision compares are exact after the (exact) upcast; the
        # interpreter cannot do half-precision math at all.
        UPCAST=target_logits.dtype != torch.float32,
        BLOCK_R=block_r, BLOCK_V=block_v,
    )
    block_b = _rows_per_program(B, k, dev)
    _accept_prefix_kernel[(triton.cdiv(B, block_b),)](
        draft_tokens, winners, target_logits, target_logits, num, out,
        *draft_tokens.stride(), 0, 0, 0, 0, 0, 0,
        B, k, 0, 0, 0,
        SAMPLING=False, BLOCK_B=block_b, BLOCK_K=next_pow2(k + 1),
    )
    return num, out


def verify_sampling(
    draft_tokens: torch.Tensor,  # int64 [B, k]
    draft_probs: torch.Tensor,  # fp32 [B, k, V]
    target_probs: torch.Tensor,  # fp32 [B, k+1, V]
    seed: int,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # int32 [B], int64 [B, k+1]
    """Triton launcher; inputs are checked by layerskip_kernels.ops."""
    B, k = draft_tokens.shape
    V = target_probs.shape[2]
    dev = target_probs.device
    num, out, winners = _outputs(B, k, dev)
    if B == 0:
        return num, out
    s = int(seed) & 0xFFFFFFFFFFFFFFFF  # negative seeds: two's complement, as reference.py
    k0, k1 = s & 0xFFFFFFFF, s >> 32
    n_rows = B * (k + 1)
    block_r, block_v = _tiles(n_rows, V, dev)
    _race_kernel[(triton.cdiv(n_rows, block_r),)](
        target_probs, draft_probs, winners,
        *target_probs.stride(), *draft_probs.stride(),
        k, V, n_rows, k0, k1, int(offset),
        BLOCK_R=block_r, BLOCK_G=block_v // 4,
    )
    block_b = _rows_per_program(B, k, dev)
    _accept_prefix_kernel[(triton.cdiv(B, block_b),)](
        draft_tokens, winners, target_probs, draft_probs, num, out,
        *draft_tokens.stride(), *target_probs.stride(), *draft_probs.stride(),
        B, k, k0, k1, int(offset),
        SAMPLING=True, BLOCK_B=block_b, BLOCK_K=next_pow2(k + 1),
    )
    return num, out
