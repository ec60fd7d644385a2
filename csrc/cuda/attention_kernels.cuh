// Kernels of draft_verify_attention and their launch plan (see attention.cu
// for the launches). A header so that a host-side emulation can run the same
// code; only attention.cu includes it in the build.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "../common/macros.h"
#include "../common/online_softmax.h"
#include "../common/rope.h"
#include "utils.cuh"

namespace layerskip::cuda::attention {

constexpr int kThreads = 128;  // 4 warps per attention CTA
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 16;                    // query rows per CTA
constexpr int kRowsPerWarp = kRows / kWarps;  // row m belongs to warp m % kWarps
constexpr int kMaxSplits = 64;
constexpr int kWriteThreads = 256;  // cache_write_kernel

// Keys per shared-memory tile. K and V are kept in fp32 in shared memory (one
// conversion per element per CTA instead of one per use); with the query tile
// and P this stays under the 48 KB of static shared memory for every D.
template <int D>
constexpr int block_n() {
  return D <= 64 ? 64 : 32;
}

// Same switch style as LS_BOOL_SWITCH: the supported head dims become a
// compile-time constant; the caller rejects the others before any launch.
#define LS_HEAD_DIM_SWITCH(head_dim, NAME, ...) \
  [&] {                                         \
    switch (head_dim) {                         \
      case 32: {                                \
        constexpr int NAME = 32;                \
        return __VA_ARGS__();                   \
      }                                         \
      case 64: {                                \
        constexpr int NAME = 64;                \
        return __VA_ARGS__();                   \
      }                                         \
      case 96: {                                \
        constexpr int NAME = 96;                \
        return __VA_ARGS__();                   \
      }                                         \
      default: {                                \
        constexpr int NAME = 128;               \
        return __VA_ARGS__();                   \
      }                                         \
    }                                           \
  }()

inline bool supported_head_dim(int64_t D) { return D == 32 || D == 64 || D == 96 || D == 128; }

// A row whose cache_seqlens value would put a write outside [0, T_max).
__device__ __forceinline__ bool row_in_bounds(int seqlen, int S, int T_max) {
  return seqlen >= 0 && static_cast<int64_t>(seqlen) + S <= T_max;
}

// --------------------------------------------------------------------------- cache write

struct WriteParams {
  const void* k_new;  // [B, S, Hkv, D]
  const void* v_new;
  void* k_cache;  // [B, Hkv, T_max, D], unit stride in D
  void* v_cache;
  const int32_t* seqlens;
  const float* cos;  // [>= T_max, D/2] or null
  const float* sin;
  int64_t kn_s[4], vn_s[4];  // strides of k_new / v_new
  int64_t kc_s[3], vc_s[3];  // strides of the caches over (B, Hkv, T_max)
  int64_t cos_s[2], sin_s[2];
  int64_t total;  // B * S * Hkv * D/2 rotation pairs
  int S, Hkv, D, T_max;
};

// One thread per (b, s, h, i): the pair (i, i + D/2) of k (one RoPE rotation)
// and the same two elements of v.
template <typename T, bool kRope>
__global__ void __launch_bounds__(kWriteThreads) cache_write_kernel(const WriteParams p) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.total) return;
  const int half = p.D / 2;
  const int i = static_cast<int>(idx % half);
  int64_t rest = idx / half;
  const int h = static_cast<int>(rest % p.Hkv);
  rest /= p.Hkv;
  const int s = static_cast<int>(rest % p.S);
  const int64_t b = rest / p.S;
  const int seqlen = p.seqlens[b];
  if (!row_in_bounds(seqlen, p.S, p.T_max)) return;
  const int64_t pos = seqlen + s;

  const T* kn = static_cast<const T*>(p.k_new) + b * p.kn_s[0] + s * p.kn_s[1] + h * p.kn_s[2];
  const T* vn = static_cast<const T*>(p.v_new) + b * p.vn_s[0] + s * p.vn_s[1] + h * p.vn_s[2];
  T* kc = static_cast<T*>(p.k_cache) + b * p.kc_s[0] + h * p.kc_s[1] + pos * p.kc_s[2];
  T* vc = static_cast<T*>(p.v_cache) + b * p.vc_s[0] + h * p.vc_s[1] + pos * p.vc_s[2];

  float x1 = static_cast<float>(kn[i * p.kn_s[3]]);
  float x2 = static_cast<float>(kn[(i + half) * p.kn_s[3]]);
  if constexpr (kRope) {
    const RotatedPair r = rope_rotate_pair(x1, x2, p.cos[pos * p.cos_s[0] + i * p.cos_s[1]],
                                           p.sin[pos * p.sin_s[0] + i * p.sin_s[1]]);
    x1 = r.lo;
    x2 = r.hi;
  }
  kc[i] = static_cast<T>(x1);
  kc[i + half] = static_cast<T>(x2);
  // v_new already has the cache dtype: a plain copy is the rounding-free write.
  vc[i] = vn[i * p.vn_s[3]];
  vc[i + half] = vn[(i + half) * p.vn_s[3]];
}

// --------------------------------------------------------------------------- attention

struct AttnParams {
  const void* q;  // [B, S, Hq, D], any strides
  const void* k_cache;
  const void* v_cache;
  void* out;        // [B, S, Hq, D] contiguous, q's dtype
  float* ws_acc;    // [B, Hkv, G*S, splits, D] unnormalized partial outputs
  float* ws_ml;     // [B, Hkv, G*S, splits, 2] partial (m, l)
  const int32_t* seqlens;
  const float* cos;  // null without RoPE
  const float* sin;
  int64_t q_s[4];
  int64_t kc_s[3], vc_s[3];
  int64_t cos_s[2], sin_s[2];
  int S, Hq, Hkv, G, T_max;
  int q_tiles, splits;
  float scale;
  bool kv_vec;  // caches 16-byte aligned at every (b, h, t): vector loads allowed
};

// 16 bytes of K or V starting at p (VEC = 16 / sizeof(T) elements), through a
// vector load when the cache layout allows it.
template <typename T>
__device__ __forceinline__ uint4 load_chunk(const T* p, bool vec) {
  if (vec) return __ldg(reinterpret_cast<const uint4*>(p));
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int j = 0; j < static_cast<int>(16 / sizeof(T)); ++j) e[j] = p[j];
  return raw;
}

template <typename T>
__device__ __forceinline__ void store_chunk_fp32(float* dst, const uint4& raw) {
  constexpr int VEC = 16 / sizeof(T);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int j = 0; j < VEC; j += 4)
    *reinterpret_cast<float4*>(dst + j) =
        make_float4(static_cast<float>(e[j]), static_cast<float>(e[j + 1]),
                    static_cast<float>(e[j + 2]), static_cast<float>(e[j + 3]));
}

// Shared-memory tile geometry of one head dim.
template <int D>
struct Tile {
  static constexpr int N = block_n<D>();
  static constexpr int KS = D + 4;  // padded K row: the float4 reads of 8 lanes hit distinct banks
  static constexpr int PS = N + 1;  // padded P row: lanes of one warp read up to 4 rows of P
  static constexpr int DG = D / 4;  // float4 column groups of the output
  static constexpr int ITEMS = kRows * DG / kThreads;  // (row, column group) items per thread
  static_assert(kRows * DG % kThreads == 0, "output items must divide over the CTA");
  static_assert(N % 32 == 0, "one key per lane per 32");
};

// One K/V tile (keys [t0, t0 + N) of one (b, h)) in flight through registers:
// load() issues the global reads, store() converts to fp32 shared memory. Keys
// >= key_end are zero and never read (past a row's length they may hold NaN).
template <typename T, int D>
struct KVLoader {
  static constexpr int VEC = 16 / sizeof(T);
  static constexpr int CPR = D / VEC;  // 16-byte chunks per key row
  static constexpr int CHUNKS = Tile<D>::N * CPR / kThreads;
  static_assert(Tile<D>::N * CPR % kThreads == 0, "tile chunks must divide over the CTA");

  uint4 k[CHUNKS], v[CHUNKS];

  __device__ __forceinline__ void load(const T* kc, const T* vc, const AttnParams& p, int t0,
                                       int key_end, int tid) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int idx = tid + c * kThreads;
      const int key = t0 + idx / CPR;
      const int col = (idx % CPR) * VEC;
      if (key < key_end) {
        k[c] = load_chunk(kc + key * p.kc_s[2] + col, p.kv_vec);
        v[c] = load_chunk(vc + key * p.vc_s[2] + col, p.kv_vec);
      } else {
        k[c] = make_uint4(0u, 0u, 0u, 0u);  // all-zero bits are 0.0 in every dtype
        v[c] = make_uint4(0u, 0u, 0u, 0u);
      }
    }
  }

  __device__ __forceinline__ void store(float* Ks, float* Vs, int tid) const {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int idx = tid + c * kThreads;
      const int n = idx / CPR;
      const int col = (idx % CPR) * VEC;
      store_chunk_fp32<T>(Ks + n * Tile<D>::KS + col, k[c]);
      store_chunk_fp32<T>(Vs + n * D + col, v[c]);
    }
  }
};

// Scores of the NR rows this warp owns (rows warp + kWarps * i) against the
// tile's keys (lane + 32 j), then the online-softmax update of those rows:
// P (exp(score - new max)) goes to shared memory with the factor by which the
// rows' accumulators must be rescaled.
template <int NR, int D>
__device__ __forceinline__ void qk_softmax(const float* Qs, const float* Ks, float* Ps,
                                           float* row_scale, SoftmaxState (&st)[kRowsPerWarp],
                                           const int (&limit)[kRowsPerWarp], int warp, int lane,
                                           int t0, float scale) {
  using Tl = Tile<D>;
  constexpr int J = Tl::N / 32;
  float dot[NR][J];
#pragma unroll
  for (int i = 0; i < NR; ++i)
#pragma unroll
    for (int j = 0; j < J; ++j) dot[i][j] = 0.f;

#pragma unroll 4
  for (int d = 0; d < D; d += 4) {
    float4 kv[J];
#pragma unroll
    for (int j = 0; j < J; ++j)
      kv[j] = *reinterpret_cast<const float4*>(Ks + (lane + 32 * j) * Tl::KS + d);
#pragma unroll
    for (int i = 0; i < NR; ++i) {
      const float4 qv = *reinterpret_cast<const float4*>(Qs + (warp + kWarps * i) * D + d);
#pragma unroll
      for (int j = 0; j < J; ++j) {
        dot[i][j] = fmaf(qv.x, kv[j].x, dot[i][j]);
        dot[i][j] = fmaf(qv.y, kv[j].y, dot[i][j]);
        dot[i][j] = fmaf(qv.z, kv[j].z, dot[i][j]);
        dot[i][j] = fmaf(qv.w, kv[j].w, dot[i][j]);
      }
    }
  }

#pragma unroll
  for (int i = 0; i < NR; ++i) {
    const int m = warp + kWarps * i;
    float s[J];
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      s[j] = t0 + lane + 32 * j < limit[i] ? dot[i][j] * scale : -INFINITY;
      tile_max = fmaxf(tile_max, s[j]);
    }
    tile_max = warp_max(tile_max);
    const float m_new = fmaxf(st[i].m, tile_max);
    const float rescale = softmax_rescale(st[i].m, m_new);
    float p_sum = 0.f;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      // Masked keys: exactly 0, also when the whole row is masked so far (m_new = -inf).
      const float pj = s[j] == -INFINITY ? 0.f : expf(s[j] - m_new);
      Ps[m * Tl::PS + lane + 32 * j] = pj;
      p_sum += pj;
    }
    p_sum = warp_sum(p_sum);
    st[i].l = st[i].l * rescale + p_sum;
    st[i].m = m_new;
    if (lane == 0) row_scale[m] = rescale;
  }
}

// acc += P @ V for the first NI output items of this thread. Item i is
// (row, float4 column group) number tid + kThreads * i in row-major order, so
// the first NI items cover rows 0 .. NI * kThreads / DG - 1: tiles with few
// query rows (a draft step) skip the rest.
template <int NI, int D>
__device__ __forceinline__ void pv_accumulate(const float* Ps, const float* Vs,
                                              const float* row_scale,
                                              float (&acc)[Tile<D>::ITEMS][4], int tid) {
  using Tl = Tile<D>;
  // With kThreads a multiple of DG, every item of a thread has the same
  // column group and one V read serves all of them.
  constexpr bool kSameCol = kThreads % Tl::DG == 0;
  int row[NI], col[NI];
#pragma unroll
  for (int i = 0; i < NI; ++i) {
    row[i] = (tid + kThreads * i) / Tl::DG;
    col[i] = (tid + kThreads * i) % Tl::DG * 4;
    const float r = row_scale[row[i]];
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[i][e] *= r;
  }
#pragma unroll 4
  for (int n = 0; n < Tl::N; ++n) {
#pragma unroll
    for (int i = 0; i < NI; ++i) {
      const float4 v = *reinterpret_cast<const float4*>(Vs + n * D + col[kSameCol ? 0 : i]);
      const float pn = Ps[row[i] * Tl::PS + n];
      acc[i][0] = fmaf(pn, v.x, acc[i][0]);
      acc[i][1] = fmaf(pn, v.y, acc[i][1]);
      acc[i][2] = fmaf(pn, v.z, acc[i][2]);
      acc[i][3] = fmaf(pn, v.w, acc[i][3]);
    }
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_split_kernel(const AttnParams p) {
  using Tl = Tile<D>;
  constexpr int N = Tl::N;
  constexpr int HALF = D / 2;
  // 42.8 KB at D = 128 (the largest): under the 48 KB static limit.
  __shared__ __align__(16) float Qs[kRows * D];
  __shared__ __align__(16) float Ks[N * Tl::KS];
  __shared__ __align__(16) float Vs[N * D];
  __shared__ float Ps[kRows * Tl::PS];
  __shared__ float row_scale[kRows];
  __shared__ float row_m[kRows];
  __shared__ float row_l[kRows];

  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32;
  // Consecutive CTAs: query tiles of the same (b, h, split) read the same keys
  // at about the same time, so the second read comes from L2.
  int64_t cta = blockIdx.x;
  const int qt = static_cast<int>(cta % p.q_tiles);
  cta /= p.q_tiles;
  const int split = static_cast<int>(cta % p.splits);
  cta /= p.splits;
  const int h = static_cast<int>(cta % p.Hkv);
  const int64_t b = cta / p.Hkv;

  const int GS = p.G * p.S;
  const int r0 = qt * kRows;
  const int rows = min(kRows, GS - r0);
  const int seqlen = p.seqlens[b];
  const bool valid = row_in_bounds(seqlen, p.S, p.T_max);
  // Keys seen by the tile's last (latest) query row; split into p.splits
  // ranges here on the device, so short rows do not leave all work to split 0.
  const int kv_len = valid ? seqlen + (r0 + rows - 1) / p.G + 1 : 0;
  const int split_len = ceil_div(ceil_div(kv_len, N), p.splits) * N;
  const int key_begin = static_cast<int>(
      min(static_cast<int64_t>(split) * split_len, static_cast<int64_t>(kv_len)));
  const int key_end = static_cast<int>(
      min(static_cast<int64_t>(key_begin) + split_len, static_cast<int64_t>(kv_len)));

  // Query tile in fp32, RoPE applied (not rounded back to q's dtype, as in the
  // reference). The RoPE branch is uniform and outside the key loop, so it
  // stays a runtime flag instead of doubling the kernel instantiations.
  const T* q = static_cast<const T*>(p.q);
  for (int e = tid; e < kRows * HALF; e += kThreads) {
    const int m = e / HALF, i = e % HALF;
    float x1 = 0.f, x2 = 0.f;
    if (m < rows && valid) {
      const int r = r0 + m;
      const int s = r / p.G;
      const int hq = h * p.G + r % p.G;
      const T* qrow = q + b * p.q_s[0] + s * p.q_s[1] + hq * p.q_s[2];
      x1 = static_cast<float>(qrow[i * p.q_s[3]]);
      x2 = static_cast<float>(qrow[(i + HALF) * p.q_s[3]]);
      if (p.cos != nullptr) {
        const int64_t pos = seqlen + s;
        const RotatedPair rot = rope_rotate_pair(x1, x2, p.cos[pos * p.cos_s[0] + i * p.cos_s[1]],
                                                 p.sin[pos * p.sin_s[0] + i * p.sin_s[1]]);
        x1 = rot.lo;
        x2 = rot.hi;
      }
    }
    Qs[m * D + i] = x1;
    Qs[m * D + i + HALF] = x2;
  }
  // Rows past `rows` are never written by qk_softmax: zero P and unit scale
  // keep the accumulators of the items that still cover them at exactly 0.
  for (int e = tid; e < kRows * Tl::PS; e += kThreads) Ps[e] = 0.f;
  if (tid < kRows) row_scale[tid] = 1.f;

  // This warp's rows and the key bound of each (causal limit and split end).
  const int nr = rows > warp ? min(kRowsPerWarp, ceil_div(rows - warp, kWarps)) : 0;
  int limit[kRowsPerWarp];
  SoftmaxState st[kRowsPerWarp];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int m = warp + kWarps * i;
    limit[i] = valid && m < rows ? min(key_end, seqlen + (r0 + m) / p.G + 1) : 0;
    st[i] = softmax_state_empty();
  }
  const int ni = ceil_div(rows * Tl::DG, kThreads);  // output items in use, uniform per CTA
  float acc[Tl::ITEMS][4];
#pragma unroll
  for (int i = 0; i < Tl::ITEMS; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[i][e] = 0.f;

  const T* kc = static_cast<const T*>(p.k_cache) + b * p.kc_s[0] + h * p.kc_s[1];
  const T* vc = static_cast<const T*>(p.v_cache) + b * p.vc_s[0] + h * p.vc_s[1];
  KVLoader<T, D> kv;
  if (key_begin < key_end) kv.load(kc, vc, p, key_begin, key_end, tid);
  for (int t0 = key_begin; t0 < key_end; t0 += N) {
    kv.store(Ks, Vs, tid);
    __syncthreads();  // K/V tile (and on the first pass Q, P, row_scale) visible

    switch (nr) {
      case 4: qk_softmax<4, D>(Qs, Ks, Ps, row_scale, st, limit, warp, lane, t0, p.scale); break;
      case 3: qk_softmax<3, D>(Qs, Ks, Ps, row_scale, st, limit, warp, lane, t0, p.scale); break;
      case 2: qk_softmax<2, D>(Qs, Ks, Ps, row_scale, st, limit, warp, lane, t0, p.scale); break;
      case 1: qk_softmax<1, D>(Qs, Ks, Ps, row_scale, st, limit, warp, lane, t0, p.scale); break;
      default: break;  // this warp owns no row of a short tile
    }
    __syncthreads();  // P and row_scale visible

    // The next tile's global loads fly while this tile's P @ V runs.
    if (t0 + N < key_end) kv.load(kc, vc, p, t0 + N, key_end, tid);
    switch (ni) {
      case 1: pv_accumulate<1, D>(Ps, Vs, row_scale, acc, tid); break;
      case 2: if constexpr (Tl::ITEMS >= 2) pv_accumulate<2, D>(Ps, Vs, row_scale, acc, tid); break;
      case 3: if constexpr (Tl::ITEMS >= 3) pv_accumulate<3, D>(Ps, Vs, row_scale, acc, tid); break;
      case 4: if constexpr (Tl::ITEMS >= 4) pv_accumulate<4, D>(Ps, Vs, row_scale, acc, tid); break;
      default: break;
    }
    __syncthreads();  // Ks, Vs, Ps free for the next tile
  }

  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      row_m[warp + kWarps * i] = st[i].m;
      row_l[warp + kWarps * i] = st[i].l;
    }
  }
  __syncthreads();

  // Every (row < rows, column) of the tile is written, also for empty splits
  // and skipped rows (m = -inf, l = 0, acc = 0), so the merge reads no garbage.
#pragma unroll
  for (int i = 0; i < Tl::ITEMS; ++i) {
    const int m = (tid + kThreads * i) / Tl::DG;
    const int col = (tid + kThreads * i) % Tl::DG * 4;
    if (m >= rows) continue;
    const int r = r0 + m;
    if (p.splits == 1) {
      const int s = r / p.G;
      const int hq = h * p.G + r % p.G;
      T* o = static_cast<T*>(p.out) + ((b * p.S + s) * p.Hq + hq) * D + col;
      const float l = row_l[m];
#pragma unroll
      for (int e = 0; e < 4; ++e) o[e] = static_cast<T>(l > 0.f ? acc[i][e] / l : 0.f);
    } else {
      const int64_t slot = ((b * p.Hkv + h) * GS + r) * p.splits + split;
#pragma unroll
      for (int e = 0; e < 4; ++e) p.ws_acc[slot * D + col + e] = acc[i][e];
      if (col == 0) {
        p.ws_ml[2 * slot] = row_m[m];
        p.ws_ml[2 * slot + 1] = row_l[m];
      }
    }
  }
}

// One CTA of D threads per query row (b, h, r): thread d merges column d over
// the splits.
template <typename T>
__global__ void attention_merge_kernel(const float* __restrict__ ws_acc,
                                       const float* __restrict__ ws_ml, T* __restrict__ out,
                                       int S, int Hq, int Hkv, int G, int splits) {
  const int D = blockDim.x;
  const int d = threadIdx.x;
  const int64_t R = blockIdx.x;  // ((b * Hkv + h) * G*S + r)
  const int GS = G * S;
  const int r = static_cast<int>(R % GS);
  const int64_t bh = R / GS;
  const int h = static_cast<int>(bh % Hkv);
  const int64_t b = bh / Hkv;

  SoftmaxState st = softmax_state_empty();
  float acc = 0.f;
  for (int j = 0; j < splits; ++j) {
    const int64_t slot = R * splits + j;
    const SoftmaxState part{ws_ml[2 * slot], ws_ml[2 * slot + 1]};
    const float part_acc = ws_acc[slot * D + d];
    softmax_merge(st, &acc, part, &part_acc, 1);
  }
  const int s = r / G;
  const int hq = h * G + r % G;
  out[((b * S + s) * Hq + hq) * D + d] = static_cast<T>(st.l > 0.f ? acc / st.l : 0.f);
}

// Splits of the keys: enough CTAs to fill the GPU a few times over when the
// (batch, kv head, query tile) grid alone cannot, never more splits than key
// tiles in the cache. LAYERSKIP_CUDA_NUM_SPLITS=n forces n (tests of the merge).
inline int choose_splits(int64_t base_ctas, int64_t T_max, int block_n, int64_t sms) {
  const int64_t max_useful = std::max<int64_t>(1, ceil_div<int64_t>(T_max, block_n));
  if (const char* env = std::getenv("LAYERSKIP_CUDA_NUM_SPLITS")) {
    const int64_t forced = std::atoll(env);
    if (forced >= 1) return static_cast<int>(std::min<int64_t>(forced, kMaxSplits));
  }
  const int64_t target = 4 * sms;
  if (base_ctas >= target) return 1;
  const int64_t want = ceil_div<int64_t>(target, base_ctas);
  return static_cast<int>(std::min<int64_t>({want, max_useful, kMaxSplits}));
}


// Everything the launches need, computed on the host without reading device
// memory. ws_acc / ws_ml hold the split partials (empty with one split).
struct Plan {
  WriteParams write;
  AttnParams attn;
  int64_t write_blocks;  // of kWriteThreads
  int64_t ctas;          // attention_split_kernel CTAs of kThreads
  int64_t merge_ctas;    // attention_merge_kernel CTAs of D threads (0: no merge)
  bool rope;
  at::Tensor ws_acc, ws_ml;
};

// q: [B, S, Hq, D]; caches [B, Hkv, T_max, D]; seqlens contiguous int32 [B];
// out: [B, S, Hq, D] contiguous; sms: multiprocessors of the device.
inline Plan make_plan(const at::Tensor& q, at::Tensor& k_cache, at::Tensor& v_cache,
                      const at::Tensor& k_new, const at::Tensor& v_new, const at::Tensor& seqlens,
                      const c10::optional<at::Tensor>& cos, const c10::optional<at::Tensor>& sin,
                      double softmax_scale, at::Tensor& out, int64_t sms) {
  const int64_t B = q.size(0), S = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t Hkv = k_cache.size(1), T_max = k_cache.size(2);
  const int64_t G = Hq / Hkv;
  TORCH_CHECK(T_max < INT_MAX / 2 && S < INT_MAX && Hq < INT_MAX && G * S < INT_MAX,
              "draft_verify_attention (cuda): T_max, S and G*S must fit in int32, got T_max=",
              T_max, ", S=", S, ", Hq=", Hq);
  Plan plan{};
  plan.rope = cos.has_value();

  WriteParams& wp = plan.write;
  wp.k_new = k_new.data_ptr();
  wp.v_new = v_new.data_ptr();
  wp.k_cache = k_cache.data_ptr();
  wp.v_cache = v_cache.data_ptr();
  wp.seqlens = seqlens.data_ptr<int32_t>();
  for (int i = 0; i < 4; ++i) {
    wp.kn_s[i] = k_new.stride(i);
    wp.vn_s[i] = v_new.stride(i);
  }
  for (int i = 0; i < 3; ++i) {
    wp.kc_s[i] = k_cache.stride(i);
    wp.vc_s[i] = v_cache.stride(i);
  }
  if (plan.rope) {
    wp.cos = cos->data_ptr<float>();
    wp.sin = sin->data_ptr<float>();
    for (int i = 0; i < 2; ++i) {
      wp.cos_s[i] = cos->stride(i);
      wp.sin_s[i] = sin->stride(i);
    }
  }
  wp.total = B * S * Hkv * (D / 2);
  wp.S = static_cast<int>(S);
  wp.Hkv = static_cast<int>(Hkv);
  wp.D = static_cast<int>(D);
  wp.T_max = static_cast<int>(T_max);
  plan.write_blocks = ceil_div<int64_t>(wp.total, kWriteThreads);

  AttnParams& ap = plan.attn;
  const int64_t q_tiles = ceil_div<int64_t>(G * S, kRows);
  ap.q = q.data_ptr();
  ap.k_cache = k_cache.data_ptr();
  ap.v_cache = v_cache.data_ptr();
  ap.out = out.data_ptr();
  ap.seqlens = wp.seqlens;
  ap.cos = wp.cos;
  ap.sin = wp.sin;
  for (int i = 0; i < 4; ++i) ap.q_s[i] = q.stride(i);
  for (int i = 0; i < 3; ++i) {
    ap.kc_s[i] = wp.kc_s[i];
    ap.vc_s[i] = wp.vc_s[i];
  }
  for (int i = 0; i < 2; ++i) {
    ap.cos_s[i] = wp.cos_s[i];
    ap.sin_s[i] = wp.sin_s[i];
  }
  ap.S = static_cast<int>(S);
  ap.Hq = static_cast<int>(Hq);
  ap.Hkv = static_cast<int>(Hkv);
  ap.G = static_cast<int>(G);
  ap.T_max = static_cast<int>(T_max);
  ap.q_tiles = static_cast<int>(q_tiles);
  ap.scale = static_cast<float>(softmax_scale);
  const int64_t elem = q.element_size();
  auto vec_ok = [&](const at::Tensor& t) {
    bool ok = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
    for (int i = 0; i < 3; ++i) ok = ok && (t.stride(i) * elem) % 16 == 0;
    return ok;
  };
  ap.kv_vec = vec_ok(k_cache) && vec_ok(v_cache);
  const int block_n = LS_HEAD_DIM_SWITCH(static_cast<int>(D), kD, [&] { return Tile<kD>::N; });
  const int64_t base_ctas = B * Hkv * q_tiles;
  ap.splits = choose_splits(base_ctas, T_max, block_n, sms);
  plan.ctas = base_ctas * ap.splits;
  TORCH_CHECK(plan.write_blocks <= INT_MAX && plan.ctas <= INT_MAX && B * Hkv * G * S <= INT_MAX,
              "draft_verify_attention (cuda): batch * heads * S too large for one launch");
  plan.merge_ctas = 0;
  if (ap.splits > 1) {
    const auto f32 = q.options().dtype(at::kFloat);
    plan.ws_acc = at::empty({B * Hkv * G * S * ap.splits * D}, f32);
    plan.ws_ml = at::empty({B * Hkv * G * S * ap.splits * 2}, f32);
    ap.ws_acc = plan.ws_acc.data_ptr<float>();
    ap.ws_ml = plan.ws_ml.data_ptr<float>();
    plan.merge_ctas = B * Hkv * G * S;
  }
  return plan;
}

}  // namespace layerskip::cuda::attention
