"""Pure-PyTorch reference of every op: the executable spec.

Every backend (cpu, triton, cuda) is tested against these functions. They are
written for clarity, not speed, but stay vectorized so that the `torch` backend
is a fair baseline in bench/. They assume checked inputs: the checks live in
layerskip_kernels/ops.py (and csrc/checks.h for the compiled ops).

Random numbers of verify_sampling (every backend reproduces them bit for bit)
---------------------------------------------------------------------------
Philox4x32-10 (Salmon et al. 2011; Random123's constants and round function),
key = (seed mod 2^32, (seed mod 2^64) >> 32), counter = (c0, c1, c2, c3):

    accept coin of draft position i of row b:   (0,      2*i + 1, b, offset), word 0
    race uniform of vocab id v at position i:   (v // 4, 2*i,     b, offset), word v % 4

A 32-bit word x becomes u = ((x >> 9) + 0.5) * 2^-23, exact in fp32 and inside
[2^-24, 1 - 2^-24] (never 0 or 1). Position i runs over 0..k: the race at i < k
samples the residual after a rejection there, the race at i = k the bonus token.

Per-row draft lengths: with draft_lens (int32 [B]), row b drafted only
d = draft_lens[b] tokens. The accept coins of positions i < d are the ones
above (same counters); positions i >= d are never drafted, so acceptance stops
at d at the latest. The race that emits row b's token runs at its position
a = num_accepted[b] with that position's counters (2*a): the residual race when
a < d, the bonus race over p when a = d (counters 2*d, not 2*k). Without
draft_lens (or with d = k everywhere) this is exactly the layout above. Entries
of draft_tokens / draft_probs at positions >= d, and of target_* past position
d, never affect the output (they may hold anything, out-of-range ids and NaN
included). Lengths outside [0, k] act as if
clamped into it (the checks of ops.py and the CPU op refuse them; the CUDA and
Triton kernels clamp on the device, with the same result as here).

Draft token d_i is accepted iff q_i(d_i) > 0 and u * q_i(d_i) < p_i(d_i), evaluated
in double (exact, since u and q have 24-bit significands): probability min(1, p/q).

The exponential race draws from weights r_v >= 0 as argmax_v r_v / E_v with
E_v = -log(u_v); ties go to the lowest id and r_v = 0 never wins. The keys are
computed in double so that all backends order candidates the same way. The
residual is r = max(p - q, 0) in fp32; if it is zero everywhere the race runs on
p itself.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "apply_rope",
    "draft_verify_attention",
    "verify_greedy",
    "verify_sampling",
    "linear_rows",
    "linear_rows_int8",
    "philox4x32_10",
    "philox_uniform",
    "sampling_uniforms",
]


# --------------------------------------------------------------------------- attention


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    # fp32 accumulation; fp64 inputs stay fp64 (tests compute a "truth" that way).
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE in fp32 (fp64 for fp64 x). x: [..., D]; cos, sin: broadcastable to [..., D/2]."""
    x = x.to(_acc_dtype(x))
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def draft_verify_attention(
    q: torch.Tensor,  # [B, S, Hq, D]
    k_cache: torch.Tensor,  # [B, Hkv, T_max, D], written at cache_seqlens[b] + s
    v_cache: torch.Tensor,  # [B, Hkv, T_max, D]
    k_new: torch.Tensor,  # [B, S, Hkv, D]
    v_new: torch.Tensor,  # [B, S, Hkv, D]
    cache_seqlens: torch.Tensor,  # int32 [B]
    cos: torch.Tensor | None = None,  # [>= T_max, D/2] fp32
    sin: torch.Tensor | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:  # [B, S, Hq, D], dtype of q
    B, S, Hq, D = q.shape
    Hkv = k_cache.shape[1]
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else softmax_scale
    dev = q.device
    pos = cache_seqlens.long()[:, None] + torch.arange(S, device=dev)  # [B, S]

    acc = _acc_dtype(q)
    qf = q.to(acc)
    kf = k_new.to(acc)
    if cos is not None:
        c, s = cos[pos][:, :, None, :], sin[pos][:, :, None, :]  # [B, S, 1, D/2]
        qf = apply_rope(qf, c, s)
        kf = apply_rope(kf, c, s)

    # Cache write: k_cache[b, h, pos[b, s]] = k_new[b, s, h].
    bi = torch.arange(B, device=dev)[:, None, None]
    hi = torch.arange(Hkv, device=dev)[None, None, :]
    k_cache[bi, hi, pos[:, :, None]] = kf.to(k_cache.dtype)
    v_cache[bi, hi, pos[:, :, None]] = v_new.to(v_cache.dtype)

    # Keys 0 .. T_used-1 cover every row; one host sync to size the slice (a
    # traced graph cannot size a tensor by data: it reads the whole cache).
    T_used = k_cache.shape[2] if torch.compiler.is_compiling() or B == 0 else int(pos.max()) + 1
    keys = k_cache[:, :, :T_used].to(acc)  # [B, Hkv, T, D]
    vals = v_cache[:, :, :T_used].to(acc)
    t = torch.arange(T_used, device=dev)
    allowed = t[None, None, :] <= pos[:, :, None]  # [B, S, T] bottom-right-aligned causal
    # Positions past a row's own length may hold anything (stale drafts, other
    # rows' garbage, even NaN): zero them so 0 * NaN cannot leak into the output.
    row_valid = t[None, :] < (cache_seqlens.long()[:, None] + S)  # [B, T]
    vals = torch.where(row_valid[:, None, :, None], vals, 0.0)
    # The new keys are visible to some queries of the row and masked for the
    # earlier ones, where 0 * NaN (or 0 * inf) would leak too. Their non-finite
    # values are zeroed here and added back below for the queries that see them.
    new_block = (t[None, :] >= cache_seqlens.long()[:, None]) & row_valid  # [B, T]
    vals = torch.where(new_block[:, None, :, None] & ~torch.isfinite(vals), 0.0, vals)

    group = Hq // Hkv
    qg = qf.view(B, S, Hkv, group, D).permute(0, 2, 3, 1, 4)  # [B, Hkv, G, S, D]
    scores = torch.einsum("bhgsd,bhtd->bhgst", qg, keys) * scale  # [B, Hkv, G, S, T]
    scores = scores.masked_fill(~allowed[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bhgst,bhtd->bhgsd", probs, vals)  # [B, Hkv, G, S, D]
    # Query s sees new values 0..s: the non-finite ones among them give what
    # IEEE arithmetic gives (NaN, or +-inf, or NaN when both infinities meet).
    vn = v_new.to(v_cache.dtype).to(acc).permute(0, 2, 1, 3)  # [B, Hkv, S, D]
    seen_nan, seen_pos, seen_neg = ((m.cumsum(dim=2) > 0) for m in (vn.isnan(), vn == math.inf, vn == -math.inf))
    extra = torch.where(seen_pos, math.inf, torch.where(seen_neg, -math.inf, 0.0))
    extra = torch.where(seen_nan | (seen_pos & seen_neg), math.nan, extra).to(acc)
    out = out + extra[:, :, None]  # [B, Hkv, G, S, D]
    return out.permute(0, 3, 1, 2, 4).reshape(B, S, Hq, D).to(q.dtype).contiguous()


# --------------------------------------------------------------------------- acceptance


def _accept_prefix(matches: torch.Tensor) -> torch.Tensor:
    """matches: bool [B, k] -> int32 [B] length of the leading run of True."""
    return matches.to(torch.int32).cumprod(dim=1).sum(dim=1, dtype=torch.int32)


def _emit(draft_tokens: torch.Tensor, num_accepted: torch.Tensor, last_token: torch.Tensor):
    """out_tokens [B, k+1]: drafts before num_accepted, last_token at it, -1 after."""
    B, k = draft_tokens.shape
    idx = torch.arange(k + 1, device=draft_tokens.device)[None, :]
    a = num_accepted.long()[:, None]
    padded = torch.cat([draft_tokens, draft_tokens.new_full((B, 1), -1)], dim=1)
    out = torch.where(idx < a, padded, torch.full_like(padded, -1))
    return torch.where(idx == a, last_token.long()[:, None], out)


def _drafted(draft_lens: torch.Tensor | None, positions: int, device) -> torch.Tensor | None:
    """bool [B, positions]: position i of row b was drafted (i < draft_lens[b]); None without lengths."""
    if draft_lens is None:
        return None
    return torch.arange(positions, device=device)[None, :] < draft_lens.to(device=device, dtype=torch.int64)[:, None]


def verify_greedy(
    draft_tokens: torch.Tensor,  # int64 [B, k]
    target_logits: torch.Tensor,  # [B, k+1, V]
    draft_lens: torch.Tensor | None = None,  # int32 [B] in 0..k; None: k for every row
) -> tuple[torch.Tensor, torch.Tensor]:  # int32 [B], int64 [B, k+1]
    k = draft_tokens.shape[1]
    target = target_logits.argmax(dim=-1)  # [B, k+1], ties to the lowest index
    matches = draft_tokens == target[:, :k]
    drafted = _drafted(draft_lens, k, draft_tokens.device)
    if drafted is not None:
        matches &= drafted  # acceptance stops at the row's draft length
    num_accepted = _accept_prefix(matches)
    last = target.gather(1, num_accepted.long()[:, None])[:, 0]
    return num_accepted, _emit(draft_tokens, num_accepted, last)


_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def _mulhilo(m: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # int64 cannot hold a 64-bit product: multiply by 16-bit halves of x.
    lo_part = m * (x & 0xFFFF)  # < 2^48
    hi_part = m * (x >> 16)  # < 2^48
    low = lo_part + ((hi_part & 0xFFFF) << 16)  # < 2^49
    lo = low & _MASK32
    hi = ((hi_part >> 16) + (low >> 32)) & _MASK32
    return hi, lo


def philox4x32_10(counter, key) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 on int64 tensors holding uint32 values.

    counter: 4 tensors (or ints) broadcastable together; key: 2 ints.
    Returns the 4 output words as int64 tensors in [0, 2^32).
    """
    # Python ints become tensors on the device of the tensor words (a CPU
    # tensor broadcast against a CUDA one would be a device mismatch).
    device = next((c.device for c in counter if isinstance(c, torch.Tensor)), None)
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64, device=device) for c in counter)
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    for r in range(10):
        if r:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox_uniform(word: torch.Tensor) -> torch.Tensor:
    """uint32 word (int64 tensor) -> fp32 uniform in [2^-24, 1 - 2^-24]."""
    return ((word >> 9).to(torch.float32) + 0.5) * (2.0**-23)


def _seed_key(seed: int) -> tuple[int, int]:
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    return s & _MASK32, s >> 32


def sampling_uniforms(B: int, k: int, V: int, seed: int, offset: int, device=None):
    """The random numbers of verify_sampling.

    Returns (coins fp32 [B, k], race fp32 [B, k+1, V]) laid out as in the module
    docstring.
    """
    key = _seed_key(seed)
    b = torch.arange(B, device=device)
    i = torch.arange(k, device=device)
    coins = philox_uniform(philox4x32_10((0, 2 * i[None, :] + 1, b[:, None], offset), key)[0])
    groups = (V + 3) // 4
    g = torch.arange(groups, device=device)
    pos = torch.arange(k + 1, device=device)
    words = philox4x32_10((g[None, None, :], 2 * pos[None, :, None], b[:, None, None], offset), key)
    race = torch.stack(words, dim=-1).reshape(B, k + 1, groups * 4)[..., :V]
    return coins, philox_uniform(race)


def _race(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """argmax_v weights_v / -log(u_v) in double; zero weights never win. [..., V] -> [...]."""
    keys = weights.double() / -torch.log(uniforms.double())
    keys = torch.where(weights > 0, keys, torch.full_like(keys, -1.0))
    return keys.argmax(dim=-1)  # first maximum: ties to the lowest id


def verify_sampling(
    draft_tokens: torch.Tensor,  # int64 [B, k]
    draft_probs: torch.Tensor,  # fp32 [B, k, V]
    target_probs: torch.Tensor,  # fp32 [B, k+1, V]
    seed: int,
    offset: int,
    draft_lens: torch.Tensor | None = None,  # int32 [B] in 0..k; None: k for every row
) -> tuple[torch.Tensor, torch.Tensor]:  # int32 [B], int64 [B, k+1]
    B, k = draft_tokens.shape
    V = target_probs.shape[-1]
    coins, race_u = sampling_uniforms(B, k, V, seed, offset, device=target_probs.device)
    drafted = _drafted(draft_lens, k + 1, target_probs.device)  # [B, k+1]

    d = draft_tokens[:, :, None]
    if drafted is not None:
        d = torch.where(drafted[:, :k, None], d, 0)  # ids past a row's length may be anything
    p_d = target_probs[:, :k].gather(2, d)[..., 0]  # [B, k]
    q_d = draft_probs.gather(2, d)[..., 0]
    accepted = (q_d > 0) & (coins.double() * q_d.double() < p_d.double())
    if drafted is not None:
        accepted &= drafted[:, :k]
    num_accepted = _accept_prefix(accepted)

    # Weights of the race at every position: the residual at i < k, p itself at k.
    residual = torch.clamp(target_probs[:, :k] - draft_probs, min=0.0)  # [B, k, V]
    empty = ~(residual > 0).any(dim=-1, keepdim=True)
    residual = torch.where(empty, target_probs[:, :k], residual)
    weights = torch.cat([residual, target_probs[:, k:]], dim=1)  # [B, k+1, V]
    if drafted is not None:
        # A row's bonus race runs at its own length d, over p.
        weights = torch.where(drafted[..., None], weights, target_probs)
    sampled = _race(weights, race_u)  # [B, k+1]
    last = sampled.gather(1, num_accepted.long()[:, None])[:, 0]
    return num_accepted, _emit(draft_tokens, num_accepted, last)


# --------------------------------------------------------------------------- linear rows


def linear_rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight^T with fp32 accumulation, in x's dtype. x: [..., K]; weight: [N, K] -> [..., N].

    The product of a decode step's few rows with one weight matrix (the CPU kernel
    exists because ATen's bf16 GEMM has a large fixed cost per call there).
    """
    acc = _acc_dtype(x)
    return (x.to(acc) @ weight.to(acc).T).to(x.dtype).contiguous()


def linear_rows_int8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(x @ weight^T) * scale with fp32 accumulation, in x's dtype. x: [..., K];
    weight: int8 [N, K]; scale: fp32 [N] (one per weight row) -> [..., N].

    A weight-only int8 product: the weights are integers (exact in every float
    dtype), each row's sum is scaled once. The draft's quantized LM head
    (generation/draft_head.py) runs it.
    """
    acc = _acc_dtype(x)
    return ((x.to(acc) @ weight.to(acc).T) * scale.to(acc)).to(x.dtype).contiguous()

