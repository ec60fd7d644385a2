// Kernels of draft_verify_attention and their launch plan (attention.cu
// launches them). Torch-free, so that tests/cpp/emu runs this very code on the
// CPU; only attention.cu includes it in the build.
//
// Tiling of attention_split_kernel. One CTA owns a (batch b, kv head h, key
// split, query tile) and loads each K/V tile of its key range once to shared
// memory (fp32), for every query row of the tile. The query rows of a kv head
// are its G*S rows (G = Hq / Hkv query heads times S positions), row r =
// s * G + g. A query tile has R rows, R the smallest of {16, 64, 128} >= G*S
// whose shared memory fits the device, so for S <= 16 and G <= 8 every row of
// a kv head sits in one CTA and K/V are read once per split (the point of a
// verify step: S = k+1 rows, G up to 8, all reading the same keys). Wider heads
// (G*S > 128: prefill, G > 8) take ceil(G*S / 128) tiles, each re-reading K/V.
// Shared memory (fp32, dynamic): Q [R, D], K [N, D+4], V [N, D], P [R, N+1]
// and three R-vectors; N = 64 keys per tile for D <= 64, 32 above. At R = 128,
// D = 128 that is 115 KB, past the 48 KB default: the launcher raises the
// limit with cudaFuncSetAttribute and falls back to a smaller R on devices
// whose opt-in limit is lower (99 KB on sm_86/89).
//
// Whatever cache_seqlens holds (it is not checked on the host: that would
// synchronize), nothing is read or written outside the tensors: a row b with
// cache_seqlens[b] < 0 or cache_seqlens[b] + S > T_max is neither written to
// the cache nor read from it, and its output rows are exactly zero.
#pragma once
#include <stdint.h>
#include <stdlib.h>

#include <algorithm>
#include <climits>

#include "../common/online_softmax.h"
#include "../common/rope.h"
#include "device.cuh"

namespace layerskip::cuda::attention {

constexpr int kMaxSplits = 64;
constexpr int kWriteThreads = 256;   // cache_write_kernel
constexpr int kMergeThreads = 128;   // attention_merge_kernel: 128 / D rows per CTA (at least 1)
constexpr int kMaxRowTile = 128;

// Threads of a query tile of R rows: row m belongs to warp m % kWarps, so a
// warp owns kRowsPerWarp rows; 8 rows per warp above 16 keep the register
// arrays of qk_softmax and the accumulators at the size they have at R = 16.
template <int R>
struct RowTile {
  static constexpr int kRowsPerWarp = R <= 16 ? 4 : 8;
  static constexpr int kWarps = R / kRowsPerWarp;
  static constexpr int kThreads = 32 * kWarps;
};

// Keys per shared-memory tile.
template <int D>
__host__ __device__ constexpr int block_n() {
  return D <= 64 ? 64 : 32;
}

// Same switch style as LS_BOOL_SWITCH: the supported head dims become a
// compile-time constant; the caller rejects the others before any launch.
#define LS_HEAD_DIM_SWITCH(head_dim, NAME, ...) \
  [&] {                                         \
    switch (head_dim) {                         \
      case 16: {                                \
        constexpr int NAME = 16;                \
        return __VA_ARGS__();                   \
      }                                         \
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

#define LS_ROW_TILE_SWITCH(rows, NAME, ...) \
  [&] {                                     \
    if ((rows) <= 16) {                     \
      constexpr int NAME = 16;              \
      return __VA_ARGS__();                 \
    } else if ((rows) <= 64) {              \
      constexpr int NAME = 64;              \
      return __VA_ARGS__();                 \
    } else {                                \
      constexpr int NAME = 128;             \
      return __VA_ARGS__();                 \
    }                                       \
  }()

inline bool supported_head_dim(int64_t D) {
  return D == 16 || D == 32 || D == 64 || D == 96 || D == 128;
}

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

// 16 bytes of K or V starting at p (16 / sizeof(T) elements), through one
// vector load when the cache layout allows it.
template <typename T>
__device__ __forceinline__ Vec<T, 16 / sizeof(T)> load_chunk(const T* p, bool vec) {
  if (vec) return unpack<T>(__ldg(reinterpret_cast<const uint4*>(p)));
  Vec<T, 16 / sizeof(T)> c;
#pragma unroll
  for (int j = 0; j < static_cast<int>(16 / sizeof(T)); ++j) c.e[j] = p[j];
  return c;
}

template <typename T>
__device__ __forceinline__ void store_chunk_fp32(float* dst, const Vec<T, 16 / sizeof(T)>& c) {
#pragma unroll
  for (int j = 0; j < static_cast<int>(16 / sizeof(T)); j += 4)
    sts4(dst + j, make_float4(static_cast<float>(c.e[j]), static_cast<float>(c.e[j + 1]),
                              static_cast<float>(c.e[j + 2]), static_cast<float>(c.e[j + 3])));
}

// Shared-memory tile geometry of one (head dim, query tile).
template <int D, int R>
struct Tile {
  static constexpr int kThreads = RowTile<R>::kThreads;
  static constexpr int kWarps = RowTile<R>::kWarps;
  static constexpr int kRowsPerWarp = RowTile<R>::kRowsPerWarp;
  static constexpr int N = block_n<D>();
  static constexpr int KS = D + 4;  // padded K row: the float4 reads of 8 lanes hit distinct banks
  static constexpr int PS = N + 1;  // padded P row: lanes of one warp read up to 4 rows of P
  static constexpr int DG = D / 4;  // float4 column groups of the output
  // (row, column group) items of the output per thread. Item i of a thread is
  // number tid + kThreads * i in row-major order; with R * DG not a multiple
  // of kThreads (D = 16 at R = 16) the last items of some threads are past row R.
  static constexpr int ITEMS = (R * DG + kThreads - 1) / kThreads;
  static constexpr bool kRagged = R * DG % kThreads != 0;
  static_assert(N % 32 == 0, "one key per lane per 32");
  static_assert(D % 16 == 0, "16-byte chunks of 16-bit K/V rows");

  // Offsets in floats of the dynamic shared memory; all multiples of 4.
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + R * D;
  static constexpr int kV = kK + N * KS;
  static constexpr int kP = kV + N * D;
  static constexpr int kScale = kP + ((R * PS + 3) / 4) * 4;
  static constexpr int kM = kScale + R;
  static constexpr int kL = kM + R;
  static constexpr int kFloats = kL + R;
  static constexpr size_t kSmemBytes = static_cast<size_t>(kFloats) * sizeof(float);
};

// One K/V tile (keys [t0, t0 + N) of one (b, h)) in flight through registers:
// load() issues the global reads, store() converts to fp32 shared memory. Keys
// >= key_end are zero and never read (past a row's length they may hold NaN).
template <typename T, int D, int R>
struct KVLoader {
  using Tl = Tile<D, R>;
  static constexpr int VEC = 16 / sizeof(T);
  static constexpr int CPR = D / VEC;  // 16-byte chunks per key row
  static constexpr int TOTAL = Tl::N * CPR;
  static constexpr int CHUNKS = (TOTAL + Tl::kThreads - 1) / Tl::kThreads;

  Vec<T, VEC> k[CHUNKS], v[CHUNKS];

  __device__ __forceinline__ void load(const T* kc, const T* vc, const AttnParams& p, int t0,
                                       int key_end, int tid) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int idx = tid + c * Tl::kThreads;
      const int key = t0 + idx / CPR;
      const int col = (idx % CPR) * VEC;
      if (idx < TOTAL && key < key_end) {
        k[c] = load_chunk(kc + key * p.kc_s[2] + col, p.kv_vec);
        v[c] = load_chunk(vc + key * p.vc_s[2] + col, p.kv_vec);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) k[c].e[j] = v[c].e[j] = static_cast<T>(0.f);
      }
    }
  }

  __device__ __forceinline__ void store(float* Ks, float* Vs, int tid) const {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int idx = tid + c * Tl::kThreads;
      if (TOTAL % Tl::kThreads != 0 && idx >= TOTAL) continue;
      const int n = idx / CPR;
      const int col = (idx % CPR) * VEC;
      store_chunk_fp32<T>(Ks + n * Tl::KS + col, k[c]);
      store_chunk_fp32<T>(Vs + n * D + col, v[c]);
    }
  }
};

// Scores of the NR rows this warp owns (rows warp + kWarps * i) against the
// tile's keys (lane + 32 j), then the online-softmax update of those rows:
// P (exp(score - new max)) goes to shared memory with the factor by which the
// rows' accumulators must be rescaled.
template <int NR, int D, int R>
__device__ __forceinline__ void qk_softmax(const float* Qs, const float* Ks, float* Ps,
                                           float* row_scale,
                                           SoftmaxState (&st)[RowTile<R>::kRowsPerWarp],
                                           const int (&limit)[RowTile<R>::kRowsPerWarp], int warp,
                                           int lane, int t0, float scale) {
  using Tl = Tile<D, R>;
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
    for (int j = 0; j < J; ++j) kv[j] = lds4(Ks + (lane + 32 * j) * Tl::KS + d);
#pragma unroll
    for (int i = 0; i < NR; ++i) {
      const float4 qv = lds4(Qs + (warp + Tl::kWarps * i) * D + d);
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
    const int m = warp + Tl::kWarps * i;
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

// qk_softmax for the nr rows this warp owns in this tile (uniform per warp),
// as a compile-time count.
template <int NR, int D, int R>
__device__ __forceinline__ void qk_softmax_rows(int nr, const float* Qs, const float* Ks,
                                                float* Ps, float* row_scale,
                                                SoftmaxState (&st)[RowTile<R>::kRowsPerWarp],
                                                const int (&limit)[RowTile<R>::kRowsPerWarp],
                                                int warp, int lane, int t0, float scale) {
  if constexpr (NR > 0) {
    if (nr == NR)
      qk_softmax<NR, D, R>(Qs, Ks, Ps, row_scale, st, limit, warp, lane, t0, scale);
    else
      qk_softmax_rows<NR - 1, D, R>(nr, Qs, Ks, Ps, row_scale, st, limit, warp, lane, t0, scale);
  }
}

// acc += P @ V for the first NI output items of this thread (see Tile::ITEMS):
// the first NI items cover rows 0 .. NI * kThreads / DG - 1, so tiles with
// few query rows (a draft step) skip the rest.
template <int NI, int D, int R>
__device__ __forceinline__ void pv_accumulate(const float* Ps, const float* Vs,
                                              const float* row_scale,
                                              float (&acc)[Tile<D, R>::ITEMS][4], int tid) {
  using Tl = Tile<D, R>;
  // With kThreads a multiple of DG, every item of a thread has the same
  // column group and one V read serves all of them.
  constexpr bool kSameCol = Tl::kThreads % Tl::DG == 0;
  int row[NI], col[NI];
#pragma unroll
  for (int i = 0; i < NI; ++i) {
    // Items past row R (ragged tiling) compute on row R - 1 and are never stored.
    row[i] = min((tid + Tl::kThreads * i) / Tl::DG, R - 1);
    col[i] = (tid + Tl::kThreads * i) % Tl::DG * 4;
    const float r = row_scale[row[i]];
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[i][e] *= r;
  }
#pragma unroll 4
  for (int n = 0; n < Tl::N; ++n) {
#pragma unroll
    for (int i = 0; i < NI; ++i) {
      const float4 v = lds4(Vs + n * D + col[kSameCol ? 0 : i]);
      const float pn = Ps[row[i] * Tl::PS + n];
      acc[i][0] = fmaf(pn, v.x, acc[i][0]);
      acc[i][1] = fmaf(pn, v.y, acc[i][1]);
      acc[i][2] = fmaf(pn, v.z, acc[i][2]);
      acc[i][3] = fmaf(pn, v.w, acc[i][3]);
    }
  }
}

template <int NI, int D, int R>
__device__ __forceinline__ void pv_accumulate_items(int ni, const float* Ps, const float* Vs,
                                                    const float* row_scale,
                                                    float (&acc)[Tile<D, R>::ITEMS][4], int tid) {
  if constexpr (NI > 0) {
    if (ni == NI)
      pv_accumulate<NI, D, R>(Ps, Vs, row_scale, acc, tid);
    else
      pv_accumulate_items<NI - 1, D, R>(ni, Ps, Vs, row_scale, acc, tid);
  }
}

// Output row m of query tile (b, h, r0): its place in out [B, S, Hq, D].
__device__ __forceinline__ int64_t out_row(const AttnParams& p, int64_t b, int h, int r) {
  const int s = r / p.G;
  const int hq = h * p.G + r % p.G;
  return (b * p.S + s) * p.Hq + hq;
}

template <typename T, int D, int R>
__global__ void __launch_bounds__(RowTile<R>::kThreads) attention_split_kernel(const AttnParams p) {
  using Tl = Tile<D, R>;
  constexpr int N = Tl::N;
  constexpr int HALF = D / 2;
  constexpr int kThreads = Tl::kThreads;
  LS_DYNAMIC_SHARED(float, smem);
  float* Qs = smem + Tl::kQ;
  float* Ks = smem + Tl::kK;
  float* Vs = smem + Tl::kV;
  float* Ps = smem + Tl::kP;
  float* row_scale = smem + Tl::kScale;
  float* row_m = smem + Tl::kM;
  float* row_l = smem + Tl::kL;

  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32;
  // Consecutive CTAs: query tiles of the same (b, h, split) read the same keys
  // at about the same time, so a second read (G*S > R) comes from L2.
  int64_t cta = blockIdx.x;
  const int qt = static_cast<int>(cta % p.q_tiles);
  cta /= p.q_tiles;
  const int split = static_cast<int>(cta % p.splits);
  cta /= p.splits;
  const int h = static_cast<int>(cta % p.Hkv);
  const int64_t b = cta / p.Hkv;

  const int GS = p.G * p.S;
  const int r0 = qt * R;
  const int rows = min(R, GS - r0);
  const int seqlen = p.seqlens[b];
  const bool valid = row_in_bounds(seqlen, p.S, p.T_max);
  // Keys seen by the tile's last (latest) query row, split into p.splits
  // ranges of whole key tiles here on the device: the work follows the real
  // length, and splits past it are empty.
  const int kv_len = valid ? seqlen + (r0 + rows - 1) / p.G + 1 : 0;
  const int split_len = ceil_div(ceil_div(kv_len, N), p.splits) * N;
  const int key_begin = static_cast<int>(
      min(static_cast<int64_t>(split) * split_len, static_cast<int64_t>(kv_len)));
  const int key_end = static_cast<int>(
      min(static_cast<int64_t>(key_begin) + split_len, static_cast<int64_t>(kv_len)));

  if (key_begin >= key_end) {
    // An empty split reads nothing. It marks its partials empty (m = -inf,
    // l = 0) so that the merge skips their accumulators; with one split the
    // range is empty only for an out-of-bounds row, whose output is zero.
    for (int m = tid; m < rows; m += kThreads) {
      if (p.splits == 1) {
        T* o = static_cast<T*>(p.out) + out_row(p, b, h, r0 + m) * D;
        for (int d = 0; d < D; ++d) o[d] = static_cast<T>(0.f);
      } else {
        const int64_t slot = ((b * p.Hkv + h) * GS + r0 + m) * p.splits + split;
        p.ws_ml[2 * slot] = -INFINITY;
        p.ws_ml[2 * slot + 1] = 0.f;
      }
    }
    return;
  }

  // Query tile in fp32, RoPE applied (not rounded back to q's dtype, as in the
  // reference). The RoPE branch is uniform and outside the key loop, so it
  // stays a runtime flag instead of doubling the kernel instantiations.
  const T* q = static_cast<const T*>(p.q);
  for (int e = tid; e < R * HALF; e += kThreads) {
    const int m = e / HALF, i = e % HALF;
    float x1 = 0.f, x2 = 0.f;
    if (m < rows) {
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
  for (int e = tid; e < R * Tl::PS; e += kThreads) Ps[e] = 0.f;
  for (int e = tid; e < R; e += kThreads) row_scale[e] = 1.f;

  // This warp's rows and the key bound of each (causal limit and split end).
  const int nr =
      rows > warp ? min(Tl::kRowsPerWarp, ceil_div(rows - warp, Tl::kWarps)) : 0;
  int limit[Tl::kRowsPerWarp];
  SoftmaxState st[Tl::kRowsPerWarp];
#pragma unroll
  for (int i = 0; i < Tl::kRowsPerWarp; ++i) {
    const int m = warp + Tl::kWarps * i;
    limit[i] = m < rows ? min(key_end, seqlen + (r0 + m) / p.G + 1) : 0;
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
  KVLoader<T, D, R> kv;
  kv.load(kc, vc, p, key_begin, key_end, tid);
  for (int t0 = key_begin; t0 < key_end; t0 += N) {
    kv.store(Ks, Vs, tid);
    __syncthreads();  // K/V tile (and on the first pass Q, P, row_scale) visible

    qk_softmax_rows<Tl::kRowsPerWarp, D, R>(nr, Qs, Ks, Ps, row_scale, st, limit, warp, lane, t0,
                                            p.scale);
    __syncthreads();  // P and row_scale visible

    // The next tile's global loads fly while this tile's P @ V runs.
    if (t0 + N < key_end) kv.load(kc, vc, p, t0 + N, key_end, tid);
    pv_accumulate_items<Tl::ITEMS, D, R>(ni, Ps, Vs, row_scale, acc, tid);
    __syncthreads();  // Ks, Vs, Ps free for the next tile
  }

  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < Tl::kRowsPerWarp; ++i) {
      row_m[warp + Tl::kWarps * i] = st[i].m;
      row_l[warp + Tl::kWarps * i] = st[i].l;
    }
  }
  __syncthreads();

  // Every row < rows is written: the output, or its partial (m, l) and, when
  // some key of this split reached it (m > -inf), its accumulator.
#pragma unroll
  for (int i = 0; i < Tl::ITEMS; ++i) {
    const int item = tid + kThreads * i;
    const int m = item / Tl::DG;
    const int col = item % Tl::DG * 4;
    if (m >= rows) continue;
    const int r = r0 + m;
    if (p.splits == 1) {
      T* o = static_cast<T*>(p.out) + out_row(p, b, h, r) * D + col;
      const float l = row_l[m];
#pragma unroll
      for (int e = 0; e < 4; ++e) o[e] = static_cast<T>(l > 0.f ? acc[i][e] / l : 0.f);
    } else {
      const int64_t slot = ((b * p.Hkv + h) * GS + r) * p.splits + split;
      if (row_m[m] != -INFINITY) sts4(p.ws_acc + slot * D + col, make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
      if (col == 0) {
        p.ws_ml[2 * slot] = row_m[m];
        p.ws_ml[2 * slot + 1] = row_l[m];
      }
    }
  }
}

// blockDim = (D, rows per CTA): thread (d, y) merges column d of query row
// blockIdx.x * blockDim.y + y over the splits. Empty partials (m = -inf) are
// skipped without reading their accumulators, which were never written.
template <typename T>
__global__ void attention_merge_kernel(const float* __restrict__ ws_acc,
                                       const float* __restrict__ ws_ml, T* __restrict__ out,
                                       int64_t total_rows, int S, int Hq, int Hkv, int G,
                                       int splits) {
  const int D = blockDim.x;
  const int d = threadIdx.x;
  const int64_t R = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (R >= total_rows) return;  // ((b * Hkv + h) * G*S + r)
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
    if (part.m == -INFINITY) continue;
    const float part_acc = ws_acc[slot * D + d];
    softmax_merge(st, &acc, part, &part_acc, 1);
  }
  const int s = r / G;
  const int hq = h * G + r % G;
  out[((b * S + s) * Hq + hq) * D + d] = static_cast<T>(st.l > 0.f ? acc / st.l : 0.f);
}

// --------------------------------------------------------------------------- launch plan

// Dynamic shared memory of attention_split_kernel<T, D, R> (any T).
inline size_t split_smem_bytes(int D, int R) {
  return LS_HEAD_DIM_SWITCH(D, kD, [&] {
    return LS_ROW_TILE_SWITCH(R, kR, [&] { return Tile<kD, kR>::kSmemBytes; });
  });
}

// Query tile: the smallest of {16, 64, 128} that holds all G*S rows of a kv
// head, or the largest that fits `smem_limit` bytes of shared memory.
inline int choose_row_tile(int64_t GS, int D, size_t smem_limit) {
  int R = GS <= 16 ? 16 : GS <= 64 ? 64 : 128;
  while (R > 16 && split_smem_bytes(D, R) > smem_limit) R = R == 128 ? 64 : 16;
  return R;
}

// Splits of the keys: enough CTAs to fill the GPU a few times over when the
// (batch, kv head, query tile) grid alone cannot, never more splits than key
// tiles in the cache. The kernel divides each row's real length over them,
// so short rows leave the last splits empty (they exit at once).
inline int choose_splits(int64_t base_ctas, int64_t T_max, int block_n, int64_t sms,
                         int forced) {
  if (forced >= 1) return std::min(forced, kMaxSplits);
  const int64_t max_useful = std::max<int64_t>(1, ceil_div<int64_t>(T_max, block_n));
  const int64_t target = 4 * sms;
  if (base_ctas >= target) return 1;
  const int64_t want = ceil_div<int64_t>(target, base_ctas);
  return static_cast<int>(std::min<int64_t>({want, max_useful, kMaxSplits}));
}

struct AttnShape {
  int64_t B, S, Hq, Hkv, D, T_max;
};

// Grid sizes of the three launches, from shapes only (no device read).
struct AttnLaunch {
  int rows;                // query tile R
  int q_tiles, splits;
  int64_t ctas;            // attention_split_kernel CTAs of RowTile<R>::kThreads
  size_t smem;             // its dynamic shared memory, bytes
  int64_t write_blocks;    // cache_write_kernel blocks of kWriteThreads
  int64_t merge_rows;      // query rows merged (0: one split, no merge)
  int merge_rows_per_cta;  // blockDim.y of attention_merge_kernel
  int64_t merge_ctas;
};

// sms: multiprocessors; smem_limit: opt-in shared memory per block (bytes);
// forced_splits >= 1 forces the split count (tests of the merge).
inline AttnLaunch plan_attention(const AttnShape& s, int64_t sms, size_t smem_limit,
                                 int forced_splits) {
  AttnLaunch l{};
  const int64_t G = s.Hq / s.Hkv;
  const int D = static_cast<int>(s.D);
  l.rows = choose_row_tile(G * s.S, D, smem_limit);
  l.q_tiles = static_cast<int>(ceil_div<int64_t>(G * s.S, l.rows));
  l.smem = split_smem_bytes(D, l.rows);
  const int block_n_ = LS_HEAD_DIM_SWITCH(D, kD, [&] { return block_n<kD>(); });
  const int64_t base_ctas = s.B * s.Hkv * l.q_tiles;
  l.splits = choose_splits(base_ctas, s.T_max, block_n_, sms, forced_splits);
  l.ctas = base_ctas * l.splits;
  l.write_blocks = ceil_div<int64_t>(s.B * s.S * s.Hkv * (s.D / 2), kWriteThreads);
  l.merge_rows = l.splits > 1 ? s.B * s.Hq * s.S : 0;
  l.merge_rows_per_cta = std::max(1, kMergeThreads / D);
  l.merge_ctas = ceil_div<int64_t>(l.merge_rows, l.merge_rows_per_cta);
  return l;
}

// Kernel arguments from raw pointers and element strides, shared by
// attention.cu and the host emulation. q_s: q's 4 strides; kc_s / vc_s: the
// caches' strides over (B, Hkv, T_max); kn_s / vn_s: k_new / v_new's 4
// strides; cos_s / sin_s: the tables' 2 strides (ignored without RoPE).
struct AttnTensors {
  const void* q;
  void* k_cache;
  void* v_cache;
  const void* k_new;
  const void* v_new;
  const int32_t* seqlens;
  const float* cos;  // null without RoPE
  const float* sin;
  void* out;
  float* ws_acc;  // [merge_rows * splits * D] with more than one split
  float* ws_ml;   // [merge_rows * splits * 2]
  int64_t q_s[4], kc_s[3], vc_s[3], kn_s[4], vn_s[4], cos_s[2], sin_s[2];
  size_t elem_size;
};

inline void make_params(const AttnShape& s, const AttnLaunch& l, const AttnTensors& t,
                        double softmax_scale, WriteParams* wp, AttnParams* ap) {
  *wp = WriteParams{};
  wp->k_new = t.k_new;
  wp->v_new = t.v_new;
  wp->k_cache = t.k_cache;
  wp->v_cache = t.v_cache;
  wp->seqlens = t.seqlens;
  wp->cos = t.cos;
  wp->sin = t.sin;
  for (int i = 0; i < 4; ++i) wp->kn_s[i] = t.kn_s[i], wp->vn_s[i] = t.vn_s[i];
  for (int i = 0; i < 3; ++i) wp->kc_s[i] = t.kc_s[i], wp->vc_s[i] = t.vc_s[i];
  for (int i = 0; i < 2; ++i) wp->cos_s[i] = t.cos_s[i], wp->sin_s[i] = t.sin_s[i];
  wp->total = s.B * s.S * s.Hkv * (s.D / 2);
  wp->S = static_cast<int>(s.S);
  wp->Hkv = static_cast<int>(s.Hkv);
  wp->D = static_cast<int>(s.D);
  wp->T_max = static_cast<int>(s.T_max);

  *ap = AttnParams{};
  ap->q = t.q;
  ap->k_cache = t.k_cache;
  ap->v_cache = t.v_cache;
  ap->out = t.out;
  ap->ws_acc = t.ws_acc;
  ap->ws_ml = t.ws_ml;
  ap->seqlens = t.seqlens;
  ap->cos = t.cos;
  ap->sin = t.sin;
  for (int i = 0; i < 4; ++i) ap->q_s[i] = t.q_s[i];
  for (int i = 0; i < 3; ++i) ap->kc_s[i] = t.kc_s[i], ap->vc_s[i] = t.vc_s[i];
  for (int i = 0; i < 2; ++i) ap->cos_s[i] = t.cos_s[i], ap->sin_s[i] = t.sin_s[i];
  ap->S = static_cast<int>(s.S);
  ap->Hq = static_cast<int>(s.Hq);
  ap->Hkv = static_cast<int>(s.Hkv);
  ap->G = static_cast<int>(s.Hq / s.Hkv);
  ap->T_max = static_cast<int>(s.T_max);
  ap->q_tiles = l.q_tiles;
  ap->splits = l.splits;
  ap->scale = static_cast<float>(softmax_scale);
  auto vec_ok = [&](const void* ptr, const int64_t* strides) {
    bool ok = reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
    for (int i = 0; i < 3; ++i) ok = ok && (strides[i] * static_cast<int64_t>(t.elem_size)) % 16 == 0;
    return ok;
  };
  ap->kv_vec = vec_ok(t.k_cache, t.kc_s) && vec_ok(t.v_cache, t.vc_s);
}

}  // namespace layerskip::cuda::attention
