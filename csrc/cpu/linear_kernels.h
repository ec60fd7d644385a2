// linear_rows / linear_rows_int8 kernels of one CPU level (included by
// level_kernels.h inside the level's namespace): y = x @ weight^T for the few
// rows of a decode step, raw pointers, output columns [n0, n1).
//
// A decode step multiplies 1 to k+1 rows per sequence by each weight matrix.
// ATen's GEMM costs ~10 us a call at any such size on these CPUs, several times
// the time to stream a 256 x 256 weight, and a step makes dozens of calls. This
// kernel streams each weight row once per block of up to kRowBlock input rows:
// weights are widened to fp32 in registers (bf16: a shift or a mask; int8: a
// sign extension and a conversion) and multiplied into tiles of kAcc = kLanes
// fp32 accumulators ((weight rows) x (input rows)), x prepared once in fp32 in
// the order the widened weights come out; the tile's horizontal sums are one
// transpose-and-add tree (reduce_lanes). On AVX-512-BF16, bf16 x with bf16 or
// int8 weights instead multiply 32 bf16 pairs per VDPBF16PS (x stays bf16).
// Outputs: fp32 sums, times the row's scale for int8 weights, rounded once to
// x's dtype (round to nearest even for bf16).

constexpr int kL = Vec::kLanes;
constexpr int kAcc = kL;          // accumulators per tile: (weight rows) x (input rows) <= kAcc
constexpr int kStep = 2 * kL;     // weights along K per step (two vectors)
constexpr int64_t kRowBlock = 8;  // input rows per pass over the weights
// Weight rows per chunk that every row block of a call goes through before the
// next chunk: a chunk stays in L2 while the row blocks re-read it.
constexpr int64_t kChunkBytes = 128 * 1024;

inline int64_t padded_k(int64_t K) { return (K + kStep - 1) / kStep * kStep; }

// fp32 -> bf16 bits, round to nearest even (as torch's cast); NaN stays NaN.
LS_FORCE_INLINE uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

LS_FORCE_INLINE void store_out(const LinearArgs& a, int64_t m, int64_t n, float v) {
  if (a.out_dtype == DType::kBFloat16)
    static_cast<uint16_t*>(a.out)[m * a.N + n] = bf16_bits(v);
  else
    static_cast<float*>(a.out)[m * a.N + n] = v;
}

// One step of kStep along K of a tile: kN weight rows (stride ws) times kM rows
// of prepared x (stride xs). One row: each weight vector is used once, x is
// loaded once. More rows: the tile's widened weights stay in registers while
// each x row is loaded once (rows_block sizes kN so that they fit).
template <int kM, int kN, typename WT>
LS_FORCE_INLINE void tile_step(Vec acc[kAcc], const float* x, int64_t xs, const WT* w, int64_t ws) {
  if constexpr (kM == 1) {
    const Vec x0 = Vec::load(x), x1 = Vec::load(x + kL);
    for (int j = 0; j < kN; ++j) {
      Vec w0, w1;
      load_w2(w + j * ws, w0, w1);
      acc[j] = fmadd(w1, x1, fmadd(w0, x0, acc[j]));
    }
  } else {
    Vec w0[kN], w1[kN];
    for (int j = 0; j < kN; ++j) load_w2(w + j * ws, w0[j], w1[j]);
    for (int i = 0; i < kM; ++i) {
      const Vec x0 = Vec::load(x + i * xs), x1 = Vec::load(x + i * xs + kL);
      for (int j = 0; j < kN; ++j) acc[j * kM + i] = fmadd(w1[j], x1, fmadd(w0[j], x0, acc[j * kM + i]));
    }
  }
}

// Weight rows n .. n+kN-1 times input rows m0 .. m0+kM-1.
template <int kM, int kN, typename WT>
void tile(const LinearArgs& a, const float* xp, const WT* w, int64_t m0, int64_t n) {
  static_assert(kM * kN <= kAcc, "a tile holds at most kAcc accumulators");
  const int64_t K = a.K, Kp = padded_k(K), K0 = K / kStep * kStep;
  Vec acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = Vec::zero();
  const float* x = xp + m0 * Kp;
  const WT* wn = w + n * K;
  for (int64_t k = 0; k < K0; k += kStep) tile_step<kM, kN>(acc, x + k, Kp, wn + k, K);
  if (K0 < K) {  // the tail through a zero-padded copy: nothing past a row is read
    WT buf[kN][kStep] = {};
    for (int j = 0; j < kN; ++j)
      for (int64_t k = K0; k < K; ++k) buf[j][k - K0] = wn[j * K + k];
    tile_step<kM, kN>(acc, x + K0, Kp, &buf[0][0], kStep);
  }
  if constexpr (kM * kN == 1) {
    const float s = reduce_add(acc[0]);
    store_out(a, m0, n, a.scale ? s * a.scale[n] : s);
  } else {
    alignas(64) float sums[kAcc];
    reduce_lanes(acc).store(sums);  // lane j * kM + i: weight row n + j, input row m0 + i
    for (int j = 0; j < kN; ++j)
      for (int i = 0; i < kM; ++i) {
        const float s = sums[j * kM + i];
        store_out(a, m0 + i, n + j, a.scale ? s * a.scale[n + j] : s);
      }
  }
}

// Weight rows per tile for kM input rows: at most kAcc accumulators, and for
// several rows, registers for the tile's 2 kN widened weights, its kM kN
// accumulators, two x vectors and a constant (the bf16 mask).
template <int kM>
constexpr int tile_rows() {
  if (kM == 1) return kAcc;
  const int by_regs = (Vec::kRegs - 3) / (2 + kM);
  return std::max(1, std::min(kAcc / kM, by_regs));
}

template <int kM, typename WT>
void rows_block(const LinearArgs& a, const float* xp, const WT* w, int64_t m0, int64_t n0, int64_t n1) {
  constexpr int kN = tile_rows<kM>();
  int64_t n = n0;
  for (; n + kN <= n1; n += kN) tile<kM, kN>(a, xp, w, m0, n);
  for (; n < n1; ++n) tile<kM, 1>(a, xp, w, m0, n);
}

// Calls f(kM, m0, c0, c1), kM a std::integral_constant, for every block of kM
// <= kRowBlock input rows from m0 and chunk [c0, c1) of the weight rows [n0,
// n1): the row blocks go through a chunk (kChunkBytes of weights, multiple of
// kTileAcc rows) before the next one, so it is read from memory once.
template <int kTileAcc, typename F>
LS_FORCE_INLINE void for_each_block(const LinearArgs& a, int64_t w_bytes, int64_t n0, int64_t n1, F&& f) {
  const int64_t chunk =
      std::max<int64_t>(kTileAcc, kChunkBytes / std::max<int64_t>(1, a.K * w_bytes) / kTileAcc * kTileAcc);
  for (int64_t c0 = n0; c0 < n1; c0 += chunk) {
    const int64_t c1 = std::min(n1, c0 + chunk);
    for (int64_t m0 = 0; m0 < a.M; m0 += kRowBlock) {
      switch (std::min<int64_t>(kRowBlock, a.M - m0)) {
        case 1: f(std::integral_constant<int, 1>{}, m0, c0, c1); break;
        case 2: f(std::integral_constant<int, 2>{}, m0, c0, c1); break;
        case 3: f(std::integral_constant<int, 3>{}, m0, c0, c1); break;
        case 4: f(std::integral_constant<int, 4>{}, m0, c0, c1); break;
        case 5: f(std::integral_constant<int, 5>{}, m0, c0, c1); break;
        case 6: f(std::integral_constant<int, 6>{}, m0, c0, c1); break;
        case 7: f(std::integral_constant<int, 7>{}, m0, c0, c1); break;
        default: f(std::integral_constant<int, 8>{}, m0, c0, c1); break;
      }
    }
  }
}

template <typename WT>
void rows_fp32(const LinearArgs& a, int64_t n0, int64_t n1) {
  const auto* xp = static_cast<const float*>(a.xp);
  const auto* w = static_cast<const WT*>(a.w);
  for_each_block<kAcc>(a, sizeof(WT), n0, n1, [&](auto kM, int64_t m0, int64_t c0, int64_t c1) {
    rows_block<decltype(kM)::value>(a, xp, w, m0, c0, c1);
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
  for (int64_t k = 0; k < K32; k += 32) tile_step<kM, kN, false>(acc, x, w, K, m0, n, k, 0);
  if (K32 < K)
    tile_step<kM, kN, true>(acc, x, w, K, m0, n, K32, static_cast<__mmask32>((uint64_t{1} << (K - K32)) - 1));
  auto* o = static_cast<uint16_t*>(a.out);
  if constexpr (kM * kN == 1) {
    const float sum = reduce_add(acc[0]);
    o[m0 * N + n] = bf16_bits(a.scale ? sum * a.scale[n] : sum);
  } else {
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
// kStep in the order load_w2 widens weights of kind wk; bf16 x for VDPBF16PS
// is copied as is.
void linear_prepare_x(WeightKind wk, DType x_dtype, const void* x, int64_t M, int64_t K, void* xp) {
  if (use_bf16_dot(wk, x_dtype)) {
    std::memcpy(xp, x, M * K * 2);
    return;
  }
  const int64_t Kp = padded_k(K);
  const bool split = kBf16Split && wk == WeightKind::kBf16;
  for (int64_t m = 0; m < M; ++m) {
    float* dst = static_cast<float*>(xp) + m * Kp;
    for (int64_t k = 0; k < Kp; ++k) {
      float v = 0.f;
      if (k < K) {
        v = x_dtype == DType::kBFloat16 ? widen(static_cast<const uint16_t*>(x)[m * K + k])
                                        : static_cast<const float*>(x)[m * K + k];
      }
      // Element e of a block goes where load_w2 puts weight e: the even ones
      // first, then the odd ones, when bf16 weights are split.
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
