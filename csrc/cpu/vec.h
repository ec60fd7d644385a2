// Vec: a vector of Vec::kLanes fp32 lanes for the level being compiled, so one
// kernel loop serves 16 lanes (AVX-512), 8 (AVX2) and the portable fallback (8
// lanes in an array, which the compiler vectorizes as far as the baseline
// allows). Included by csrc/cpu/level_kernels.h inside the level's namespace
// and instruction-set region; no includes here.
//
// load_w_half<h>(p) widens half h (0 or 1) of the 2 * kLanes weights at p to
// one fp32 vector, in the order prepare_x lays out x (kBf16Split: bf16 weights
// come out as the even (h = 0) and the odd (h = 1) elements, one integer op per
// half on one load; x is stored the same way, so the sum of products is the
// same set of terms).
//
// Each level also sets the shape of the linear_rows tiles (linear_kernels.h)
// for its register file (Vec::kRegs vectors): kTileAcc, the most fp32
// accumulators a tile keeps in registers; kTileRowBlock, the most input rows a
// pass over the weights takes; kTileByHalf, whether a tile step goes through
// the even, then the odd halves (half the operands held: larger tiles in 16
// registers) or both at once (one load per weight vector); kTileXBlockBytes,
// the prepared x of a row block that one K block of a pass reads (it stays in
// L1 while the weight rows go past; 0: no K blocks); kTileRows, the weight
// rows of a tile of 1 .. kTileRowBlock input rows (at most kTileAcc
// accumulators, and registers for them, the operand the inner loop keeps (the
// x rows or the widened weights, whichever are fewer: one half of each at a
// time where kTileByHalf, both halves otherwise), the one it streams and a
// constant (the bf16 mask); one input row takes kL weight rows, not more: its
// rows are streams through L1, and rows 4 KB apart (K = 2048 in bf16) share
// the cache sets, 8 ways of them); kTileRowUnit, the weight rows of the chunks
// and of the split over threads: whole tiles of the common row counts.
//
// keep_in_register(v): an empty asm that leaves v in a register at that
// point, so the compiler neither folds its load into every instruction that
// uses it nor knows its value (linear_kernels.h says where that was timed).

// fp32 -> bf16 bits, round to nearest even (as torch's cast); NaN stays NaN.
// store_bf16(v, p) writes the kLanes lanes of v so, to p.
LS_FORCE_INLINE uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#if defined(LS_VEC_AVX512)

struct Vec {
  static constexpr int kLanes = 16;
  static constexpr int kRegs = 32;  // vector registers
  __m512 v;
  static Vec zero() { return {_mm512_setzero_ps()}; }
  static Vec set1(float x) { return {_mm512_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
};
LS_FORCE_INLINE Vec fmadd(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
LS_FORCE_INLINE float reduce_add(Vec a) { return _mm512_reduce_add_ps(a.v); }
constexpr bool kBf16Split = true;

LS_FORCE_INLINE void store_bf16(Vec v, uint16_t* p) {
  const __m512i u = _mm512_castps_si512(v.v), hi = _mm512_srli_epi32(u, 16);
  const __m512i bias = _mm512_add_epi32(_mm512_and_si512(hi, _mm512_set1_epi32(1)), _mm512_set1_epi32(0x7fff));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
  const __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  const __m512i b = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(b));
}

constexpr int kTileAcc = 16;  // one transpose-and-add tree (reduce_lanes) sums them
constexpr int kTileRowBlock = 8;
constexpr bool kTileByHalf = false;
// Tiles of 2 to 16 weight rows per x row: no K blocks (timed slower with them).
constexpr int64_t kTileXBlockBytes = 0;
constexpr int kTileRows[kTileRowBlock] = {16, 8, 5, 4, 3, 2, 2, 2};
constexpr int64_t kTileRowUnit = 16;  // the tiles of 1 and 2 rows; 3 rows are few at 16 lanes

LS_FORCE_INLINE void keep_in_register(Vec& a) { asm("" : "+v"(a.v)); }

template <int h>
LS_FORCE_INLINE Vec load_w_half(const float* p) {
  return Vec::load(p + 16 * h);
}
template <int h>
LS_FORCE_INLINE Vec load_w_half(const uint16_t* p) {
  const __m512i r = _mm512_loadu_si512(p);
  if constexpr (h == 0) return {_mm512_castsi512_ps(_mm512_slli_epi32(r, 16))};    // even elements
  return {_mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(-65536)))};  // odd elements
}
template <int h>
LS_FORCE_INLINE Vec load_w_half(const int8_t* p) {
  return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * h))))};
}

// Lane j of the result is the sum of the 16 lanes of v[j]: a transpose-and-add
// tree, ~45 instructions for 16 sums where one reduction each would take ~160.
LS_FORCE_INLINE Vec reduce_lanes(const Vec v[16]) {
  __m512 w[8], x[4];
  for (int i = 0; i < 8; ++i)  // 128-bit lanes 0,1 belong to v[2i], lanes 2,3 to v[2i+1]
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i].v, v[2 * i + 1].v, 0x44),
                         _mm512_shuffle_f32x4(v[2 * i].v, v[2 * i + 1].v, 0xEE));
  for (int i = 0; i < 4; ++i)  // lane k belongs to v[4i + k]
    x[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0xDD));
  const __m512 y0 = _mm512_add_ps(_mm512_unpacklo_ps(x[0], x[1]), _mm512_unpackhi_ps(x[0], x[1]));
  const __m512 y1 = _mm512_add_ps(_mm512_unpacklo_ps(x[2], x[3]), _mm512_unpackhi_ps(x[2], x[3]));
  // Element 4k + e now holds the sum of v[4e + k]: transpose the 4 x 4 index.
  const __m512 z = _mm512_add_ps(_mm512_shuffle_ps(y0, y1, 0x44), _mm512_shuffle_ps(y0, y1, 0xEE));
  const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return {_mm512_permutexvar_ps(idx, z)};
}

#elif defined(LS_VEC_AVX2)

struct Vec {
  static constexpr int kLanes = 8;
  static constexpr int kRegs = 16;  // vector registers
  __m256 v;
  static Vec zero() { return {_mm256_setzero_ps()}; }
  static Vec set1(float x) { return {_mm256_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
};
LS_FORCE_INLINE Vec fmadd(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
LS_FORCE_INLINE float reduce_add(Vec a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
constexpr bool kBf16Split = true;

LS_FORCE_INLINE void store_bf16(Vec v, uint16_t* p) {
  const __m256i u = _mm256_castps_si256(v.v), hi = _mm256_srli_epi32(u, 16);
  const __m256i bias = _mm256_add_epi32(_mm256_and_si256(hi, _mm256_set1_epi32(1)), _mm256_set1_epi32(0x7fff));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                         _mm256_set1_epi32(0x7f800000));
  const __m256i b = _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
}

// Up to 12 accumulators, one half at a time: 6 input rows per pass as 6 x 2
// tiles, where 8 rows fit only 8 x 1 (a load per FMA, and the x rows read
// again for every weight row).
constexpr int kTileAcc = 12;
constexpr int kTileRowBlock = 6;
constexpr bool kTileByHalf = true;
// 5 rows of K = 2048 in fp32 are 40 KB, read again for every 1 or 2 weight
// rows: K blocks of 16 KB keep them in L1.
constexpr int64_t kTileXBlockBytes = 16 * 1024;
// Timed with GCC 12 on Zen 4 (one core, tiles in L1, avx2): 2 input rows take
// 4 weight rows, not the 6 that fit 12 accumulators: with the 2 x halves, the
// widened weight and the mask those fill all 16 registers and the compiler
// spills accumulators to the stack (4.6 FMAs/ns; 2 x 4: 5.9, against ~7.3 at
// the FMA peak). 8 accumulators are just enough FMA chains (latency 4 x 2 a
// cycle) where no other operand is a load too many.
constexpr int kTileRows[kTileRowBlock] = {8, 4, 3, 2, 2, 2};
// Whole tiles of 1, 2 and 3 rows: a chunk of K = 8192 is one unit (24 rows),
// and a 1-wide tile of 3 input rows runs at about half the speed of 3 x 3.
constexpr int64_t kTileRowUnit = 24;

LS_FORCE_INLINE void keep_in_register(Vec& a) { asm("" : "+x"(a.v)); }

template <int h>
LS_FORCE_INLINE Vec load_w_half(const float* p) {
  return Vec::load(p + 8 * h);
}
template <int h>
LS_FORCE_INLINE Vec load_w_half(const uint16_t* p) {
  const __m256i r = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  if constexpr (h == 0) return {_mm256_castsi256_ps(_mm256_slli_epi32(r, 16))};    // even elements
  return {_mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(-65536)))};  // odd elements
}
template <int h>
LS_FORCE_INLINE Vec load_w_half(const int8_t* p) {
  return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * h))))};
}

// Lane j of the result is the sum of the 8 lanes of v[j]: two rounds of
// horizontal adds (each halves the vectors), then the two 128-bit halves.
LS_FORCE_INLINE Vec reduce_lanes(const Vec v[8]) {
  const __m256 h0 = _mm256_hadd_ps(v[0].v, v[1].v), h1 = _mm256_hadd_ps(v[2].v, v[3].v);
  const __m256 h2 = _mm256_hadd_ps(v[4].v, v[5].v), h3 = _mm256_hadd_ps(v[6].v, v[7].v);
  const __m256 g0 = _mm256_hadd_ps(h0, h1), g1 = _mm256_hadd_ps(h2, h3);  // [v0..v3 low half | high half]
  return {_mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20), _mm256_permute2f128_ps(g0, g1, 0x31))};
}

#else  // portable: plain loops over an array

struct Vec {
  static constexpr int kLanes = 8;
  static constexpr int kRegs = 8;  // 16 SSE registers, two per Vec (a rough guide)
  float v[8];
  static Vec zero() { return set1(0.f); }
  static Vec set1(float x) {
    Vec r;
    for (int i = 0; i < 8; ++i) r.v[i] = x;
    return r;
  }
  static Vec load(const float* p) {
    Vec r;
    for (int i = 0; i < 8; ++i) r.v[i] = p[i];
    return r;
  }
  void store(float* p) const {
    for (int i = 0; i < 8; ++i) p[i] = v[i];
  }
};
// Multiply, then add (two roundings): a fused multiply-add is a library call
// without the FMA instructions.
LS_FORCE_INLINE Vec fmadd(Vec a, Vec b, Vec c) {
  for (int i = 0; i < 8; ++i) c.v[i] += a.v[i] * b.v[i];
  return c;
}
LS_FORCE_INLINE float reduce_add(Vec a) {
  float s = 0.f;
  for (int i = 0; i < 8; ++i) s += a.v[i];
  return s;
}
constexpr bool kBf16Split = false;

LS_FORCE_INLINE void store_bf16(Vec v, uint16_t* p) {
  for (int i = 0; i < 8; ++i) p[i] = bf16_bits(v.v[i]);
}

constexpr int kTileAcc = 8;
constexpr int kTileRowBlock = 8;
constexpr bool kTileByHalf = false;
constexpr int64_t kTileXBlockBytes = 0;
constexpr int kTileRows[kTileRowBlock] = {4, 1, 1, 1, 1, 1, 1, 1};
constexpr int64_t kTileRowUnit = 4;

LS_FORCE_INLINE void keep_in_register(Vec&) {}

template <int h, typename WT>
LS_FORCE_INLINE Vec load_w_half(const WT* p) {
  Vec a;
  for (int i = 0; i < 8; ++i) a.v[i] = widen(p[8 * h + i]);
  return a;
}

LS_FORCE_INLINE Vec reduce_lanes(const Vec v[8]) {
  Vec r;
  for (int j = 0; j < 8; ++j) r.v[j] = reduce_add(v[j]);
  return r;
}

#endif
