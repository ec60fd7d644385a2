// Kernels of draft_verify_attention and their launch plan (attention.cu
// launches them). Torch-free, so that tests/cpp/emu runs this very code on the
// CPU; only attention.cu includes it in the build.
//
// The query rows of a kv head are its G*S rows (G = Hq / Hkv query heads times
// S positions), row r = s * G + g. One CTA owns a (batch b, kv head h, key
// split, query tile of R rows), R the smallest of {16, 64, 128} >= G*S whose
// shared memory fits the device, so for S <= 16 and G <= 8 every row of a kv
// head sits in one CTA and K/V are read once per split (the point of a verify
// step: S = k+1 rows, G up to 8, all reading the same keys). Wider heads
// (G*S > 128: prefill, G > 8) take ceil(G*S / 128) tiles, each re-reading K/V.
//
// fp16/bf16: attention_mma_kernel, tensor cores (mma.sync m16n8k16, fp32
// accumulation; csrc/cuda/mma.cuh). Each warp owns 16 query rows; R = 16 has
// 4 warps that split every key tile between them (their partials are combined
// through shared memory at the end), R = 64 and 128 have one warp per 16 rows.
// K/V tiles of 64 keys stay in their 16-bit dtype in shared memory, two stages
// deep, filled by cp.async while the previous tile is computed. Q K^T and P V
// read their operands with ldmatrix (V transposed on the fly); the rotated q
// and P are rounded to the input dtype before their products, as
// flash-attention and the Triton kernel do. The online softmax runs in base 2.
//
// fp32: attention_split_kernel, FMA units. Shared memory (fp32): Q [R, D], K
// [N, D+4], V [N, D], P [R, N+1] and three R-vectors; N = 64 keys per tile for
// D <= 64, 32 above; K/V of the next tile are loaded to registers while the
// current one is computed.
//
// Both need more than the 48 KB default of shared memory at the larger tiles:
// the launcher raises the limit with cudaFuncSetAttribute and plan_tiles falls
// back to a smaller R on devices whose opt-in limit is lower (99 KB on
// sm_86/89).
//
// Splits: enough key splits for about one wave of CTAs (the occupancy the
// launcher reads for the chosen kernel times the SM count), at least 256 keys
// each; the kernel divides each row's real length (read on the device) into
// ranges of whole key tiles, so splits past a short row's length are empty and
// exit at once. attention_merge_kernel reads the (m, l) of all splits of a row
// at once, then their accumulators with independent loads.
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
#include "mma.cuh"

namespace layerskip::cuda::attention {

constexpr int kMaxSplits = 64;
constexpr int kWriteThreads = 256;   // cache_write_kernel
constexpr int kMergeThreads = 128;   // attention_merge_kernel: 4 columns a thread, 512 / D rows per CTA
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
  int min_split_keys;  // a split covers at least this many keys of a row (0: any)
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
      // A key hidden from this row (p = 0) may be a later query's new key
      // with NaN or inf in V: 0 * NaN must not reach the row.
      const bool seen = pn != 0.f;
      acc[i][0] = seen ? fmaf(pn, v.x, acc[i][0]) : acc[i][0];
      acc[i][1] = seen ? fmaf(pn, v.y, acc[i][1]) : acc[i][1];
      acc[i][2] = seen ? fmaf(pn, v.z, acc[i][2]) : acc[i][2];
      acc[i][3] = seen ? fmaf(pn, v.w, acc[i][3]) : acc[i][3];
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

// What one CTA of either attention kernel owns: query rows r0 .. r0 + rows - 1
// of kv head h of sequence b, keys key_begin .. key_end - 1. Consecutive CTAs
// are query tiles of the same (b, h, split): they read the same keys at about
// the same time, so a second read (G*S > R) comes from L2.
struct CtaWork {
  int64_t b;
  int h, split, r0, rows, seqlen, key_begin, key_end;
};

// block_n: keys per tile; splits cover whole tiles. The keys seen by the
// tile's last (latest) query row are divided over p.splits ranges here on the
// device, each at least p.min_split_keys long: the work follows the real
// length, and splits past it are empty.
template <int R>
__device__ __forceinline__ CtaWork cta_work(const AttnParams& p, int block_n) {
  CtaWork w;
  int64_t cta = blockIdx.x;
  const int qt = static_cast<int>(cta % p.q_tiles);
  cta /= p.q_tiles;
  w.split = static_cast<int>(cta % p.splits);
  cta /= p.splits;
  w.h = static_cast<int>(cta % p.Hkv);
  w.b = cta / p.Hkv;
  w.r0 = qt * R;
  w.rows = min(R, p.G * p.S - w.r0);
  w.seqlen = p.seqlens[w.b];
  const bool valid = row_in_bounds(w.seqlen, p.S, p.T_max);
  const int kv_len = valid ? w.seqlen + (w.r0 + w.rows - 1) / p.G + 1 : 0;
  const int split_len =
      max(ceil_div(ceil_div(kv_len, block_n), p.splits), ceil_div(p.min_split_keys, block_n)) * block_n;
  w.key_begin = static_cast<int>(
      min(static_cast<int64_t>(w.split) * split_len, static_cast<int64_t>(kv_len)));
  w.key_end = static_cast<int>(
      min(static_cast<int64_t>(w.key_begin) + split_len, static_cast<int64_t>(kv_len)));
  return w;
}

// Keys row m of the tile may see: the causal limit, cut at the split's end.
__device__ __forceinline__ int key_limit(const AttnParams& p, const CtaWork& w, int m) {
  return m < w.rows ? min(w.key_end, w.seqlen + (w.r0 + m) / p.G + 1) : 0;
}

// An empty key range reads nothing. It marks its partials empty (m = -inf,
// l = 0) so that the merge skips their accumulators; with one split the range
// is empty only for an out-of-bounds row, whose output is zero.
template <typename T, int D>
__device__ __forceinline__ void finish_empty(const AttnParams& p, const CtaWork& w, int tid,
                                             int threads) {
  for (int m = tid; m < w.rows; m += threads) {
    if (p.splits == 1) {
      T* o = static_cast<T*>(p.out) + out_row(p, w.b, w.h, w.r0 + m) * D;
      for (int d = 0; d < D; ++d) o[d] = static_cast<T>(0.f);
    } else {
      const int64_t slot = ((w.b * p.Hkv + w.h) * p.G * p.S + w.r0 + m) * p.splits + w.split;
      p.ws_ml[2 * slot] = -INFINITY;
      p.ws_ml[2 * slot + 1] = 0.f;
    }
  }
}

// Elements (i, i + D/2) of query row m of the tile in fp32, RoPE applied (not
// rounded back to q's dtype, as in the reference); zeros past the tile's rows.
// The RoPE branch is uniform and outside the key loop, so it stays a runtime
// flag instead of doubling the kernel instantiations.
template <typename T, int D>
__device__ __forceinline__ RotatedPair query_pair(const AttnParams& p, const CtaWork& w, int m,
                                                  int i) {
  if (m >= w.rows) return {0.f, 0.f};
  const int r = w.r0 + m;
  const int s = r / p.G;
  const int hq = w.h * p.G + r % p.G;
  const T* qrow = static_cast<const T*>(p.q) + w.b * p.q_s[0] + s * p.q_s[1] + hq * p.q_s[2];
  const float x1 = static_cast<float>(qrow[i * p.q_s[3]]);
  const float x2 = static_cast<float>(qrow[(i + D / 2) * p.q_s[3]]);
  if (p.cos == nullptr) return {x1, x2};
  const int64_t pos = w.seqlen + s;
  return rope_rotate_pair(x1, x2, p.cos[pos * p.cos_s[0] + i * p.cos_s[1]],
                          p.sin[pos * p.sin_s[0] + i * p.sin_s[1]]);
}

// Columns col .. col + 3 of tile row m once the CTA is done: the output
// (acc / l, or zero for a row that saw no key), or with several splits the
// partial: the accumulator when some key of this split reached the row
// (m > -inf; the merge reads no other), and (m, l) with the first column.
template <typename T, int D>
__device__ __forceinline__ void store_row_chunk(const AttnParams& p, const CtaWork& w, int m,
                                                int col, const float (&acc)[4], float row_m,
                                                float row_l) {
  const int r = w.r0 + m;
  if (p.splits == 1) {
    T* o = static_cast<T*>(p.out) + out_row(p, w.b, w.h, r) * D + col;
#pragma unroll
    for (int e = 0; e < 4; ++e) o[e] = static_cast<T>(row_l > 0.f ? acc[e] / row_l : 0.f);
  } else {
    const int64_t slot = ((w.b * p.Hkv + w.h) * p.G * p.S + r) * p.splits + w.split;
    if (row_m != -INFINITY)
      sts4(p.ws_acc + slot * D + col, make_float4(acc[0], acc[1], acc[2], acc[3]));
    if (col == 0) {
      p.ws_ml[2 * slot] = row_m;
      p.ws_ml[2 * slot + 1] = row_l;
    }
  }
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
  const CtaWork w = cta_work<R>(p, N);
  const int rows = w.rows, key_begin = w.key_begin, key_end = w.key_end;
  if (key_begin >= key_end) {
    finish_empty<T, D>(p, w, tid, kThreads);
    return;
  }

  for (int e = tid; e < R * HALF; e += kThreads) {
    const int m = e / HALF, i = e % HALF;
    const RotatedPair x = query_pair<T, D>(p, w, m, i);
    Qs[m * D + i] = x.lo;
    Qs[m * D + i + HALF] = x.hi;
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
    limit[i] = key_limit(p, w, warp + Tl::kWarps * i);
    st[i] = softmax_state_empty();
  }
  const int ni = ceil_div(rows * Tl::DG, kThreads);  // output items in use, uniform per CTA
  float acc[Tl::ITEMS][4];
#pragma unroll
  for (int i = 0; i < Tl::ITEMS; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[i][e] = 0.f;

  const T* kc = static_cast<const T*>(p.k_cache) + w.b * p.kc_s[0] + w.h * p.kc_s[1];
  const T* vc = static_cast<const T*>(p.v_cache) + w.b * p.vc_s[0] + w.h * p.vc_s[1];
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

#pragma unroll
  for (int i = 0; i < Tl::ITEMS; ++i) {
    const int item = tid + kThreads * i;
    const int m = item / Tl::DG;
    if (m < w.rows) store_row_chunk<T, D>(p, w, m, item % Tl::DG * 4, acc[i], row_m[m], row_l[m]);
  }
}

// --------------------------------------------------------------------------- tensor cores

// Geometry of attention_mma_kernel<T, D, R>: R / 16 row warps of 16 query
// rows each; at R = 16, KW = 4 warps share the rows and split each key tile.
template <int D, int R>
struct MmaTile {
  static constexpr int MW = R / 16;              // warps along the rows
  static constexpr int KW = R >= 64 ? 1 : 4 / MW;  // warps along the keys of a tile
  static constexpr int kWarps = MW * KW;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int N = 64;        // keys per tile (stage)
  static constexpr int NW = N / KW;   // keys per warp per tile: 16 or 64
  // Row stride of Q, K and V in shared memory, in elements: 16 padding bytes
  // put the 8 rows of each ldmatrix in distinct banks (2D + 16 bytes is an
  // odd multiple of 16 modulo 128 for every supported D).
  static constexpr int RS = D + 8;
  static constexpr int kStages = 2;
  static constexpr int CS = D + 4;    // fp32 row stride of the final combine
  // Offsets in elements of T: Q, Q's low half, the K/V stages; the stages are
  // reused in fp32 by the final combine: acc [KW][R][CS], then m and l [KW][R].
  static constexpr int kQ = 0;
  static constexpr int kQlo = R * RS;  // the rounding error of a rotated Q
  static constexpr int kK = 2 * R * RS;
  static constexpr int kStage = 2 * N * RS;  // K tile, then V tile
  static constexpr size_t kKVBytes = static_cast<size_t>(kStages) * kStage * 2;
  static constexpr size_t kCombineBytes = static_cast<size_t>(KW) * R * (CS + 2) * 4;
  static constexpr size_t kSmemBytes =
      static_cast<size_t>(kK) * 2 + (kKVBytes > kCombineBytes ? kKVBytes : kCombineBytes);
  static_assert(D % 16 == 0 && NW % 16 == 0, "whole m16n8k16 steps");
};

// Issues the loads of keys t0 .. t0 + N - 1 into one stage: 16-byte chunks,
// by cp.async when the cache layout allows it, else element by element
// through registers (misaligned views; visible after the same barrier). Keys
// >= key_end become zeros and are never read (past a row's length they may
// hold NaN).
template <typename T, int D, int R>
__device__ __forceinline__ void mma_load_tile(T* Ks, T* Vs, const T* kc, const T* vc,
                                              const AttnParams& p, int t0, int key_end, int tid) {
  using Tl = MmaTile<D, R>;
  constexpr int CPR = D / 8;  // chunks per key row
  constexpr int TOTAL = Tl::N * CPR;
#pragma unroll
  for (int c = 0; c < ceil_div(TOTAL, Tl::kThreads); ++c) {
    const int idx = tid + c * Tl::kThreads;
    if (TOTAL % Tl::kThreads != 0 && idx >= TOTAL) break;  // D = 16 at 256 threads
    const int n = idx / CPR, col = idx % CPR * 8;
    const int key = t0 + n;
    const bool in = key < key_end;
    const T* ksrc = in ? kc + key * p.kc_s[2] + col : kc;
    const T* vsrc = in ? vc + key * p.vc_s[2] + col : vc;
    T* kdst = Ks + n * Tl::RS + col;
    T* vdst = Vs + n * Tl::RS + col;
    if (p.kv_vec) {
      cp_async_16(kdst, ksrc, in);
      cp_async_16(vdst, vsrc, in);
    } else {
      Vec<T, 8> kx, vx;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        kx.e[j] = in ? ksrc[j] : static_cast<T>(0.f);
        vx.e[j] = in ? vsrc[j] : static_cast<T>(0.f);
      }
      memcpy(kdst, &kx, 16);
      memcpy(vdst, &vx, 16);
    }
  }
}

template <typename T>
__device__ __forceinline__ bool is_nonfinite_bits(const T& x) {
  uint16_t bits;
  memcpy(&bits, &x, sizeof(bits));
  constexpr uint16_t kExp = is_bf16<T>() ? 0x7f80 : 0x7c00;
  return (bits & kExp) == kExp;
}

template <typename T, int D, int R>
__global__ void __launch_bounds__(MmaTile<D, R>::kThreads, 1) attention_mma_kernel(const AttnParams p) {
  using Tl = MmaTile<D, R>;
  constexpr int N = Tl::N, NW = Tl::NW, RS = Tl::RS, HALF = D / 2;
  constexpr int KT = D / 16;   // k steps of Q K^T
  constexpr int NB = NW / 8;   // n8 blocks of a warp's scores
  constexpr int DB = D / 8;    // n8 blocks of the output
  constexpr int kThreads = Tl::kThreads;
  constexpr float kLog2e = 1.4426950408889634f;
  LS_DYNAMIC_SHARED(T, smem);
  T* Qs = smem + Tl::kQ;
  T* Qlo = smem + Tl::kQlo;

  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32;
  const int mw = warp % Tl::MW, kw = warp / Tl::MW;  // row slab, key slice
  const int g = lane / 4, tq = lane % 4;             // fragment row, column pair
  const CtaWork w = cta_work<R>(p, N);
  if (w.key_begin >= w.key_end) {
    finish_empty<T, D>(p, w, tid, kThreads);
    return;
  }
  const T* kc = static_cast<const T*>(p.k_cache) + w.b * p.kc_s[0] + w.h * p.kc_s[1];
  const T* vc = static_cast<const T*>(p.v_cache) + w.b * p.vc_s[0] + w.h * p.vc_s[1];
  auto stage_k = [&](int st) { return smem + Tl::kK + st * Tl::kStage; };
  auto stage_v = [&](int st) { return smem + Tl::kK + st * Tl::kStage + N * RS; };

  // The first tile flies while q is rotated. A rotated q is no longer exact
  // in T: it enters the products as hi + lo, two values of T (lo = the
  // rounding error of hi), which costs one more Q K^T product and keeps the
  // rotation's precision (rounding it to T alone doubled the RMS error of
  // short rows). Q's fragments are read from shared memory at each tile
  // rather than held: registers go to the accumulators.
  const bool rope = p.cos != nullptr;
  mma_load_tile<T, D, R>(stage_k(0), stage_v(0), kc, vc, p, w.key_begin, w.key_end, tid);
  cp_async_commit();
  for (int e = tid; e < R * HALF; e += kThreads) {
    const int m = e / HALF, i = e % HALF;
    const RotatedPair x = query_pair<T, D>(p, w, m, i);
    const T hi0 = static_cast<T>(x.lo), hi1 = static_cast<T>(x.hi);
    Qs[m * RS + i] = hi0;
    Qs[m * RS + i + HALF] = hi1;
    if (rope) {
      Qlo[m * RS + i] = static_cast<T>(x.lo - static_cast<float>(hi0));
      Qlo[m * RS + i + HALF] = static_cast<T>(x.hi - static_cast<float>(hi1));
    }
  }
  const int q_off = (mw * 16 + lane / 8 % 2 * 8 + lane % 8) * RS + lane / 16 * 8;

  // Rows g and g + 8 of the slab: key bounds, softmax state (m in base 2; l
  // is this thread's share, summed over the 4 lanes of the row at the end).
  const int lim[2] = {key_limit(p, w, mw * 16 + g), key_limit(p, w, mw * 16 + g + 8)};
  float row_m[2] = {-INFINITY, -INFINITY}, row_l[2] = {0.f, 0.f};
  float acc[DB][4];
#pragma unroll
  for (int j = 0; j < DB; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0.f;
  const float scale = p.scale * kLog2e;
  // Keys seqlen + 1 .. key_end - 1 are new keys that earlier queries of the
  // row do not see: a NaN or inf in their V would still reach those queries
  // through 0 * NaN in P V. Such tiles have them zeroed in shared memory and
  // added back below for the queries that do see them.
  const int hidden_begin = w.seqlen + 1;

  int st = 0;
  for (int t0 = w.key_begin; t0 < w.key_end; t0 += N, st ^= 1) {
    if (t0 + N < w.key_end)
      mma_load_tile<T, D, R>(stage_k(st ^ 1), stage_v(st ^ 1), kc, vc, p, t0 + N, w.key_end, tid);
    cp_async_commit();  // possibly empty: one group per tile keeps wait<1> exact
    cp_async_wait<1>();
    const T* Ks = stage_k(st);
    T* Vs = stage_v(st);
    const int hid_lo = max(t0, hidden_begin), hid_hi = min(t0 + N, w.key_end);
    bool repair = false;
    if (hid_lo < hid_hi) {  // uniform: only tiles with new keys of a verify step
      __syncthreads();
      int found = 0;
      for (int e = tid; e < (hid_hi - hid_lo) * D; e += kThreads) {
        T* v = Vs + (hid_lo - t0 + e / D) * RS + e % D;
        if (is_nonfinite_bits(*v)) {
          *v = static_cast<T>(0.f);
          found = 1;
        }
      }
      repair = __syncthreads_or(found) != 0;
    } else {
      __syncthreads();
    }

    // S = Q K^T for this warp's 16 rows and NW keys.
    const int n0 = kw * NW;
    float s[NB][4];
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
      uint32_t qa[4], qlo[4];
      ldmatrix_x4(qa, Qs + q_off + kk * 16);
      if (rope) ldmatrix_x4(qlo, Qlo + q_off + kk * 16);
#pragma unroll
      for (int j = 0; j < NB; j += 2) {
        uint32_t kb[4];
        ldmatrix_x4(kb, Ks + (n0 + j * 8 + lane / 16 * 8 + lane % 8) * RS + kk * 16 + lane / 8 % 2 * 8);
        const uint32_t b0[2] = {kb[0], kb[1]}, b1[2] = {kb[2], kb[3]};
        mma_16816<T>(s[j], qa, b0);
        mma_16816<T>(s[j + 1], qa, b1);
        if (rope) {
          mma_16816<T>(s[j], qlo, b0);
          mma_16816<T>(s[j + 1], qlo, b1);
        }
      }
    }

    // Online softmax of rows g (e = 0, 1) and g + 8 (e = 2, 3).
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = t0 + n0 + j * 8 + 2 * tq + e % 2;
        s[j][e] = key < lim[e / 2] ? s[j][e] * scale : -INFINITY;
        tile_max[e / 2] = fmaxf(tile_max[e / 2], s[j][e]);
      }
    float alpha[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(kFullMask, tile_max[i], 1));
      tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(kFullMask, tile_max[i], 2));
      const float m_new = fmaxf(row_m[i], tile_max[i]);
      alpha[i] = row_m[i] == -INFINITY ? 0.f : exp2f(row_m[i] - m_new);
      row_m[i] = m_new;
      row_l[i] *= alpha[i];
    }
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        // Masked keys: exactly 0, also while the whole row is masked (m = -inf).
        s[j][e] = s[j][e] == -INFINITY ? 0.f : exp2f(s[j][e] - row_m[e / 2]);
        row_l[e / 2] += s[j][e];
      }
#pragma unroll
    for (int j = 0; j < DB; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[j][e] *= alpha[e / 2];

    // acc += P V: the score fragments of two n8 blocks are the A fragment of
    // one k16 step (P rounded to T); V^T fragments by ldmatrix.trans.
#pragma unroll
    for (int kk = 0; kk < NW / 16; ++kk) {
      const uint32_t pa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]),
                              pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                              pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int j = 0; j < DB; j += 2) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, Vs + (n0 + kk * 16 + lane / 8 % 2 * 8 + lane % 8) * RS + j * 8 + lane / 16 * 8);
        const uint32_t b0[2] = {vb[0], vb[1]}, b1[2] = {vb[2], vb[3]};
        mma_16816<T>(acc[j], pa, b0);
        mma_16816<T>(acc[j + 1], pa, b1);
      }
    }

    if (repair) {
      // Rare: a non-finite V among the new keys. Each query that sees such a
      // key gets it added as the reference would (inf, -inf or NaN).
      const int lo = max(hid_lo, t0 + n0), hi = min(hid_hi, t0 + n0 + NW);
#pragma unroll 1
      for (int key = lo; key < hi; ++key) {
        const T* vrow = vc + key * p.vc_s[2];
#pragma unroll
        for (int j = 0; j < DB; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float v = static_cast<float>(vrow[j * 8 + 2 * tq + e % 2]);
            if (key < lim[e / 2] && !(fabsf(v) < INFINITY)) acc[j][e] += v;
          }
      }
    }
    __syncthreads();  // the stage is free for the tile after next
  }
  cp_async_wait<0>();  // the last group is empty; nothing may be in flight at exit

  // Combine: every warp's partial of its rows in fp32 shared memory (over the
  // K/V stages), then each thread finishes (row, 4 columns) items over the KW
  // key slices of the row.
  float* cacc = reinterpret_cast<float*>(smem + Tl::kK);
  float* cm = cacc + Tl::KW * R * Tl::CS;
  float* cl = cm + Tl::KW * R;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    row_l[i] += __shfl_xor_sync(kFullMask, row_l[i], 1);
    row_l[i] += __shfl_xor_sync(kFullMask, row_l[i], 2);
    const int m = mw * 16 + g + 8 * i;
    if (tq == 0) {
      cm[kw * R + m] = row_m[i];
      cl[kw * R + m] = row_l[i];
    }
#pragma unroll
    for (int j = 0; j < DB; ++j) {
      float* dst = cacc + (kw * R + m) * Tl::CS + j * 8 + 2 * tq;
      dst[0] = acc[j][2 * i];
      dst[1] = acc[j][2 * i + 1];
    }
  }
  __syncthreads();
  constexpr int DG = D / 4;
  for (int item = tid; item < R * DG; item += kThreads) {
    const int m = item / DG, col = item % DG * 4;
    if (m >= w.rows) continue;
    float mx = -INFINITY;
#pragma unroll
    for (int k = 0; k < Tl::KW; ++k) mx = fmaxf(mx, cm[k * R + m]);
    float l = 0.f, out[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int k = 0; k < Tl::KW; ++k) {
      const float mk = cm[k * R + m];
      if (mk == -INFINITY) continue;  // no key of this slice reached the row
      const float wk = exp2f(mk - mx);
      const float4 a = lds4(cacc + (k * R + m) * Tl::CS + col);
      l += wk * cl[k * R + m];
      out[0] += wk * a.x;
      out[1] += wk * a.y;
      out[2] += wk * a.z;
      out[3] += wk * a.w;
    }
    // Partials leave in natural-log units (the merge's and the fp32 kernel's).
    store_row_chunk<T, D>(p, w, m, col, out, mx * 0.6931471805599453f, l);
  }
}

// --------------------------------------------------------------------------- merge

// blockDim = (D / 4, rows per CTA): the threads of row y first load the (m, l)
// of all splits of their row at once (into shared memory), then each merges 4
// columns: one pass over the splits with independent loads of their
// accumulators. Empty partials (m = -inf) are skipped without reading their
// accumulators, which were never written.
constexpr int kMergeMaxRows = kMergeThreads / 4;

template <typename T>
__global__ void __launch_bounds__(kMergeThreads)
    attention_merge_kernel(const float* __restrict__ ws_acc, const float* __restrict__ ws_ml,
                           T* __restrict__ out, int64_t total_rows, int S, int Hq, int Hkv, int G,
                           int splits) {
  __shared__ float part_m[kMergeMaxRows][kMaxSplits];
  __shared__ float part_l[kMergeMaxRows][kMaxSplits];
  const int D = blockDim.x * 4;
  const int x = threadIdx.x, y = threadIdx.y;
  const int64_t R = static_cast<int64_t>(blockIdx.x) * blockDim.y + y;  // ((b * Hkv + h) * G*S + r)
  const bool active = R < total_rows;
  if (active)
    for (int j = x; j < splits; j += blockDim.x) {
      part_m[y][j] = ws_ml[2 * (R * splits + j)];
      part_l[y][j] = ws_ml[2 * (R * splits + j) + 1];
    }
  __syncthreads();
  if (!active) return;
  float mx = -INFINITY;
  for (int j = 0; j < splits; ++j) mx = fmaxf(mx, part_m[y][j]);
  float l = 0.f;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  const float* src = ws_acc + R * splits * D + 4 * x;
#pragma unroll 4
  for (int j = 0; j < splits; ++j) {
    const float mj = part_m[y][j];
    if (mj == -INFINITY) continue;
    const float wj = expf(mj - mx);
    const float4 a = lds4(src + static_cast<int64_t>(j) * D);
    l += wj * part_l[y][j];
    acc.x += wj * a.x;
    acc.y += wj * a.y;
    acc.z += wj * a.z;
    acc.w += wj * a.w;
  }
  const int GS = G * S;
  const int r = static_cast<int>(R % GS);
  const int64_t bh = R / GS;
  const int h = static_cast<int>(bh % Hkv);
  const int64_t b = bh / Hkv;
  const int s = r / G;
  const int hq = h * G + r % G;
  T* o = out + ((b * S + s) * Hq + hq) * D + 4 * x;
  o[0] = static_cast<T>(l > 0.f ? acc.x / l : 0.f);
  o[1] = static_cast<T>(l > 0.f ? acc.y / l : 0.f);
  o[2] = static_cast<T>(l > 0.f ? acc.z / l : 0.f);
  o[3] = static_cast<T>(l > 0.f ? acc.w / l : 0.f);
}

// --------------------------------------------------------------------------- launch plan

constexpr int kMinSplitKeys = 256;  // a split reads at least this many keys of a row

// Dynamic shared memory and keys per tile of the attention kernel that runs
// tiles of R rows: attention_mma_kernel (tensor_cores) or attention_split_kernel.
inline size_t attention_smem_bytes(bool tensor_cores, int D, int R) {
  return LS_HEAD_DIM_SWITCH(D, kD, [&] {
    return LS_ROW_TILE_SWITCH(R, kR, [&] {
      return tensor_cores ? MmaTile<kD, kR>::kSmemBytes : Tile<kD, kR>::kSmemBytes;
    });
  });
}

inline int attention_block_n(bool tensor_cores, int D) {
  return LS_HEAD_DIM_SWITCH(D, kD, [&] { return tensor_cores ? MmaTile<kD, 16>::N : block_n<kD>(); });
}

// Query tile: the smallest of {16, 64, 128} that holds all G*S rows of a kv
// head, or the largest that fits `smem_limit` bytes of shared memory.
inline int choose_row_tile(int64_t GS, int D, size_t smem_limit, bool tensor_cores) {
  int R = GS <= 16 ? 16 : GS <= 64 ? 64 : 128;
  while (R > 16 && attention_smem_bytes(tensor_cores, D, R) > smem_limit) R = R == 128 ? 64 : 16;
  return R;
}

// Key splits: as many as fit one wave of CTAs next to the (batch, kv head,
// query tile) grid (`wave` = CTAs resident on the whole GPU at once, from the
// kernel's occupancy), at most one per kMinSplitKeys keys of the cache. More
// would only add waves and partial results to merge; the kernel also keeps
// kMinSplitKeys per split of a row's real length, so short rows leave the last
// splits empty (they exit at once).
inline int choose_splits(int64_t base_ctas, int64_t T_max, int64_t wave, int forced) {
  if (forced >= 1) return std::min(forced, kMaxSplits);
  const int64_t max_useful = std::max<int64_t>(1, T_max / kMinSplitKeys);
  const int64_t fit = std::max<int64_t>(1, wave / std::max<int64_t>(base_ctas, 1));
  return static_cast<int>(std::min<int64_t>({fit, max_useful, kMaxSplits}));
}

struct AttnShape {
  int64_t B, S, Hq, Hkv, D, T_max;
};

// Grid sizes of the three launches, from shapes only (no device read).
struct AttnLaunch {
  bool tensor_cores;       // attention_mma_kernel (else attention_split_kernel)
  int rows;                // query tile R
  int threads;             // threads of an attention CTA
  int q_tiles, splits;
  int min_split_keys;      // AttnParams::min_split_keys
  int64_t ctas;            // attention CTAs
  size_t smem;             // their dynamic shared memory, bytes
  int64_t write_blocks;    // cache_write_kernel blocks of kWriteThreads
  int64_t merge_rows;      // query rows merged (0: one split, no merge)
  int merge_rows_per_cta;  // blockDim.y of attention_merge_kernel (blockDim.x = D / 4)
  int64_t merge_ctas;
};

// The tiles: which kernel, R, its threads and shared memory. tensor_cores:
// 16-bit inputs on sm_80 or later; smem_limit: opt-in shared memory per block.
inline AttnLaunch plan_tiles(const AttnShape& s, size_t smem_limit, bool tensor_cores) {
  AttnLaunch l{};
  const int64_t G = s.Hq / s.Hkv;
  const int D = static_cast<int>(s.D);
  l.tensor_cores = tensor_cores;
  l.rows = choose_row_tile(G * s.S, D, smem_limit, tensor_cores);
  l.threads = LS_ROW_TILE_SWITCH(l.rows, kR, [&] {
    return tensor_cores ? MmaTile<64, kR>::kThreads : RowTile<kR>::kThreads;
  });
  l.q_tiles = static_cast<int>(ceil_div<int64_t>(G * s.S, l.rows));
  l.smem = attention_smem_bytes(tensor_cores, D, l.rows);
  l.write_blocks = ceil_div<int64_t>(s.B * s.S * s.Hkv * (s.D / 2), kWriteThreads);
  return l;
}

// The splits, once the launcher knows how many of the chosen kernel's CTAs an
// SM holds: sms * blocks_per_sm is one wave. forced_splits >= 1 forces the
// split count and lets every split take a single key tile (tests of the merge).
inline void plan_splits(const AttnShape& s, int64_t sms, int64_t blocks_per_sm, int forced_splits,
                        AttnLaunch* l) {
  const int D = static_cast<int>(s.D);
  const int64_t base_ctas = s.B * s.Hkv * l->q_tiles;
  l->splits = choose_splits(base_ctas, s.T_max, sms * std::max<int64_t>(blocks_per_sm, 1),
                            forced_splits);
  l->min_split_keys = forced_splits >= 1 ? 0 : kMinSplitKeys;
  l->ctas = base_ctas * l->splits;
  l->merge_rows = l->splits > 1 ? s.B * s.Hq * s.S : 0;
  l->merge_rows_per_cta = kMergeThreads / (D / 4);
  l->merge_ctas = ceil_div<int64_t>(l->merge_rows, l->merge_rows_per_cta);
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
  ap->min_split_keys = l.min_split_keys;
  ap->scale = static_cast<float>(softmax_scale);
  auto vec_ok = [&](const void* ptr, const int64_t* strides) {
    bool ok = reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
    for (int i = 0; i < 3; ++i) ok = ok && (strides[i] * static_cast<int64_t>(t.elem_size)) % 16 == 0;
    return ok;
  };
  ap->kv_vec = vec_ok(t.k_cache, t.kc_s) && vec_ok(t.v_cache, t.vc_s);
}

}  // namespace layerskip::cuda::attention
