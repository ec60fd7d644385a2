"""draft_verify_attention in Triton: RoPE + KV-cache write + causal attention.

Two (three with split-KV) launches:

1. `_rope_cache_write_kernel`, one program per (s, b): rotates k_new in fp32,
   rounds it once to the cache dtype and writes it (and v_new) at position
   cache_seqlens[b] + s. It runs first so that the attention kernel reads every
   key from the cache; doing the write inside the attention kernel would race
   with the programs of other KV splits that read the same positions.
2. `_draft_verify_attention_kernel`, grid (B * Hkv, M tiles, KV splits): the GQA
   group and the S queries of one KV head are packed into the M rows of one tile
   (row r is query s = r // G of query head kvh * G + r % G), so each K/V block
   is loaded once for the whole group instead of once per query head. RoPE on q
   is fused into the q load. Online softmax in base 2, fp32 accumulation.
3. `_merge_splits_kernel` (only when the keys are split over several programs):
   combines the partial (m, l, acc) of the splits with log-sum-exp weights.

Precision on a GPU. fp16/bf16: q, K and V enter `tl.dot` in their own dtype
(tensor cores, fp32 accumulation); the rotated q and the probabilities P are
rounded to that dtype before their dot, as flash-attention does. fp32: the dots
run as tf32x3 (three tf32 tensor-core products: about fp32 accuracy, which the
fp32 parity tolerance needs and plain tf32 misses by far); "ieee" would run on
the FMA units and needs a [BLOCK_M, BLOCK_N] fp32 product per thread group in
registers, which is what spilled. Under the interpreter everything is fp32
(it gets half-precision arithmetic wrong), with exact "ieee" dots.

Lengths are never read on the host. A row with cache_seqlens[b] < 0 or
cache_seqlens[b] + S > T_max is neither written nor read, and its output is
zero (the rule of csrc/cuda/attention.cu); ops.py rejects such rows in eager
calls, this is what a traced or captured graph gets.

The reference (spec) is `layerskip_kernels.reference.draft_verify_attention`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import _utils

# Rows of one M tile: beyond this, long prefills are tiled over several programs.
MAX_BLOCK_M = 64
MAX_BLOCK_M_HALF = 32  # 16-bit tiles on a GPU: see choose_tiles
# A KV split below this many keys costs more in launch and merge than it saves.
MIN_KEYS_PER_SPLIT = 256
MAX_SPLITS = 64
LOG2E = 1.4426950408889634


@triton.jit
def _row_length(seqlens_ptr, stride_l, b, S, T_MAX):
    """(L, valid): the row's cached length, and whether L + s stays in the cache."""
    L = tl.load(seqlens_ptr + b * stride_l).to(tl.int64)
    valid = (L >= 0) & (L + S <= T_MAX)
    return L, valid


@triton.jit
def _rope_cache_write_kernel(
    k_new_ptr,  # [B, S, Hkv, D]
    v_new_ptr,  # [B, S, Hkv, D]
    k_cache_ptr,  # [B, Hkv, T_max, D]
    v_cache_ptr,  # [B, Hkv, T_max, D]
    seqlens_ptr,  # int32 [B], any stride
    cos_ptr,  # fp32 [>= T_max, D/2]
    sin_ptr,
    stride_l,
    stride_knb, stride_kns, stride_knh, stride_knd,
    stride_vnb, stride_vns, stride_vnh, stride_vnd,
    stride_kcb, stride_kch, stride_kct, stride_kcd,
    stride_vcb, stride_vch, stride_vct, stride_vcd,
    stride_ct, stride_cd, stride_st, stride_sd,
    S, HKV, D, D_HALF, T_MAX,
    HAS_ROPE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # int64 indices: B * Hkv * T_max * D can exceed 2^31 elements. S rides on
    # grid axis 0, the only one not capped at 65535 (a long prefill).
    s = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    L, valid = _row_length(seqlens_ptr, stride_l, b, S, T_MAX)
    pos = tl.where(valid, L + s, 0)  # never an address outside the cache or the tables
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < HKV) & (d < D) & valid

    k_row = k_new_ptr + b * stride_knb + s * stride_kns + h * stride_knh
    # The rotation runs in fp32 whatever the dtype: one rounding, at the store.
    k = tl.load(k_row + d * stride_knd, mask=mask, other=0.0).to(tl.float32)
    if HAS_ROPE:
        # Rotate-half as one full-width expression, so D need not be a power of
        # two: element d pairs with d +- D/2, and cos/sin are indexed by d mod D/2.
        # x*c + (-x')*s rounds exactly like the reference's x1*c - x2*s.
        lo = d < D_HALF
        partner = tl.where(lo, d + D_HALF, d - D_HALF)
        j = tl.where(lo, d, d - D_HALF)
        kp = tl.load(k_row + partner * stride_knd, mask=mask, other=0.0).to(tl.float32)
        c = tl.load(cos_ptr + pos * stride_ct + j * stride_cd, mask=(d < D) & valid, other=0.0)
        sn = tl.load(sin_ptr + pos * stride_st + j * stride_sd, mask=(d < D) & valid, other=0.0)
        k = k * c + tl.where(lo, -kp, kp) * sn
    tl.store(
        k_cache_ptr + b * stride_kcb + h * stride_kch + pos * stride_kct + d * stride_kcd,
        k.to(k_cache_ptr.dtype.element_ty),
        mask=mask,
    )
    v = tl.load(v_new_ptr + b * stride_vnb + s * stride_vns + h * stride_vnh + d * stride_vnd, mask=mask, other=0.0)
    tl.store(
        v_cache_ptr + b * stride_vcb + h * stride_vch + pos * stride_vct + d * stride_vcd,
        v.to(v_cache_ptr.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def _attend_block(
    acc, m_i, l_i, q,
    k_base, v_base, n0, end, last_key, d, d_ok,
    stride_kt, stride_kd, stride_vt, stride_vd,
    scale_log2,
    DIAGONAL: tl.constexpr,  # some keys of the block are causally hidden from some rows
    NATIVE: tl.constexpr,  # K/V stay in their 16-bit dtype (tensor cores)
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One online-softmax step over keys n0 .. n0 + BLOCK_N - 1 (those < end)."""
    t = n0 + tl.arange(0, BLOCK_N)
    t_ok = t < end
    kt = tl.load(
        k_base + t[None, :].to(tl.int64) * stride_kt + d[:, None] * stride_kd,
        mask=t_ok[None, :] & d_ok[:, None],
        other=0.0,
    )  # [BLOCK_D, BLOCK_N]
    v = tl.load(
        v_base + t[:, None].to(tl.int64) * stride_vt + d[None, :] * stride_vd,
        mask=t_ok[:, None] & d_ok[None, :],
        other=0.0,
    )  # [BLOCK_N, BLOCK_D]
    if not NATIVE:
        kt = kt.to(tl.float32)
        v = v.to(tl.float32)
    qk = tl.dot(q, kt, input_precision=PRECISION) * scale_log2
    allowed = t_ok[None, :]
    if DIAGONAL:
        allowed = allowed & (t[None, :] <= last_key[:, None])
    qk = tl.where(allowed, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if DIAGONAL:
        # p = 0 at a hidden key, but 0 * NaN (or inf) in V would still reach
        # the output through the dot. Dot the finite part of V, and let each
        # row's visible non-finite values in by an exact count instead: +inf,
        # -inf and NaN weigh 1, 2^8 and 2^16 (< 256 of each per block, exact in
        # fp32). A row that sees them gets inf/-inf/NaN as the reference does.
        vf = v.to(tl.float32)
        finite = tl.abs(vf) < float("inf")  # False for +-inf and NaN
        code = tl.where(finite, 0.0, tl.where(vf != vf, 65536.0, tl.where(vf > 0, 1.0, 256.0)))
        if NATIVE:  # 0/1, 1, 2^8 and 2^16 are exact in bf16
            hits = tl.dot(allowed.to(tl.bfloat16), code.to(tl.bfloat16))  # [BLOCK_M, BLOCK_D]
        else:
            hits = tl.dot(allowed.to(tl.float32), code, input_precision=PRECISION)
        v = tl.where(finite, v, 0.0).to(v.dtype)
        n_nan = hits >= 65536.0
        n_neg = (hits - 65536.0 * tl.floor(hits / 65536.0)) >= 256.0
        n_pos = (hits - 256.0 * tl.floor(hits / 256.0)) > 0.0
        bad = tl.where(n_nan | (n_pos & n_neg), float("nan"), tl.where(n_pos, float("inf"), float("-inf")))
        acc = acc + tl.where(n_nan | n_neg | n_pos, bad, 0.0)
    acc += tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _draft_verify_attention_kernel(
    q_ptr,  # [B, S, Hq, D], any strides
    k_cache_ptr,  # [B, Hkv, T_max, D], already holding the new keys
    v_cache_ptr,
    seqlens_ptr,  # int32 [B], any stride
    cos_ptr,  # fp32 [>= T_max, D/2]
    sin_ptr,
    out_ptr,  # [B, S, Hq, D] contiguous, q's dtype (unused when SPLIT)
    m_part_ptr,  # fp32 [B, S, Hq, NUM_SPLITS]      (only when SPLIT)
    l_part_ptr,  # fp32 [B, S, Hq, NUM_SPLITS]
    acc_part_ptr,  # fp32 [B, S, Hq, NUM_SPLITS, D]
    stride_l,
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_ct, stride_cd, stride_st, stride_sd,
    HKV, S, G, D, D_HALF, T_MAX, NUM_SPLITS,
    scale_log2,  # softmax_scale * log2(e): the softmax runs on exp2
    HAS_ROPE: tl.constexpr,
    SPLIT: tl.constexpr,
    NATIVE: tl.constexpr,
    PRECISION: tl.constexpr,
    MIN_CHUNK: tl.constexpr,  # fewest keys per split (a multiple of BLOCK_N)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    split = tl.program_id(2)
    b = (pid_bh // HKV).to(tl.int64)
    kvh = (pid_bh % HKV).to(tl.int64)
    hq = HKV * G
    L, valid = _row_length(seqlens_ptr, stride_l, b, S, T_MAX)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    s = rows // G
    h = kvh * G + rows % G
    row_ok = rows < S * G
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    qmask = row_ok[:, None] & d_ok[None, :]
    # Query s of row b attends keys 0 .. L + s (bottom-right-aligned causal mask).
    last_key = L + s

    # Keys this tile needs end at its last query's position. The split count
    # is fixed by T_max (no host read of the lengths); the real length is
    # divided here, in BLOCK_N-aligned chunks of at least MIN_CHUNK keys, so a
    # short row leaves the later splits empty, and an empty split returns
    # before loading anything (the merge skips it).
    s_first = (pid_m * BLOCK_M) // G
    s_last = tl.minimum((pid_m * BLOCK_M + BLOCK_M - 1) // G, S - 1)
    n_keys = tl.where(valid, L + s_last + 1, 0)
    chunk = tl.maximum(tl.cdiv(tl.cdiv(n_keys, NUM_SPLITS), BLOCK_N) * BLOCK_N, MIN_CHUNK)
    start = split * chunk
    end = tl.minimum(start + chunk, n_keys)

    # A finite initial max: a row whose keys are all masked in this block (or in
    # this whole split) keeps alpha = 1 and p = 0 instead of exp2(-inf + inf) = NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if start < end:
        q_row = q_ptr + b * stride_qb + s[:, None] * stride_qs + h[:, None] * stride_qh
        q = tl.load(q_row + d[None, :] * stride_qd, mask=qmask, other=0.0)
        if HAS_ROPE:
            # Same full-width rotate-half as in _rope_cache_write_kernel, in fp32.
            lo = d[None, :] < D_HALF
            partner = tl.where(lo, d[None, :] + D_HALF, d[None, :] - D_HALF)
            j = tl.where(lo, d[None, :], d[None, :] - D_HALF)
            qp = tl.load(q_row + partner * stride_qd, mask=qmask, other=0.0).to(tl.float32)
            pos = last_key[:, None]
            c = tl.load(cos_ptr + pos * stride_ct + j * stride_cd, mask=qmask, other=0.0)
            sn = tl.load(sin_ptr + pos * stride_st + j * stride_sd, mask=qmask, other=0.0)
            q = q.to(tl.float32) * c + tl.where(lo, -qp, qp) * sn
        if NATIVE:
            q = q.to(k_cache_ptr.dtype.element_ty)
        else:
            q = q.to(tl.float32)

        k_base = k_cache_ptr + b * stride_kb + kvh * stride_kh
        v_base = v_cache_ptr + b * stride_vb + kvh * stride_vh
        # Keys below `diag` are visible to every row of the tile: a plain loop.
        # The one or two blocks from there on are masked per row. Loads stop at
        # the tile's own length L + s_last + 1: later positions may hold
        # anything (NaN included) and must not reach the output.
        diag = tl.minimum(((L + s_first + 1) // BLOCK_N) * BLOCK_N, end)
        for n0 in range(start, diag, BLOCK_N):
            acc, m_i, l_i = _attend_block(
                acc, m_i, l_i, q, k_base, v_base, n0, end, last_key, d, d_ok,
                stride_kt, stride_kd, stride_vt, stride_vd, scale_log2,
                DIAGONAL=False, NATIVE=NATIVE, PRECISION=PRECISION, BLOCK_N=BLOCK_N,
            )
        for n0 in range(tl.maximum(start, diag), end, BLOCK_N):
            acc, m_i, l_i = _attend_block(
                acc, m_i, l_i, q, k_base, v_base, n0, end, last_key, d, d_ok,
                stride_kt, stride_kd, stride_vt, stride_vd, scale_log2,
                DIAGONAL=True, NATIVE=NATIVE, PRECISION=PRECISION, BLOCK_N=BLOCK_N,
            )

    flat = (b * S + s.to(tl.int64)) * hq + h  # row index into [B, S, Hq]
    if SPLIT:
        part = flat * NUM_SPLITS + split
        tl.store(m_part_ptr + part, m_i, mask=row_ok)
        tl.store(l_part_ptr + part, l_i, mask=row_ok)
        if start < end:
            tl.store(acc_part_ptr + part[:, None] * D + d[None, :], acc, mask=qmask)
    else:
        # Rows that see no key (invalid length, padding) have l = 0: output 0.
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_safe[:, None]
        tl.store(out_ptr + flat[:, None] * D + d[None, :], out.to(out_ptr.dtype.element_ty), mask=qmask)


@triton.jit
def _merge_splits_kernel(
    m_part_ptr,  # fp32 [B * S * Hq, NUM_SPLITS]   running max, base 2
    l_part_ptr,  # fp32 [B * S * Hq, NUM_SPLITS]   sum of exp2(score - m)
    acc_part_ptr,  # fp32 [B * S * Hq, NUM_SPLITS, D] unnormalized output
    out_ptr,  # [B * S * Hq, D]
    D, NUM_SPLITS,
    BLOCK_SPLITS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, BLOCK_SPLITS)
    j_ok = j < NUM_SPLITS
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    m = tl.load(m_part_ptr + row * NUM_SPLITS + j, mask=j_ok, other=-1.0e30)
    l = tl.load(l_part_ptr + row * NUM_SPLITS + j, mask=j_ok, other=0.0)
    # Splits that saw no key of this row (l = 0, m = -1e30; empty splits never
    # wrote their acc) get weight 0 and are not read.
    used = j_ok & (l > 0)
    m_max = tl.max(tl.where(used, m, -1.0e30), 0)
    w = tl.where(used, tl.exp2(m - m_max), 0.0)
    l_tot = tl.sum(w * l, 0)
    acc = tl.load(
        acc_part_ptr + (row * NUM_SPLITS + j[:, None]) * D + d[None, :],
        mask=used[:, None] & d_ok[None, :],
        other=0.0,
    )
    out = tl.sum(acc * w[:, None], 0) / tl.where(l_tot > 0, l_tot, 1.0)
    tl.store(out_ptr + row * D + d, out.to(out_ptr.dtype.element_ty), mask=d_ok)


@dataclass(frozen=True)
class Tiles:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    native: bool  # 16-bit dots on tensor cores (False: fp32 tiles)
    precision: str  # tl.dot input_precision of the fp32 dots


def choose_tiles(M: int, D: int, dtype: torch.dtype, arch: int, interp: bool) -> Tiles:
    """Tile shape and launch options per (query rows M = G*S, head dim, dtype, GPU arch).

    Checked for register spills on sm_80 and sm_90 by bench/gpu_compile.py
    (results in bench/results/gpu_compile.csv).
    """
    block_m = max(16, min(_utils.next_pow2(M), MAX_BLOCK_M))  # tl.dot needs M >= 16
    if interp:
        # The interpreter pays per block iteration, not per element: big key
        # blocks; fp32 everywhere (its half-precision arithmetic is wrong).
        return Tiles(block_m, 64, 4, 1, native=False, precision="ieee")
    half = dtype != torch.float32
    if half:
        # 64-row 16-bit tiles spilled on sm_80 (108-660 B) and at D=128 on sm_90;
        # every 32-row configuration compiled without spills. Above 32 query rows
        # (S >= 9 with G = 4) a second M tile re-reads K/V, from L2.
        block_m = min(block_m, MAX_BLOCK_M_HALF)
    # Per-thread registers grow with block_m * D (the fp32 accumulator, the
    # score tile and, on diagonal blocks, the count of non-finite values):
    # 8 warps from a [32, 128] / [64, 64] tile on, which 4 warps spilled.
    big = block_m * max(D, 64) >= 4096 or D > 64
    if half:
        # 16-bit K/V tiles of [64, 128] are 16 KB each: two pipeline stages fit
        # next to the scores on sm_80, three on sm_90.
        block_n = 64
        num_warps = 8 if big else 4
        num_stages = 2 if arch < 90 else 3
    else:
        # tf32x3 splits both operands into hi/lo parts (three tiles per dot):
        # a 32-key block and 8 warps at every shape.
        block_n = 32
        num_warps = 8
        num_stages = 2
    return Tiles(block_m, block_n, num_warps, num_stages, native=half, precision="ieee" if half else "tf32x3")


def _choose_splits(programs: int, T_max: int, device: torch.device) -> int:
    # Interpreter: programs run one after another, more splits only add work.
    if _utils.interpreting(device):
        return 1
    # GPU: enough programs for about two waves over the SMs, but never more
    # splits than T_max holds MIN_KEYS_PER_SPLIT-key chunks. Sized from T_max,
    # not the actual lengths, so no host read; the kernel divides the real
    # length and the splits past it return at once.
    wanted = triton.cdiv(2 * _utils.sm_count(device), programs)
    return max(1, min(wanted, triton.cdiv(T_max, MIN_KEYS_PER_SPLIT), MAX_SPLITS))


def draft_verify_attention(
    q: torch.Tensor,  # [B, S, Hq, D]
    k_cache: torch.Tensor,  # [B, Hkv, T_max, D], mutated
    v_cache: torch.Tensor,  # [B, Hkv, T_max, D], mutated
    k_new: torch.Tensor,  # [B, S, Hkv, D]
    v_new: torch.Tensor,  # [B, S, Hkv, D]
    cache_seqlens: torch.Tensor,  # int32 [B], any stride
    cos: torch.Tensor | None = None,  # fp32 [>= T_max, D/2]
    sin: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    *,
    num_splits: int | None = None,  # KV splits; None: occupancy heuristic
    block_n: int | None = None,  # key block; None: choose_tiles (tests force GPU-sized blocks)
    min_keys_per_split: int | None = None,  # None: MIN_KEYS_PER_SPLIT on a GPU, one block interpreted
) -> torch.Tensor:  # [B, S, Hq, D], q's dtype
    """Triton launcher; inputs are checked by layerskip_kernels.ops."""
    B, S, Hq, D = q.shape
    Hkv, T_max = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    out = torch.empty((B, S, Hq, D), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    for name, val in (("num_splits", num_splits), ("block_n", block_n), ("min_keys_per_split", min_keys_per_split)):
        if val is not None and (not isinstance(val, int) or val < 1):
            raise ValueError(f"{name} must be a positive int or None, got {val!r}")
    if block_n is not None and (block_n < 16 or block_n & (block_n - 1)):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")

    dev = q.device
    interp = _utils.interpreting(dev)
    M = G * S
    tiles = choose_tiles(M, D, q.dtype, _utils.gpu_arch(dev), interp)
    BLOCK_N = block_n or tiles.block_n
    BLOCK_M = tiles.block_m
    m_tiles = triton.cdiv(M, BLOCK_M)
    has_rope = cos is not None
    if has_rope:
        cos_t, sin_t = cos, sin
    else:  # never read when HAS_ROPE is False; any tensor serves as the pointer
        cos_t = sin_t = cache_seqlens
    c_strides = (cos_t.stride(0), cos_t.stride(-1), sin_t.stride(0), sin_t.stride(-1)) if has_rope else (0, 0, 0, 0)
    BLOCK_D = max(16, _utils.next_pow2(D))  # tl.dot needs K >= 16; D = 96 pads to 128
    stride_l = cache_seqlens.stride(0)

    if num_splits is None:
        num_splits = _choose_splits(B * Hkv * m_tiles, T_max, dev)
    split = num_splits > 1
    min_keys = min_keys_per_split or (BLOCK_N if interp else MIN_KEYS_PER_SPLIT)
    min_chunk = triton.cdiv(min_keys, BLOCK_N) * BLOCK_N
    if split:
        rows = B * S * Hq
        m_part = torch.empty((rows, num_splits), dtype=torch.float32, device=dev)
        l_part = torch.empty_like(m_part)
        acc_part = torch.empty((rows, num_splits, D), dtype=torch.float32, device=dev)
    else:
        m_part = l_part = acc_part = out  # never touched when SPLIT is False
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else float(softmax_scale)

    with _utils.device_guard(dev):
        _rope_cache_write_kernel[(S, B)](
            k_new, v_new, k_cache, v_cache, cache_seqlens, cos_t, sin_t, stride_l,
            *k_new.stride(), *v_new.stride(), *k_cache.stride(), *v_cache.stride(), *c_strides,
            S, Hkv, D, D // 2, T_max,
            HAS_ROPE=has_rope, BLOCK_H=_utils.next_pow2(Hkv), BLOCK_D=BLOCK_D,
        )
        _draft_verify_attention_kernel[(B * Hkv, m_tiles, num_splits)](
            q, k_cache, v_cache, cache_seqlens, cos_t, sin_t, out, m_part, l_part, acc_part, stride_l,
            *q.stride(), *k_cache.stride(), *v_cache.stride(), *c_strides,
            Hkv, S, G, D, D // 2, T_max, num_splits, scale * LOG2E,
            HAS_ROPE=has_rope, SPLIT=split, NATIVE=tiles.native, PRECISION=tiles.precision,
            MIN_CHUNK=min_chunk, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D,
            num_warps=tiles.num_warps, num_stages=tiles.num_stages,
        )
        if split:
            _merge_splits_kernel[(B * S * Hq,)](
                m_part, l_part, acc_part, out, D, num_splits,
                BLOCK_SPLITS=_utils.next_pow2(num_splits), BLOCK_D=BLOCK_D,
            )
    return out
