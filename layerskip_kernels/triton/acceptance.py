"""verify_greedy / verify_sampling in Triton, bit-identical to reference.py.

Greedy, two launches:

1. `_argmax_partial_kernel`, grid (blocks of (row b, position i) pairs,
   vocabulary splits): each program scans one slice of the vocabulary for
   its pairs, so a single row (B = 1, k = 4: five pairs) still spreads a
   128k vocabulary over the whole GPU. Writes (max, argmax) per slice.
2. `_greedy_finalize_kernel`, one program per block of rows: reduces the
   slices to the target argmax of every position, then the accepted prefix
   and the emitted tokens (the first mismatch decides which argmax is emitted).

Sampling, three launches, reading only what decides the output (as the cpu
backend does):

1. `_sampling_coins_kernel`: the accept coins need only p and q at the drafted
   ids; they fix each row's first rejected position a (k if none is rejected).
2. `_race_partial_kernel`, grid (blocks of rows, vocabulary splits): the
   exponential race of each row at its position a only (the races at other
   positions are never used), per vocabulary slice.
3. `_sampling_finalize_kernel`: reduces the slices to the race winner and
   emits the tokens.

When V is small a program takes several rows (or pairs), so that thousands of
rows (the statistical tests; batched decoding of a tiny vocabulary) are not
thousands of programs. Random numbers follow the counter layout in the
docstring of reference.py. Launchers read no tensor value on the host.

Per-row draft lengths (draft_lens): each kernel clamps draft_lens[b] into
[0, K] on the device (`_draft_len`), so any value stays inside the tensors.
Row b's coins stop at its length d, its race at a = d is the bonus race over
p, and greedy scans no position past d: no draft token or draft probability
at a position >= d is read. Without draft_lens (HAS_LENS = False) the kernels
are the plain k-for-every-row ones.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _utils

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
def _draft_len(lens_ptr, b, mask, K, HAS_LENS: tl.constexpr):
    """Draft length of rows b: draft_lens[b] clamped into [0, K]; K without draft_lens."""
    if HAS_LENS:
        d = tl.load(lens_ptr + b, mask=mask, other=0)
        return tl.minimum(tl.maximum(d, 0), K)
    else:
        return tl.zeros_like(b) + K


@triton.jit
def _argmax_partial_kernel(
    logits_ptr,  # [B, K1, V] fp32/fp16/bf16
    lens_ptr,  # int32 [B]: draft lengths (read only when HAS_LENS)
    part_val_ptr,  # fp32 [B * K1, NUM_SPLITS]: max of each slice (NaN if the slice holds one)
    part_id_ptr,  # int64 [B * K1, NUM_SPLITS]: its lowest id (the first NaN's)
    stride_b, stride_k, stride_v,
    K1, V, n_rows, NUM_SPLITS, CHUNK,  # n_rows = B * K1; slice j is ids [j * CHUNK, (j + 1) * CHUNK)
    HAS_LENS: tl.constexpr,
    BLOCK_R: tl.constexpr,  # (row, position) pairs per program: > 1 only for small V
    BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    split = tl.program_id(1)
    row_ok = rows[:, None] < n_rows
    b32 = rows // K1
    b = b32.to(tl.int64)[:, None]
    i = (rows % K1).to(tl.int64)[:, None]
    if HAS_LENS:
        # Positions past a row's draft length are never emitted: not scanned
        # (their partials are written but never read).
        row_ok = row_ok & (i <= _draft_len(lens_ptr, b32, rows < n_rows, K1 - 1, HAS_LENS)[:, None])
    base = logits_ptr + b * stride_b + i * stride_k
    v_lo = split.to(tl.int64) * CHUNK
    v_hi = tl.minimum(v_lo + CHUNK, V)
    lanes = tl.arange(0, BLOCK_V)[None, :].to(tl.int64)
    # Per-lane running best; lanes start on the slice's first ids so that an
    # all -inf slice still reports its lowest id, like torch.argmax. Half
    # precision becomes fp32 (exactly) so compares are fp32 ones.
    best = tl.full([BLOCK_R, BLOCK_V], float("-inf"), tl.float32)
    best_id = v_lo + lanes + tl.zeros([BLOCK_R, BLOCK_V], tl.int64)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        v = v0 + lanes
        x = tl.load(base + v * stride_v, mask=row_ok & (v < v_hi), other=float("-inf")).to(tl.float32)
        # Strictly greater keeps the earlier (lower) id on ties; NaN counts as the
        # maximum and the first NaN of a lane stays.
        take = (x > best) | ((x != x) & (best == best))
        best = tl.where(take, x, best)
        best_id = tl.where(take, v, best_id)
    is_nan = best != best
    any_nan = tl.max(is_nan.to(tl.int32), 1)[:, None] > 0
    top = tl.max(tl.where(is_nan, float("-inf"), best), 1)
    winner = tl.where(any_nan, is_nan, best == top[:, None])
    part = rows.to(tl.int64) * NUM_SPLITS + split
    top = tl.where(tl.reshape(any_nan, [BLOCK_R]), float("nan"), top)
    tl.store(part_val_ptr + part, top, mask=rows < n_rows)
    tl.store(part_id_ptr + part, tl.min(tl.where(winner, best_id, V), 1), mask=rows < n_rows)


@triton.jit
def _emit(draft, n, last, i):
    """Row of out_tokens: accepted drafts, then `last` at position n, then -1."""
    return tl.where(i < n, draft, tl.where(i == n, last, -1))


@triton.jit
def _greedy_finalize_kernel(
    draft_tokens_ptr,  # int64 [B, K]
    lens_ptr,  # int32 [B]: draft lengths (read only when HAS_LENS)
    part_val_ptr,  # fp32 [B * (K + 1), NUM_SPLITS]
    part_id_ptr,  # int64 [B * (K + 1), NUM_SPLITS]
    num_ptr,  # int32 [B]
    out_ptr,  # int64 [B, K + 1]
    stride_xb, stride_xk,
    B, K, NUM_SPLITS, V,
    HAS_LENS: tl.constexpr,
    BLOCK_B: tl.constexpr,  # rows per program
    BLOCK_K: tl.constexpr,  # >= K + 1 positions
    BLOCK_S: tl.constexpr,  # >= NUM_SPLITS
):
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = b < B
    b64 = b.to(tl.int64)[:, None]
    i = tl.arange(0, BLOCK_K)[None, :]
    d = _draft_len(lens_ptr, b, b_ok, K, HAS_LENS)[:, None]
    in_k = b_ok[:, None] & (i < d)
    # Argmax of every position from its slices: the first NaN slice, else the
    # largest value, ties to the lowest slice (its ids are the lower ones).
    j = tl.arange(0, BLOCK_S)[None, None, :]
    part = (b64[:, :, None] * (K + 1) + i[:, :, None]) * NUM_SPLITS + j
    ok = b_ok[:, None, None] & (i[:, :, None] <= K) & (j < NUM_SPLITS)
    val = tl.load(part_val_ptr + part, mask=ok, other=float("-inf"))
    ids = tl.load(part_id_ptr + part, mask=ok, other=V)
    is_nan = val != val
    any_nan = tl.max(is_nan.to(tl.int32), 2)[:, :, None] > 0
    top = tl.max(tl.where(is_nan, float("-inf"), val), 2)[:, :, None]
    winner = tl.where(any_nan, is_nan, val == top) & ok
    winners = tl.min(tl.where(winner, ids, V), 2)  # [BLOCK_B, BLOCK_K]

    draft = tl.load(draft_tokens_ptr + b64 * stride_xb + i * stride_xk, mask=in_k, other=0)
    rejected = in_k & (draft != winners)
    n = tl.min(tl.where(rejected, i, d), 1)[:, None]
    last = tl.sum(tl.where(i == n, winners, 0), 1)[:, None]
    tl.store(num_ptr + b, tl.reshape(n, [BLOCK_B]).to(tl.int32), mask=b_ok)
    tl.store(out_ptr + b64 * (K + 1) + i, _emit(draft, n, last, i), mask=b_ok[:, None] & (i <= K))


@triton.jit(do_not_specialize=["k0", "k1", "offset"])
def _sampling_coins_kernel(
    draft_tokens_ptr,  # int64 [B, K]
    target_ptr,  # fp32 [B, K + 1, V]
    draft_ptr,  # fp32 [B, K, V]
    lens_ptr,  # int32 [B]: draft lengths d (read only when HAS_LENS)
    num_ptr,  # int32 [B]: out, the first rejected position (d if none)
    stride_xb, stride_xk,
    stride_tb, stride_tk, stride_tv,
    stride_db, stride_dk, stride_dv,
    B, K, V,
    k0, k1, offset,
    HAS_LENS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,  # >= K
):
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = b < B
    b64 = b.to(tl.int64)[:, None]
    i = tl.arange(0, BLOCK_K)[None, :]
    d = _draft_len(lens_ptr, b, b_ok, K, HAS_LENS)[:, None]
    in_k = b_ok[:, None] & (i < d)
    draft = tl.load(draft_tokens_ptr + b64 * stride_xb + i * stride_xk, mask=in_k, other=0)
    # An id outside [0, V) (unchecked inside trusted_inputs) is read nowhere:
    # q_d = 0 rejects it, as the CUDA kernel does.
    id_ok = in_k & (draft >= 0) & (draft < V)
    q_d = tl.load(draft_ptr + b64 * stride_db + i * stride_dk + draft * stride_dv, mask=id_ok, other=0.0)
    p_d = tl.load(target_ptr + b64 * stride_tb + i * stride_tk + draft * stride_tv, mask=id_ok, other=0.0)
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
    n = tl.min(tl.where(in_k & ~accepted, i, d), 1)
    tl.store(num_ptr + b, n.to(tl.int32), mask=b_ok)


@triton.jit(do_not_specialize=["k0", "k1", "offset"])
def _race_partial_kernel(
    target_ptr,  # fp32 [B, K + 1, V]
    draft_ptr,  # fp32 [B, K, V]
    lens_ptr,  # int32 [B]: draft lengths (read only when HAS_LENS)
    num_ptr,  # int32 [B]: the position of each row's race
    part_key_ptr,  # fp64 [B, NUM_SPLITS, 2]: leader's key of the residual race, of the race over p
    part_id_ptr,  # int64 [B, NUM_SPLITS, 2]: leader's id
    part_any_ptr,  # int32 [B, NUM_SPLITS]: the slice holds a positive residual
    stride_tb, stride_tk, stride_tv,
    stride_db, stride_dk, stride_dv,
    B, K, V, NUM_SPLITS, CHUNK,  # slice j is ids [j * CHUNK, (j + 1) * CHUNK), CHUNK % 4 == 0
    k0, k1, offset,  # Philox key words and counter word 3, each in [0, 2^32)
    HAS_LENS: tl.constexpr,
    BLOCK_R: tl.constexpr,  # rows per program: > 1 only for small V
    BLOCK_G: tl.constexpr,  # groups of 4 vocabulary ids (one Philox call each)
):
    # [BLOCK_R, BLOCK_G, 4] tiles: [r, g, w] is id 4g + w of row r, so the 4
    # words of one Philox call fill one group and memory order stays contiguous.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    split = tl.program_id(1)
    row_ok = rows[:, None, None] < B
    i = tl.load(num_ptr + rows, mask=rows < B, other=0)[:, None, None]
    # Clamped, so that no address leaves the tensors whatever num holds.
    i = tl.minimum(tl.maximum(i, 0), K)
    b = rows[:, None, None]
    t_base = target_ptr + b.to(tl.int64) * stride_tb + i.to(tl.int64) * stride_tk
    d_base = draft_ptr + b.to(tl.int64) * stride_db + i.to(tl.int64) * stride_dk
    has_draft = row_ok & (i < _draft_len(lens_ptr, rows, rows < B, K, HAS_LENS)[:, None, None])
    key0 = k0.to(tl.uint32)
    key1 = k1.to(tl.uint32)
    ctr1 = (2 * i).to(tl.uint32)
    ctr2 = b.to(tl.uint32)
    ctr3 = offset.to(tl.uint32)
    g = tl.arange(0, BLOCK_G)[None, :, None]
    word = tl.arange(0, 4)[None, None, :]
    v_lo = split.to(tl.int64) * CHUNK
    v_hi = tl.minimum(v_lo + CHUNK, V)

    # Two races share one pass and one set of uniforms: over the residual
    # max(p - q, 0) and over p itself (the fallback when the residual is zero
    # everywhere, which is only known once every slice is done). At i = d (the
    # row's draft length) there is no draft distribution: q loads as 0, so the
    # residual race is over p.
    best_r = tl.full([BLOCK_R, BLOCK_G, 4], -1.0, tl.float64)
    best_p = tl.full([BLOCK_R, BLOCK_G, 4], -1.0, tl.float64)
    id_r = v_lo + tl.zeros([BLOCK_R, BLOCK_G, 4], tl.int64) + (g * 4 + word)
    id_p = id_r
    any_r = tl.zeros([BLOCK_R, BLOCK_G, 4], tl.int32)
    for g0 in range(v_lo // 4, tl.cdiv(v_hi, 4), BLOCK_G):
        grp = g0 + g
        v = grp * 4 + word
        ok = row_ok & (v < v_hi)
        p = tl.load(t_base + v * stride_tv, mask=ok, other=0.0)
        q = tl.load(d_base + v * stride_dv, mask=has_draft & ok, other=0.0)
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

    part = rows.to(tl.int64) * NUM_SPLITS + split
    top_r = tl.max(tl.max(best_r, 2), 1)
    top_p = tl.max(tl.max(best_p, 2), 1)
    win_r = tl.min(tl.min(tl.where(best_r == top_r[:, None, None], id_r, V), 2), 1)
    win_p = tl.min(tl.min(tl.where(best_p == top_p[:, None, None], id_p, V), 2), 1)
    m = rows < B
    tl.store(part_key_ptr + 2 * part, top_r, mask=m)
    tl.store(part_key_ptr + 2 * part + 1, top_p, mask=m)
    tl.store(part_id_ptr + 2 * part, win_r, mask=m)
    tl.store(part_id_ptr + 2 * part + 1, win_p, mask=m)
    tl.store(part_any_ptr + part, tl.max(tl.max(any_r, 2), 1), mask=m)


@triton.jit
def _sampling_finalize_kernel(
    draft_tokens_ptr,  # int64 [B, K]
    num_ptr,  # int32 [B]
    part_key_ptr,  # fp64 [B, NUM_SPLITS, 2]
    part_id_ptr,  # int64 [B, NUM_SPLITS, 2]
    part_any_ptr,  # int32 [B, NUM_SPLITS]
    out_ptr,  # int64 [B, K + 1]
    stride_xb, stride_xk,
    B, K, NUM_SPLITS, V,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,  # >= K + 1
    BLOCK_S: tl.constexpr,  # >= NUM_SPLITS
):
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = b < B
    b64 = b.to(tl.int64)[:, None]
    j = tl.arange(0, BLOCK_S)[None, :]
    ok = b_ok[:, None] & (j < NUM_SPLITS)
    part = b64 * NUM_SPLITS + j
    use_r = tl.max(tl.load(part_any_ptr + part, mask=ok, other=0), 1)[:, None] > 0
    # The residual race if any slice has a positive residual, else the race over p.
    pick = tl.where(use_r, 0, 1)
    key = tl.load(part_key_ptr + 2 * part + pick, mask=ok, other=-2.0)
    ids = tl.load(part_id_ptr + 2 * part + pick, mask=ok, other=V)
    top = tl.max(key, 1)[:, None]
    winner = tl.min(tl.where(key == top, ids, V), 1)[:, None]

    i = tl.arange(0, BLOCK_K)[None, :]
    n = tl.load(num_ptr + b, mask=b_ok, other=0)[:, None]
    draft = tl.load(draft_tokens_ptr + b64 * stride_xb + i * stride_xk, mask=b_ok[:, None] & (i < K), other=0)
    tl.store(out_ptr + b64 * (K + 1) + i, _emit(draft, n, winner, i), mask=b_ok[:, None] & (i <= K))


# Vocabulary slices per (row, position) at most: beyond that the second
# reduction reads more than a slice saves.
MAX_VOCAB_SPLITS = 128


def vocab_tiles(n_rows: int, V: int, device: torch.device, block_v: int | None = None,
                vocab_splits: int | None = None, gpu_cap: int = 2048) -> tuple[int, int, int, int]:
    """(rows per program, vocabulary block, number of slices, ids per slice).

    The interpreter pays per program and per block iteration, numpy barely per
    element: big tiles, one slice. On a GPU, 2048-element blocks keep a few
    loads in flight per program, and the vocabulary is split until there are
    about two waves of programs over the SMs.
    """
    interp = _utils.interpreting(device)
    cap = 32768 if interp else gpu_cap
    if block_v is None:
        block_v = max(4, min(_utils.next_pow2(V), cap))
    if vocab_splits is None:
        vocab_splits = 1 if interp else triton.cdiv(2 * _utils.sm_count(device), n_rows)
    vocab_splits = max(1, min(vocab_splits, triton.cdiv(V, block_v), MAX_VOCAB_SPLITS))
    chunk = triton.cdiv(triton.cdiv(V, vocab_splits), block_v) * block_v
    vocab_splits = triton.cdiv(V, chunk)  # no empty slice
    block_r = 1 if vocab_splits > 1 else max(1, min(_utils.next_pow2(n_rows), cap // block_v))
    return block_r, block_v, vocab_splits, chunk


def _rows_per_program(B: int, k: int, splits: int, device: torch.device) -> int:
    cap = 32768 if _utils.interpreting(device) else 256
    return max(1, min(_utils.next_pow2(B), cap // (_utils.next_pow2(k + 1) * _utils.next_pow2(splits))))


def _check_tiles(block_v, vocab_splits):
    if block_v is not None and (not isinstance(block_v, int) or block_v < 4 or block_v & (block_v - 1)):
        raise ValueError(f"block_v must be a power of two >= 4, got {block_v!r}")
    if vocab_splits is not None and (not isinstance(vocab_splits, int) or vocab_splits < 1):
        raise ValueError(f"vocab_splits must be a positive int or None, got {vocab_splits!r}")


def _lens_arg(draft_lens: torch.Tensor | None, fallback: torch.Tensor) -> torch.Tensor:
    # Without draft_lens the kernels never read the pointer (HAS_LENS = False);
    # any int32 tensor of the device stands in.
    return fallback if draft_lens is None else draft_lens.contiguous()


def verify_greedy(
    draft_tokens: torch.Tensor,  # int64 [B, k]
    target_logits: torch.Tensor,  # [B, k+1, V]
    draft_lens: torch.Tensor | None = None,  # int32 [B]; None: k for every row
    *,
    block_v: int | None = None,  # tests force GPU-sized tiles under the interpreter
    vocab_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # int32 [B], int64 [B, k+1]
    """Triton launcher; inputs are checked by layerskip_kernels.ops."""
    _check_tiles(block_v, vocab_splits)
    B, k = draft_tokens.shape
    V = target_logits.shape[2]
    dev = target_logits.device
    num = torch.empty((B,), dtype=torch.int32, device=dev)
    out = torch.empty((B, k + 1), dtype=torch.int64, device=dev)
    if B == 0:
        return num, out
    n_rows = B * (k + 1)
    block_r, block_v, splits, chunk = vocab_tiles(n_rows, V, dev, block_v, vocab_splits)
    part_val = torch.empty((n_rows, splits), dtype=torch.float32, device=dev)
    part_id = torch.empty((n_rows, splits), dtype=torch.int64, device=dev)
    block_b = _rows_per_program(B, k, splits, dev)
    lens = _lens_arg(draft_lens, num)
    has_lens = draft_lens is not None
    with _utils.device_guard(dev):
        _argmax_partial_kernel[(triton.cdiv(n_rows, block_r), splits)](
            target_logits, lens, part_val, part_id, *target_logits.stride(),
            k + 1, V, n_rows, splits, chunk,
            HAS_LENS=has_lens, BLOCK_R=block_r, BLOCK_V=block_v,
        )
        _greedy_finalize_kernel[(triton.cdiv(B, block_b),)](
            draft_tokens, lens, part_val, part_id, num, out, *draft_tokens.stride(),
            B, k, splits, V,
            HAS_LENS=has_lens, BLOCK_B=block_b, BLOCK_K=_utils.next_pow2(k + 1), BLOCK_S=_utils.next_pow2(splits),
        )
    return num, out


def verify_sampling(
    draft_tokens: torch.Tensor,  # int64 [B, k]
    draft_probs: torch.Tensor,  # fp32 [B, k, V]
    target_probs: torch.Tensor,  # fp32 [B, k+1, V]
    seed: int,
    offset: int,
    draft_lens: torch.Tensor | None = None,  # int32 [B]; None: k for every row
    *,
    block_v: int | None = None,
    vocab_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # int32 [B], int64 [B, k+1]
    """Triton launcher; inputs are checked by layerskip_kernels.ops."""
    _check_tiles(block_v, vocab_splits)
    B, k = draft_tokens.shape
    V = target_probs.shape[2]
    dev = target_probs.device
    num = torch.empty((B,), dtype=torch.int32, device=dev)
    out = torch.empty((B, k + 1), dtype=torch.int64, device=dev)
    if B == 0:
        return num, out
    s = int(seed) & 0xFFFFFFFFFFFFFFFF  # negative seeds: two's complement, as reference.py
    k0, k1 = s & 0xFFFFFFFF, s >> 32
    # The race keeps five per-lane values (two fp64 keys, two int64 ids, a
    # flag): 512-id blocks keep them in registers (2048 spilled).
    block_r, block_v, splits, chunk = vocab_tiles(B, V, dev, block_v, vocab_splits, gpu_cap=512)
    part_key = torch.empty((B, splits, 2), dtype=torch.float64, device=dev)
    part_id = torch.empty((B, splits, 2), dtype=torch.int64, device=dev)
    part_any = torch.empty((B, splits), dtype=torch.int32, device=dev)
    block_b = _rows_per_program(B, k, splits, dev)
    grid_b = (triton.cdiv(B, block_b),)
    lens = _lens_arg(draft_lens, num)
    has_lens = draft_lens is not None
    with _utils.device_guard(dev):
        _sampling_coins_kernel[grid_b](
            draft_tokens, target_probs, draft_probs, lens, num,
            *draft_tokens.stride(), *target_probs.stride(), *draft_probs.stride(),
            B, k, V, k0, k1, int(offset),
            HAS_LENS=has_lens, BLOCK_B=block_b, BLOCK_K=_utils.next_pow2(k),
        )
        _race_partial_kernel[(triton.cdiv(B, block_r), splits)](
            target_probs, draft_probs, lens, num, part_key, part_id, part_any,
            *target_probs.stride(), *draft_probs.stride(),
            B, k, V, splits, chunk, k0, k1, int(offset),
            HAS_LENS=has_lens, BLOCK_R=block_r, BLOCK_G=block_v // 4,
        )
        _sampling_finalize_kernel[grid_b](
            draft_tokens, num, part_key, part_id, part_any, out, *draft_tokens.stride(),
            B, k, splits, V,
            BLOCK_B=block_b, BLOCK_K=_utils.next_pow2(k + 1), BLOCK_S=_utils.next_pow2(splits),
        )
    return num, out
