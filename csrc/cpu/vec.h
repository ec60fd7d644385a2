// Vec: a vector of Vec::kLanes fp32 lanes for the level being compiled, so one
// kernel loop serves 16 lanes (AVX-512), 8 (AVX2) and the portable fallback (8
// lanes in an array, which the compiler vectorizes as far as the baseline
// allows). Included by csrc/cpu/level_kernels.h inside the level's namespace
// and instruction-set region; no includes here.
//
// The weight loads widen 2 * kLanes weights into two fp32 vectors `a`, `b`, in
// the order prepare_x lays out x (kBf16Split: bf16 weights come out as the even
// and the odd elements, two integer ops for 2 * kLanes weights; x is stored
// the same way, so the sum of products is the same set of terms).

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

LS_FORCE_INLINE void load_w2(const float* p, Vec& a, Vec& b) {
  a = Vec::load(p);
  b = Vec::load(p + 16);
}
LS_FORCE_INLINE void load_w2(const uint16_t* p, Vec& a, Vec& b) {
  const __m512i r = _mm512_loadu_si512(p);
  a.v = _mm512_castsi512_ps(_mm512_slli_epi32(r, 16));                          // even elements
  b.v = _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(-65536)));   // odd elements
}
LS_FORCE_INLINE void load_w2(const int8_t* p, Vec& a, Vec& b) {
  a.v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  b.v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
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

LS_FORCE_INLINE void load_w2(const float* p, Vec& a, Vec& b) {
  a = Vec::load(p);
  b = Vec::load(p + 8);
}
LS_FORCE_INLINE void load_w2(const uint16_t* p, Vec& a, Vec& b) {
  const __m256i r = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  a.v = _mm256_castsi256_ps(_mm256_slli_epi32(r, 16));                         // even elements
  b.v = _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(-65536)));  // odd elements
}
LS_FORCE_INLINE void load_w2(const int8_t* p, Vec& a, Vec& b) {
  a.v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  b.v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8))));
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
  static constexpr int kRegs = 16;  // SSE registers (two per Vec: a rough guide)
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

template <typename WT>
LS_FORCE_INLINE void load_w2(const WT* p, Vec& a, Vec& b) {
  for (int i = 0; i < 8; ++i) {
    a.v[i] = widen(p[i]);
    b.v[i] = widen(p[i + 8]);
  }
}

LS_FORCE_INLINE Vec reduce_lanes(const Vec v[8]) {
  Vec r;
  for (int j = 0; j < 8; ++j) r.v[j] = reduce_add(v[j]);
  return r;
}

#endif
