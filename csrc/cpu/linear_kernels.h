// linear_rows / linear_rows_int8 kernels of one CPU level (included by
// level_kernels.h inside the level's namespace): y = x @ weight^T for the few
// rows of a decode step, raw pointers, output columns [n0, n1).
//
// A decode step multiplies 1 to k+1 rows per sequence by each weight matrix.
// ATen's GEMM costs ~10 us a call at any such size on these CPUs, several times
// the time to stream a 256 x 256 weight, and a step makes dozens of calls. This
// kernel streams each weight row once per block of up to kRowBlock input rows:
// weights are widened to fp32 in registers (bf16: a shift or a mask; int8: a
// sign extension and a conversion) and multiplied into tiles of (weight rows)
// x (input rows) fp32 accumulators, x prepared once in fp32 in the order the
// widened weights come out; the tile's horizontal sums are transpose-and-add
// trees (reduce_lanes). On AVX-512-BF16, bf16 x with bf16 or int8 weights
// instead multiply 32 bf16 pairs per VDPBF16PS (x stays bf16).
// Outputs: fp32 sums, times the row's scale for int8 weights, rounded once to
// x's dtype (round to nearest even for bf16).
//
// The fp32 path gives each output the same sum (the same products added in
// the same order) whatever the number of rows, the tile it falls in or the
// split over threads: one accumulator per (input row, weight row), its steps
// in K order, the same reduction tree. So a row's result does not depend on
// the rows beside it (a verify pass's row equals the draft step's).

constexpr int kL = Vec::kLanes;
constexpr int kStep = 2 * kL;                 // weights along K per step (two halves of kL)
constexpr int64_t kRowBlock = kTileRowBlock;  // input rows per pass over the weights (vec.h)
// Weight rows per chunk that every row block of a call goes through before the
// next chunk: a chunk stays in L2 while the row blocks re-read it.
constexpr int64_t kChunkBytes = 128 * 1024;
// Software prefetch of the weights this far ahead (into L2), where a tile's
// rows are short: the hardware prefetchers lose a stream at every 4 KB page
// and need a few lines of each to find it, too late for rows of 256 elements.
// Not where a step reads more than kPrefetchMaxStepBytes (a prefetch per 64
// bytes would then cost more than the loads gain from cache) or a tile is
// long enough for the hardware prefetchers.
constexpr int64_t kPrefetchBytes = 4096;
constexpr int64_t kPrefetchMaxStepBytes = 256;
constexpr int64_t kPrefetchMaxTileBytes = 24 * 1024;
// Weights larger than kStreamBytes (dispatch.h) come from L3 or DRAM at
// every call of a decode step: there every tile prefetches, whatever its shape (a
// one-row tile of Llama-sized rows is 8 or 16 rows of 4-16 KB, each a stream
// the hardware prefetchers pick up anew at every page; the VDPBF16PS tiles
// too), and further ahead: 4 KB is about one DRAM latency (~0.15 us under
// load) at one core's streaming rate (~20 GB/s), too few lines in flight.
constexpr int64_t kStreamPrefetchBytes = 16 * 1024;
// K-block pieces up to a page long are the streams the hardware prefetchers
// miss (rows_fp32 prefetches the next chunk for them).
constexpr int64_t kPageBytes = 4096;

inline int64_t padded_k(int64_t K) { return (K + kStep - 1) / kStep * kStep; }

// Where the tile of weight rows from wn (tile_bytes of them, read kStepBytes
// per step along K) prefetches from: the tiles after it are one contiguous
// run, prefetched in order at the rate this tile reads its own, whole tiles
// ahead; null where it does not prefetch. It does where the weights stream,
// and where its rows are short (if kShortRows: the fp32 tiles, timed so; the
// VDPBF16PS ones were not), in one pass over the whole of K (with K blocks a
// tile reads part of each row, and the run ahead is not what comes next:
// rows_fp32 prefetches the next chunk instead).
template <int64_t kStepBytes, bool kShortRows, typename WT>
LS_FORCE_INLINE const char* prefetch_from(const LinearArgs& a, const WT* wn, int64_t tile_bytes, bool whole_k) {
  const bool stream = weight_streams(a.N, a.K, sizeof(WT));
  const bool short_rows = kShortRows && kStepBytes <= kPrefetchMaxStepBytes && tile_bytes <= kPrefetchMaxTileBytes;
  if (!whole_k || !(stream || short_rows)) return nullptr;
  const int64_t ahead = stream ? kStreamPrefetchBytes : kPrefetchBytes;
  const char* pf = reinterpret_cast<const char*>(wn) + (ahead + tile_bytes - 1) / tile_bytes * tile_bytes;
  return pf < reinterpret_cast<const char*>(static_cast<const WT*>(a.w) + a.N * a.K) ? pf : nullptr;
}

// The prefetches of step `step` of a tile (prefetch_from): its share of the run ahead.
template <int64_t kStepBytes>
LS_FORCE_INLINE void prefetch_step(const char* pf, int64_t step) {
  if (!pf) return;
  const char* p = pf + step * kStepBytes;
  for (int64_t l = 0; l < kStepBytes; l += 64) __builtin_prefetch(p + l, 0, 2);
}

// Weight rows per tile for kM input rows: the level's table (vec.h). AVX2: 8,
// 4, 3, 2, 2, 2 for 1..6 rows; AVX-512: 16, 8, 5, 4, 3, 2, 2, 2 for 1..8.
template <int kM>
constexpr int tile_rows() {
  return kTileRows[kM - 1];
}
// Weight rows of the split over threads and of the chunks (vec.h).
constexpr int64_t kRowUnit = kTileRowUnit;
static_assert(kRowUnit % tile_rows<1>() == 0 && kRowUnit % tile_rows<2>() == 0,
              "chunks and thread shares are whole tiles of one and two rows");

// One step of kStep along K of a tile: kN weight rows (stride ws) times kM rows
// of prepared x (stride xs). Each accumulator takes the step's even-half
// product, then its odd-half one, in either loop order.
template <int kM, int kN, typename WT>
LS_FORCE_INLINE void tile_step(Vec* acc, const float* x, int64_t xs, const WT* w, int64_t ws) {
  if constexpr (!kTileByHalf) {  // both halves at once: one load of each weight vector
    if constexpr (kM <= kN) {    // the x rows stay, each weight row meets them all
      Vec x0[kM], x1[kM];
      for (int i = 0; i < kM; ++i) x0[i] = Vec::load(x + i * xs), x1[i] = Vec::load(x + i * xs + kL);
      for (int j = 0; j < kN; ++j) {
        const Vec w0 = load_w_half<0>(w + j * ws), w1 = load_w_half<1>(w + j * ws);
        for (int i = 0; i < kM; ++i) acc[j * kM + i] = fmadd(w1, x1[i], fmadd(w0, x0[i], acc[j * kM + i]));
      }
    } else {  // the widened weights stay, each x row meets them all
      Vec w0[kN], w1[kN];
      for (int j = 0; j < kN; ++j) w0[j] = load_w_half<0>(w + j * ws), w1[j] = load_w_half<1>(w + j * ws);
      for (int i = 0; i < kM; ++i) {
        const Vec x0 = Vec::load(x + i * xs), x1 = Vec::load(x + i * xs + kL);
        for (int j = 0; j < kN; ++j) acc[j * kM + i] = fmadd(w1[j], x1, fmadd(w0[j], x0, acc[j * kM + i]));
      }
    }
  } else {  // half by half: half the registers held, for larger tiles
    auto half = [&](auto h) {
      constexpr int kH = decltype(h)::value;
      if constexpr (kM <= kN) {
        Vec xv[kM];
        for (int i = 0; i < kM; ++i) xv[i] = Vec::load(x + i * xs + kH * kL);
        for (int j = 0; j < kN; ++j) {
          const Vec wv = load_w_half<kH>(w + j * ws);
          for (int i = 0; i < kM; ++i) acc[j * kM + i] = fmadd(wv, xv[i], acc[j * kM + i]);
        }
      } else {
        Vec wv[kN];
        for (int j = 0; j < kN; ++j) wv[j] = load_w_half<kH>(w + j * ws);
        for (int i = 0; i < kM; ++i) {
          Vec xv = Vec::load(x + i * xs + kH * kL);
          // GCC folds this load into each of the kN FMAs instead (kN + 1
          // loads per kN FMAs: past Zen 4's two 256-bit loads a cycle); where
          // a register is spare, keep it: 4 and 5 rows 1.15-1.25x from L1.
          if constexpr (kM * kN + kN + 2 < Vec::kRegs) keep_in_register(xv);
          for (int j = 0; j < kN; ++j) acc[j * kM + i] = fmadd(wv[j], xv, acc[j * kM + i]);
        }
      }
    };
    half(std::integral_constant<int, 0>{});
    half(std::integral_constant<int, 1>{});
  }
}

// A tile's outputs (lane j * kM + i of v) to rows m0 + i, columns n + j of the
// output (o at m0, n; row stride N).
template <int kM, int kN, typename T>
LS_FORCE_INLINE void store_tile(T* o, int64_t N, const T* v) {
  for (int i = 0; i < kM; ++i)
    for (int j = 0; j < kN; ++j) o[i * N + j] = v[j * kM + i];
}

// The part [k0, k1) of K that a tile runs; `part` keeps the accumulators of a
// tile between blocks (null when one block covers K). `next`, where set, is
// what the tiles of this block prefetch, in order from the chunk's first row
// c0: this block's share of the next chunk (rows_fp32).
struct KBlock {
  int64_t k0, k1;
  bool first, last;
  int64_t c0;
  const char* next;
};

// Weight rows n .. n+kN-1 times input rows m0 .. m0+kM-1 over K block kb.
template <int kM, int kN, typename WT>
void tile(const LinearArgs& a, const float* xp, const WT* w, int64_t m0, int64_t n, const KBlock& kb, float* part) {
  static_assert(kM * kN <= kTileAcc, "a tile holds at most kTileAcc accumulators");
  constexpr int kAccN = (kM * kN + kL - 1) / kL * kL;  // whole groups for reduce_lanes (zeros past kM kN)
  const int64_t K = a.K, Kp = padded_k(K), K0 = K / kStep * kStep;
  Vec acc[kAccN];
  // From a zero the compiler does not know where a register is spare (timed
  // at avx2 only): a known one makes the start a memset of the accumulators
  // on the stack (rep stosq), tens of cycles of a tile's ~200 at K = 256 (5
  // rows of K = 256 from cache 1.3x, 1 row 1.1x).
  Vec zero = Vec::zero();
  if constexpr (kTileByHalf && kM * kN < kTileAcc) keep_in_register(zero);
  for (int i = 0; i < kAccN; ++i) acc[i] = kb.first || i >= kM * kN ? zero : Vec::load(part + i * kL);
  const float* x = xp + m0 * Kp;
  const WT* wn = w + n * K;
  const int64_t kend = std::min(kb.k1, K0);
  constexpr int64_t kStepBytes = int64_t{kN} * kStep * sizeof(WT);
  const char* pf = kb.next ? kb.next + ((n - kb.c0) * (kb.k1 - kb.k0) - kb.k0 * kN) * static_cast<int64_t>(sizeof(WT))
                           : prefetch_from<kStepBytes, true>(a, wn, kN * K * static_cast<int64_t>(sizeof(WT)), kb.first && kb.last);
  for (int64_t k = kb.k0; k < kend; k += kStep) {
    prefetch_step<kStepBytes>(pf, k / kStep);
    tile_step<kM, kN>(acc, x + k, Kp, wn + k, K);
  }
  if (kb.last && K0 < K) {  // the tail through a zero-padded copy: nothing past a row is read
    WT buf[kN][kStep];
    for (int j = 0; j < kN; ++j)
      for (int64_t k = 0; k < kStep; ++k) buf[j][k] = K0 + k < K ? wn[j * K + K0 + k] : WT{0};
    tile_step<kM, kN>(acc, x + K0, Kp, &buf[0][0], kStep);
  }
  if (!kb.last) {
    for (int i = 0; i < kM * kN; ++i) acc[i].store(part + i * kL);
    return;
  }
  alignas(64) float sums[kAccN];
  for (int g = 0; g < kAccN; g += kL) reduce_lanes(acc + g).store(sums + g);  // lane j * kM + i: row n + j, m0 + i
  if (a.scale)
    for (int j = 0; j < kN; ++j)
      for (int i = 0; i < kM; ++i) sums[j * kM + i] *= a.scale[n + j];
  if (a.out_dtype == DType::kBFloat16) {
    alignas(64) uint16_t bits[kAccN];
    for (int g = 0; g < kAccN; g += kL) store_bf16(Vec::load(sums + g), bits + g);
    store_tile<kM, kN>(static_cast<uint16_t*>(a.out) + m0 * a.N + n, a.N, bits);
  } else {
    store_tile<kM, kN>(static_cast<float*>(a.out) + m0 * a.N + n, a.N, sums);
  }
}

template <int kM, typename WT>
void rows_block(const LinearArgs& a, const float* xp, const WT* w, int64_t m0, int64_t c0, int64_t c1,
                const KBlock& kb, float* part) {
  constexpr int kN = tile_rows<kM>();
  int64_t n = c0;
  auto at = [&](int64_t r) { return part ? part + (r - c0) * kM * kL : nullptr; };
  for (; n + kN <= c1; n += kN) tile<kM, kN>(a, xp, w, m0, n, kb, at(n));
  for (; n < c1; ++n) tile<kM, 1>(a, xp, w, m0, n, kb, at(n));
}

// Calls f(kM, m0, c0, c1), kM a std::integral_constant, for every block of kM
// <= kRowBlock input rows from m0 and chunk [c0, c1) of the weight rows [n0,
// n1): the row blocks go through a chunk (kChunkBytes of weights, multiple of
// kUnit rows) before the next one, so it is read from memory once.
template <int kUnit, typename F>
LS_FORCE_INLINE void for_each_block(const LinearArgs& a, int64_t w_bytes, int64_t n0, int64_t n1, F&& f) {
  const int64_t chunk =
      std::max<int64_t>(kUnit, kChunkBytes / std::max<int64_t>(1, a.K * w_bytes) / kUnit * kUnit);
  for (int64_t c0 = n0; c0 < n1; c0 += chunk) {
    const int64_t c1 = std::min(n1, c0 + chunk);
    for (int64_t m0 = 0; m0 < a.M; m0 += kRowBlock) {
      const int64_t rows = std::min<int64_t>(kRowBlock, a.M - m0);
      auto call = [&](auto kM) {
        if constexpr (decltype(kM)::value <= kRowBlock) f(kM, m0, c0, c1);
      };
      switch (rows) {
        case 1: call(std::integral_constant<int, 1>{}); break;
        case 2: call(std::integral_constant<int, 2>{}); break;
        case 3: call(std::integral_constant<int, 3>{}); break;
        case 4: call(std::integral_constant<int, 4>{}); break;
        case 5: call(std::integral_constant<int, 5>{}); break;
        case 6: call(std::integral_constant<int, 6>{}); break;
        case 7: call(std::integral_constant<int, 7>{}); break;
        default: call(std::integral_constant<int, 8>{}); break;
      }
    }
  }
}

template <typename WT>
void rows_fp32(const LinearArgs& a, int64_t n0, int64_t n1) {
  static_assert(kRowBlock <= 8, "for_each_block dispatches up to 8 rows");
  const auto* xp = static_cast<const float*>(a.xp);
  const auto* w = static_cast<const WT*>(a.w);
  const int64_t K0 = a.K / kStep * kStep;
  std::vector<float> part;  // accumulators between K blocks: chunk rows x kRowBlock vectors
  for_each_block<kRowUnit>(a, sizeof(WT), n0, n1, [&](auto kM, int64_t m0, int64_t c0, int64_t c1) {
    constexpr int kRows = decltype(kM)::value;
    // K blocks of whole steps whose x (kRows rows of fp32) fits
    // kTileXBlockBytes (vec.h), of even length; the tail step goes with the last.
    const int64_t steps = std::max<int64_t>(1, K0 / kStep);
    const int64_t per_block = kTileXBlockBytes > 0 ? std::max<int64_t>(1, kTileXBlockBytes / (kRows * kStep * 4)) : steps;
    const int64_t blocks = (steps + per_block - 1) / per_block;
    const int64_t block_steps = (steps + blocks - 1) / blocks;
    if (blocks > 1 && part.size() < static_cast<size_t>((c1 - c0) * kRowBlock * kL)) part.resize((c1 - c0) * kRowBlock * kL);
    // With K blocks a tile reads a piece of each of its rows per block, runs
    // the hardware prefetchers pick up late or not at all where they are a
    // page or less (avx2, 4 rows of Llama-1B shapes from DRAM: ~8 GB/s on one
    // core against ~18 from cache). So where the weights stream, the first
    // row block's pass over a chunk prefetches the next chunk of [n0, n1)
    // into L2, in order, one step's width per step: the whole pass overlaps
    // the next chunk's DRAM traffic. Longer pieces (1 row of K = 8192: 8 KB)
    // stream as well without it (timed 8% faster so).
    const bool short_pieces = block_steps * kStep * static_cast<int64_t>(sizeof(WT)) <= kPageBytes;
    const char* next = blocks > 1 && weight_streams(a.N, a.K, sizeof(WT)) && short_pieces && m0 == 0 && c1 < n1
                           ? reinterpret_cast<const char*>(w + c1 * a.K)
                           : nullptr;
    for (int64_t b = 0; b < blocks; ++b) {
      const char* nb = next ? next + b * (c1 - c0) * block_steps * kStep * static_cast<int64_t>(sizeof(WT)) : nullptr;
      const KBlock kb{b * block_steps * kStep, std::min(K0, (b + 1) * block_steps * kStep), b == 0, b == blocks - 1, c0, nb};
      rows_block<kRows>(a, xp, w, m0, c0, c1, kb, blocks > 1 ? part.data() : nullptr);
    }
  });
}

#if defined(LS_HAS_BF16_DOT)
// ---------------------------------------------------------------- VDPBF16PS (bf16 x)
namespace dot {

constexpr int kAcc16 = 16;

// 32 weights from p as bf16: a load for bf16 weights; for int8 ones, widened
// through int32 and fp32 (exact) and packed to bf16. The masked load reads
// nothing past the row.
template <bool kMasked>
LS_FORCE_INLINE __m512bh load_w(const uint16_t* p, __mmask32 mask) {
  return kMasked ? (__m512bh)_mm512_maskz_loadu_epi16(mask, p) : (__m512bh)_mm512_loadu_si512(p);
}

template <bool kMasked>
LS_FORCE_INLINE __m512bh load_w(const int8_t* p, __mmask32 mask) {
  const __m256i b = kMasked ? _mm256_maskz_loadu_epi8(mask, p) : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b)));
  const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1)));
  return _mm512_cvtne2ps_pbh(hi, lo);  // elements 0..15 from lo
}

template <int kM, int kN, bool kMasked, typename WT>
LS_FORCE_INLINE void tile_step(Vec acc[kAcc16], const uint16_t* x, const WT* w, int64_t K, int64_t m0,
                               int64_t n, int64_t k, __mmask32 mask) {
  __m512bh wv[kN];
  for (int j = 0; j < kN; ++j) wv[j] = load_w<kMasked>(w + (n + j) * K + k, mask);
  for (int i = 0; i < kM; ++i) {
    const __m512bh xv = load_w<kMasked>(x + (m0 + i) * K + k, mask);
    for (int j = 0; j < kN; ++j) acc[j * kM + i].v = _mm512_dpbf16_ps(acc[j * kM + i].v, xv, wv[j]);
  }
}

template <int kM, int kN, typename WT>
void tile(const LinearArgs& a, const uint16_t* x, const WT* w, int64_t m0, int64_t n) {
  static_assert(kM * kN <= kAcc16, "one tile holds at most 16 accumulators");
  const int64_t K = a.K, N = a.N;
  Vec acc[kAcc16];
  for (int i = 0; i < kAcc16; ++i) acc[i] = Vec::zero();
  const int64_t K32 = K / 32 * 32;
  constexpr int64_t kStepBytes = int64_t{kN} * 32 * sizeof(WT);
  const char* pf = prefetch_from<kStepBytes, false>(a, w + n * K, kN * K * static_cast<int64_t>(sizeof(WT)), true);
  for (int64_t k = 0; k < K32; k += 32) {
    prefetch_step<kStepBytes>(pf, k / 32);
    tile_step<kM, kN, false>(acc, x, w, K, m0, n, k, 0);
  }
  if (K32 < K)
    tile_step<kM, kN, true>(acc, x, w, K, m0, n, K32, static_cast<__mmask32>((uint64_t{1} << (K - K32)) - 1));
  auto* o = static_cast<uint16_t*>(a.out);
  {  // every tile, 1 x 1 included, through the same tree and rounding: a row's result is the same in any tile
    __m512 sums = reduce_lanes(acc).v;  // lane j * kM + i: weight row n + j, input row m0 + i
    if (a.scale) {
      alignas(64) float f[kAcc16] = {};
      for (int j = 0; j < kN; ++j)
        for (int i = 0; i < kM; ++i) f[j * kM + i] = a.scale[n + j];
      sums = _mm512_mul_ps(sums, _mm512_load_ps(f));
    }
    // 16 sums to bf16 in one instruction (round to nearest even, as the
    // reference's cast; VCVTNEPS2BF16 flushes fp32 denormals to zero).
    const __m256i bits = (__m256i)_mm512_cvtneps_pbh(sums);
    if constexpr (kM == 1 && kN == kAcc16) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + m0 * N + n), bits);  // one row: 16 outputs in a row
    } else {
      alignas(32) uint16_t b[kAcc16];
      _mm256_store_si256(reinterpret_cast<__m256i*>(b), bits);
      for (int j = 0; j < kN; ++j)
        for (int i = 0; i < kM; ++i) o[(m0 + i) * N + n + j] = b[j * kM + i];
    }
  }
}

template <int kM, typename WT>
void rows_block(const LinearArgs& a, const uint16_t* x, const WT* w, int64_t m0, int64_t n0, int64_t n1) {
  constexpr int kN = kAcc16 / kM;
  int64_t n = n0;
  for (; n + kN <= n1; n += kN) tile<kM, kN>(a, x, w, m0, n);
  for (; n < n1; ++n) tile<kM, 1>(a, x, w, m0, n);
}

template <typename WT>
void rows(const LinearArgs& a, int64_t n0, int64_t n1) {
  const auto* x = static_cast<const uint16_t*>(a.xp);
  const auto* w = static_cast<const WT*>(a.w);
  for_each_block<kAcc16>(a, sizeof(WT), n0, n1, [&](auto kM, int64_t m0, int64_t c0, int64_t c1) {
    rows_block<decltype(kM)::value>(a, x, w, m0, c0, c1);
  });
}

}  // namespace dot
#endif

// Whether a product runs on VDPBF16PS with x kept in bf16.
inline bool use_bf16_dot(WeightKind wk, DType x_dtype) {
#if defined(LS_HAS_BF16_DOT)
  return x_dtype == DType::kBFloat16 && wk != WeightKind::kF32;
#else
  (void)wk;
  (void)x_dtype;
  return false;
#endif
}

int64_t linear_x_bytes(WeightKind wk, DType x_dtype, int64_t M, int64_t K) {
  if (use_bf16_dot(wk, x_dtype)) return std::max<int64_t>(M * K, 1) * 2;
  return std::max<int64_t>(M * padded_k(K), 1) * 4;
}

// x [M, K] in x_dtype -> fp32 rows of padded_k(K) (zeros past K), each block of
// kStep in the order load_w_half widens weights of kind wk; bf16 x for
// VDPBF16PS is copied as is.
void linear_prepare_x(WeightKind wk, DType x_dtype, const void* x, int64_t M, int64_t K, void* xp) {
  if (use_bf16_dot(wk, x_dtype)) {
    std::memcpy(xp, x, M * K * 2);
    return;
  }
  const int64_t Kp = padded_k(K), K0 = K / kStep * kStep;
  const bool split = kBf16Split && wk == WeightKind::kBf16;
  const bool bf16_x = x_dtype == DType::kBFloat16;
  for (int64_t m = 0; m < M; ++m) {
    float* dst = static_cast<float*>(xp) + m * Kp;
    int64_t k = 0;
    // Whole steps by the weights' own widening: fp32 x, and bf16 x with bf16
    // weights (both come out in the weights' order); bf16 x with int8 weights
    // (in order, where bf16 widens split) takes the loop below.
    if (!bf16_x || wk == WeightKind::kBf16) {
      for (; k < K0; k += kStep) {
        if (bf16_x) {
          const uint16_t* src = static_cast<const uint16_t*>(x) + m * K + k;
          load_w_half<0>(src).store(dst + k);
          load_w_half<1>(src).store(dst + k + kL);
        } else {
          const float* src = static_cast<const float*>(x) + m * K + k;
          load_w_half<0>(src).store(dst + k);
          load_w_half<1>(src).store(dst + k + kL);
        }
      }
    }
    for (; k < Kp; ++k) {
      float v = 0.f;
      if (k < K) v = bf16_x ? widen(static_cast<const uint16_t*>(x)[m * K + k]) : static_cast<const float*>(x)[m * K + k];
      // Element e of a block goes where load_w_half puts weight e: the even
      // ones first, then the odd ones, when bf16 weights are split.
      const int64_t e = k % kStep;
      const int64_t at = split ? k - e + (e % 2) * kL + e / 2 : k;
      dst[at] = v;
    }
  }
}

void linear_rows(const LinearArgs& a, int64_t n0, int64_t n1) {
  if (use_bf16_dot(a.wk, a.out_dtype)) {
#if defined(LS_HAS_BF16_DOT)
    if (a.wk == WeightKind::kInt8)
      dot::rows<int8_t>(a, n0, n1);
    else
      dot::rows<uint16_t>(a, n0, n1);
#endif
    return;
  }
  switch (a.wk) {
    case WeightKind::kBf16: rows_fp32<uint16_t>(a, n0, n1); break;
    case WeightKind::kF32: rows_fp32<float>(a, n0, n1); break;
    case WeightKind::kInt8: rows_fp32<int8_t>(a, n0, n1); break;
  }
}
