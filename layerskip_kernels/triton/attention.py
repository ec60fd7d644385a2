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

The reference (spec) is `layerskip_kernels.reference.draft_verify_attention`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._utils import interpreting, next_pow2, sm_count

# Rows of one M tile: beyond this, long prefills are tiled over several programs
# (an fp32 [64, 128] accumulator already fills a good share of the registers).
MAX_BLOCK_M = 64
# A KV split below this many keys costs more in launch and merge than it saves.
MIN_KEYS_PER_SPLIT = 256
MAX_SPLITS = 64
LOG2E = 1.4426950408889634


@triton.jit
def _rope_cache_write_kernel(
    k_new_ptr,  # [B, S, Hkv, D]
    v_new_ptr,  # [B, S, Hkv, D]
    k_cache_ptr,  # [B, Hkv, T_max, D]
    v_cache_ptr,  # [B, Hkv, T_max, D]
    seqlens_ptr,  # int32 [B]
    cos_ptr,  # fp32 [>= T_max, D/2]
    sin_ptr,
    stride_knb, stride_kns, stride_knh, stride_knd,
    stride_vnb, stride_vns, stride_vnh, stride_vnd,
    stride_kcb, stride_kch, stride_kct, stride_kcd,
    stride_vcb, stride_vch, stride_vct, stride_vcd,
    stride_ct, stride_cd, stride_st, stride_sd,
    HKV, D, D_HALF,
    HAS_ROPE: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # int64 indices: B * Hkv * T_max * D can exceed 2^31 elements. S rides on
    # grid axis 0, the only one not capped at 65535 (a long prefill).
    s = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    pos = tl.load(seqlens_ptr + b).to(tl.int64) + s
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < HKV) & (d < D)

    k_row = k_new_ptr + b * stride_knb + s * stride_kns + h * stride_knh
    k = tl.load(k_row + d * stride_knd, mask=mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
    if HAS_ROPE:
        # Rotate-half as one full-width expression, so D need not be a power of
        # two: element d pairs with d +- D/2, and cos/sin are indexed by d mod D/2.
        # x*c + (-x')*s rounds exactly like the reference's x1*c - x2*s.
        lo = d < D_HALF
        partner = tl.where(lo, d + D_HALF, d - D_HALF)
        j = tl.where(lo, d, d - D_HALF)
        kp = tl.load(k_row + partner * stride_knd, mask=mask, other=0.0)
        if UPCAST:
            kp = kp.to(tl.float32)
        c = tl.load(cos_ptr + pos * stride_ct + j * stride_cd, mask=d < D, other=0.0)
        sn = tl.load(sin_ptr + pos * stride_st + j * stride_sd, mask=d < D, other=0.0)
        k = k * c + tl.where(lo, -kp, kp) * sn
    # The only rounding of the rotated key: fp32 -> cache dtype, once.
    tl.store(
        k_cache_ptr + b * stride_kcb + h * stride_kch + pos * stride_kct + d * stride_kcd,
        k.to(k_cache_ptr.dtype.element_ty),
        mask=mask,
    )

    v = tl.load(v_new_ptr + b * stride_vnb + s * stride_vns + h * stride_vnh + d * stride_vnd, mask=mask, other=0.0)
    if UPCAST:
        v = v.to(tl.float32)
    tl.store(
        v_cache_ptr + b * stride_vcb + h * stride_vch + pos * stride_vct + d * stride_vcd,
        v.to(v_cache_ptr.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def _draft_verify_attention_kernel(
    q_ptr,  # [B, S, Hq, D], any strides
    k_cache_ptr,  # [B, Hkv, T_max, D], already holding the new keys
    v_cache_ptr,
    seqlens_ptr,  # int32 [B]
    cos_ptr,  # fp32 [>= T_max, D/2]
    sin_ptr,
    out_ptr,  # [B, S, Hq, D] contiguous, q's dtype (unused when SPLIT)
    m_part_ptr,  # fp32 [B, S, Hq, NUM_SPLITS]      (only when SPLIT)
    l_part_ptr,  # fp32 [B, S, Hq, NUM_SPLITS]
    acc_part_ptr,  # fp32 [B, S, Hq, NUM_SPLITS, D]
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_ct, stride_cd, stride_st, stride_sd,
    HKV, S, G, D, D_HALF, NUM_SPLITS,
    scale_log2,  # softmax_scale * log2(e): the softmax runs on exp2
    HAS_ROPE: tl.constexpr,
    SPLIT: tl.constexpr,
    UPCAST: tl.constexpr,
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
    L = tl.load(seqlens_ptr + b)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    s = rows // G
    h = kvh * G + rows % G
    row_ok = rows < S * G
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    qmask = row_ok[:, None] & d_ok[None, :]
    # Query s of row b attends keys 0 .. L + s (bottom-right-aligned causal mask).
    last_key = L + s

    q_row = q_ptr + b * stride_qb + s[:, None] * stride_qs + h[:, None] * stride_qh
    q = tl.load(q_row + d[None, :] * stride_qd, mask=qmask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    if HAS_ROPE:
        # Same full-width rotate-half as in _rope_cache_write_kernel.
        lo = d[None, :] < D_HALF
        partner = tl.where(lo, d[None, :] + D_HALF, d[None, :] - D_HALF)
        j = tl.where(lo, d[None, :], d[None, :] - D_HALF)
        qp = tl.load(q_row + partner * stride_qd, mask=qmask, other=0.0)
        if UPCAST:
            qp = qp.to(tl.float32)
        pos = last_key.to(tl.int64)[:, None]
        c = tl.load(cos_ptr + pos * stride_ct + j * stride_cd, mask=qmask, other=0.0)
        sn = tl.load(sin_ptr + pos * stride_st + j * stride_sd, mask=qmask, other=0.0)
        q = q * c + tl.where(lo, -qp, qp) * sn

    # Keys this tile needs end at its last query's position; the split divides
    # that range in BLOCK_N-aligned chunks (from the real length, so a short row
    # in a long cache does no empty work beyond its chunk bounds).
    s_last = tl.minimum((pid_m * BLOCK_M + BLOCK_M - 1) // G, S - 1)
    n_keys = L + s_last + 1
    chunk = tl.cdiv(tl.cdiv(n_keys, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, n_keys)

    # A finite initial max: a row whose keys are all masked in this block (or in
    # this whole split) keeps alpha = 1 and p = 0 instead of exp2(-inf + inf) = NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = k_cache_ptr + b * stride_kb + kvh * stride_kh
    v_base = v_cache_ptr + b * stride_vb + kvh * stride_vh
    for n0 in range(start, end, BLOCK_N):
        t = n0 + tl.arange(0, BLOCK_N)
        t_ok = t < end
        # Loads stop at the row's own length L + S: later positions may hold
        # anything (NaN included) and 0 * NaN would poison the output.
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
        if UPCAST:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        # ieee: fp32 dots on a GPU default to tf32, far outside fp32 tolerance.
        qk = tl.dot(q, kt, input_precision="ieee") * scale_log2
        allowed = (t[None, :] <= last_key[:, None]) & t_ok[None, :]
        qk = tl.where(allowed, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        m_i = m_new

    flat = (b * S + s.to(tl.int64)) * hq + h  # row index into [B, S, Hq]
    if SPLIT:
        part = flat * NUM_SPLITS + split
        tl.store(m_part_ptr + part, m_i, mask=row_ok)
        tl.store(l_part_ptr + part, l_i, mask=row_ok)
        tl.store(acc_part_ptr + part[:, None] * D + d[None, :], acc, mask=qmask)
    else:
        # Padded rows (never stored) may have l = 0; keep them finite anyway.
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
    m = tl.load(m_part_ptr + row * NUM_SPLITS + j, mask=j_ok, other=float("-inf"))
    l = tl.load(l_part_ptr + row * NUM_SPLITS + j, mask=j_ok, other=0.0)
    # Split 0 always holds key 0, so m_max is a real score and empty splits
    # (m = -1e30, l = 0) get weight 0.
    m_max = tl.max(m, 0)
    w = tl.exp2(m - m_max)
    l_tot = tl.sum(w * l, 0)
    acc = tl.load(
        acc_part_ptr + (row * NUM_SPLITS + j[:, None]) * D + d[None, :],
        mask=j_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    out = tl.sum(acc * w[:, None], 0) / l_tot
    tl.store(out_ptr + row * D + d, out.to(out_ptr.dtype.element_ty), mask=d_ok)


def _choose_splits(programs: int, T_max: int, device: torch.device) -> int:
    # Interpreter: programs run one after another, more splits only add work.
    if interpreting(device):
        return 1
    # GPU: enough programs for about two waves over the SMs, but never splits of
    # fewer than MIN_KEYS_PER_SPLIT keys. Sized from T_max, not the actual
    # lengths, so no host sync (the kernel divides the real length evenly).
    wanted = triton.cdiv(2 * sm_count(device), programs)
    return max(1, min(wanted, triton.cdiv(T_max, MIN_KEYS_PER_SPLIT), MAX_SPLITS))


def draft_verify_attention(
    q: torch.Tensor,  # [B, S, Hq, D]
    k_cache: torch.Tensor,  # [B, Hkv, T_max, D], mutated
    v_cache: torch.Tensor,  # [B, Hkv, T_max, D], mutated
    k_new: torch.Tensor,  # [B, S, Hkv, D]
    v_new: torch.Tensor,  # [B, S, Hkv, D]
    cache_seqlens: torch.Tensor,  # int32 [B]
    cos: torch.Tensor | None = None,  # fp32 [>= T_max, D/2]
    sin: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    *,
    num_splits: int | None = None,  # KV splits; None: occupancy heuristic
) -> torch.Tensor:  # [B, S, Hq, D], q's dtype
    """Triton launcher; inputs are checked by layerskip_kernels.ops."""
    B, S, Hq, D = q.shape
    Hkv, T_max = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    out = torch.empty((B, S, Hq, D), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"num_splits must be a positive int or None, got {num_splits!r}")

    interp = interpreting(q.device)
    # fp16/bf16 tiles become fp32 right after their loads: the interpreter gets
    # half-precision arithmetic wrong, and on a GPU fp32 math keeps parity with
    # the fp32 reference (decode attention is bandwidth bound, the fp32 dots
    # cost little). fp32 inputs need no conversion.
    upcast = q.dtype != torch.float32
    has_rope = cos is not None
    if has_rope:
        cos_t, sin_t = cos, sin
    else:  # never read when HAS_ROPE is False; any tensor serves as the pointer
        cos_t = sin_t = cache_seqlens
    c_strides = (cos_t.stride(0), cos_t.stride(-1), sin_t.stride(0), sin_t.stride(-1)) if has_rope else (0, 0, 0, 0)
    BLOCK_D = max(16, next_pow2(D))  # tl.dot needs K >= 16; D = 96 pads to 128
    D_HALF = D // 2

    _rope_cache_write_kernel[(S, B)](
        k_new, v_new, k_cache, v_cache, cache_seqlens, cos_t, sin_t,
        *k_new.stride(), *v_new.stride(), *k_cache.stride(), *v_cache.stride(), *c_strides,
        Hkv, D, D_HALF,
        HAS_ROPE=has_rope, UPCAST=upcast, BLOCK_H=next_pow2(Hkv), BLOCK_D=BLOCK_D,
    )

    M = G * S
    BLOCK_M = max(16, min(next_pow2(M), MAX_BLOCK_M))  # tl.dot needs M >= 16
    m_tiles = triton.cdiv(M, BLOCK_M)
    # Large key blocks under the interpreter (its cost is per block iteration);
    # on a GPU smaller ones for wide heads keep the fp32 K/V tiles in registers.
    BLOCK_N = 64 if interp or D <= 64 else 32
    if num_splits is None:
        num_splits = _choose_splits(B * Hkv * m_tiles, T_max, q.device)
    split = num_splits > 1
    if split:
        rows = B * S * Hq
        m_part = torch.empty((rows, num_splits), dtype=torch.float32, device=q.device)
        l_part = torch.empty_like(m_part)
        acc_part = torch.empty((rows, num_splits, D), dtype=torch.float32, device=q.device)
    else:
        m_part = l_part = acc_part = out  # never touched when SPLIT is False
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else float(softmax_scale)

    _draft_verify_attention_kernel[(B * Hkv, m_tiles, num_splits)](
        q, k_cache, v_cache, cache_seqlens, cos_t, sin_t, out, m_part, l_part, acc_part,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *c_strides,
        Hkv, S, G, D, D_HALF, num_splits, scale * LOG2E,
        HAS_ROPE=has_rope, SPLIT=split, UPCAST=upcast,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D,
        num_warps=4,
    )
    if split:
        _merge_splits_kernel[(B * S * Hq,)](
            m_part, l_part, acc_part, out, D, num_splits,
            BLOCK_SPLITS=next_pow2(num_splits), BLOCK_D=BLOCK_D,
        )
    return out
