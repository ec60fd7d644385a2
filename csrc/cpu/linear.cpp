// linear_rows on the CPU: y = x @ weight^T for the few rows of a decode step.
//
// A decode step multiplies 1 to k+1 rows per sequence by each weight matrix.
// ATen's bf16 GEMM (oneDNN) costs ~14 us a call at any such size on this
// class of CPU, several times the time to stream a 256 x 256 weight, and a
// step makes dozens of calls. This kernel streams each weight row once per
// block of up to kRowBlock input rows: VDPBF16PS multiplies 32 bf16 pairs and
// accumulates in fp32, in tiles of 16 accumulators ((weight rows) x (input
// rows); the input rows stay in L1) whose horizontal sums are one
// transpose-and-add tree. Weight rows are split across threads.
//
// linear_rows_int8 is the same kernel for int8 weights with one fp32 scale per
// weight row (a draft's quantized LM head, half the bytes of bf16): each 32
// weights are widened to bf16 on the fly (exact: every int8 value is a bf16)
// and the row's sum is multiplied by its scale before the bf16 output.
//
// bf16 x with AVX512-BF16 only; other dtypes, and builds without the ISA, run
// ATen's linear (same result up to summation order; int8 weights are widened
// to fp32 first).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>
#define LAYERSKIP_LINEAR_ROWS_AVX512BF16 1
#endif

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/kernels.h"

namespace layerskip::cpu {
namespace {

#ifdef LAYERSKIP_LINEAR_ROWS_AVX512BF16
constexpr int64_t kRowBlock = 8;  // input rows per pass over the weights
constexpr int kAcc = 16;          // accumulators per tile: (weight rows) x (input rows) <= 16
constexpr int64_t kParallelWork = 384 * 1024;  // weight elements x row factor per task (see rows_product)

// GCC 12 reports the "undefined" pass-through operand inside its own shuffle
// and reduction intrinsics as uninitialized (a false positive of its headers).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Lane j of the result is the sum of the 16 lanes of v[j]: a transpose-and-add
// tree, ~45 instructions for 16 sums where one reduction each would take ~160.
inline __m512 sum16(const __m512 v[kAcc]) {
  __m512 w[8], x[4];
  for (int i = 0; i < 8; ++i)  // 128-bit lanes 0,1 belong to v[2i], lanes 2,3 to v[2i+1]
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)  // lane k belongs to v[4i + k]
    x[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0xDD));
  const __m512 y0 = _mm512_add_ps(_mm512_unpacklo_ps(x[0], x[1]), _mm512_unpackhi_ps(x[0], x[1]));
  const __m512 y1 = _mm512_add_ps(_mm512_unpacklo_ps(x[2], x[3]), _mm512_unpackhi_ps(x[2], x[3]));
  // Element 4k + e now holds the sum of v[4e + k]: transpose the 4 x 4 index.
  const __m512 z = _mm512_add_ps(_mm512_shuffle_ps(y0, y1, 0x44), _mm512_shuffle_ps(y0, y1, 0xEE));
  const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(idx, z);
}

// 32 weights from p as bf16: a load for bf16 weights; for int8 ones, widened
// through int32 and fp32 (exact) and packed to bf16. The masked load reads
// nothing past the row.
template <bool kMasked>
inline __m512bh load_w(const uint16_t* p, __mmask32 mask) {
  return kMasked ? (__m512bh)_mm512_maskz_loadu_epi16(mask, p) : (__m512bh)_mm512_loadu_si512(p);
}

template <bool kMasked>
inline __m512bh load_w(const int8_t* p, __mmask32 mask) {
  const __m256i b = kMasked ? _mm256_maskz_loadu_epi8(mask, p) : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b)));
  const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1)));
  return _mm512_cvtne2ps_pbh(hi, lo);  // elements 0..15 from lo
}

// One step of 32 along K of a tile: kN weight vectors and kM input vectors
// (from L1) for kN * kM VDPBF16PS.
template <int kM, int kN, bool kMasked, typename WT>
inline void tile_step(__m512 acc[kAcc], const uint16_t* x, const WT* w, int64_t K, int64_t m0,
                      int64_t n, int64_t k, __mmask32 mask) {
  __m512bh wv[kN];
  for (int j = 0; j < kN; ++j) wv[j] = load_w<kMasked>(w + (n + j) * K + k, mask);
  for (int i = 0; i < kM; ++i) {
    const __m512bh xv = load_w<kMasked>(x + (m0 + i) * K + k, mask);
    for (int j = 0; j < kN; ++j) acc[j * kM + i] = _mm512_dpbf16_ps(acc[j * kM + i], xv, wv[j]);
  }
}

// A tile of kN weight rows n .. n+kN-1 times kM input rows m0 .. m0+kM-1;
// with `scale` (int8 weights), weight row j's sums are multiplied by scale[j].
template <int kM, int kN, typename WT>
void tile(const uint16_t* x, const WT* w, const float* scale, at::BFloat16* out, int64_t K, int64_t N,
          int64_t m0, int64_t n) {
  static_assert(kM * kN <= kAcc, "one tile holds at most 16 accumulators");
  __m512 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_setzero_ps();
  const int64_t K32 = K / 32 * 32;
  for (int64_t k = 0; k < K32; k += 32) tile_step<kM, kN, false>(acc, x, w, K, m0, n, k, 0);
  if (K32 < K)
    tile_step<kM, kN, true>(acc, x, w, K, m0, n, K32, static_cast<__mmask32>((uint64_t{1} << (K - K32)) - 1));
  if constexpr (kM * kN == 1) {
    const float sum = _mm512_reduce_add_ps(acc[0]);
    out[m0 * N + n] = at::BFloat16(scale ? sum * scale[n] : sum);
  } else {
    __m512 sums = sum16(acc);  // lane j * kM + i: weight row n + j, input row m0 + i
    if (scale) {
      alignas(64) float f[kAcc] = {};
      for (int j = 0; j < kN; ++j)
        for (int i = 0; i < kM; ++i) f[j * kM + i] = scale[n + j];
      sums = _mm512_mul_ps(sums, _mm512_load_ps(f));
    }
    // 16 sums to bf16 in one instruction (round to nearest even, as the
    // reference's cast; VCVTNEPS2BF16 flushes fp32 denormals to zero).
    const __m256i bits = (__m256i)_mm512_cvtneps_pbh(sums);
    if constexpr (kM == 1 && kN == kAcc) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m0 * N + n), bits);  // one row: 16 outputs in a row
    } else {
      alignas(32) uint16_t b[kAcc];
      _mm256_store_si256(reinterpret_cast<__m256i*>(b), bits);
      auto* o = reinterpret_cast<uint16_t*>(out);
      for (int j = 0; j < kN; ++j)
        for (int i = 0; i < kM; ++i) o[(m0 + i) * N + n + j] = b[j * kM + i];
    }
  }
}

// Weight rows [n0, n1) times kM input rows from m0: tiles of 16 / kM weight
// rows, then single rows for the remainder.
template <int kM, typename WT>
void rows_block(const uint16_t* x, const WT* w, const float* scale, at::BFloat16* out, int64_t K,
                int64_t N, int64_t m0, int64_t n0, int64_t n1) {
  constexpr int kN = kAcc / kM;
  int64_t n = n0;
  for (; n + kN <= n1; n += kN) tile<kM, kN>(x, w, scale, out, K, N, m0, n);
  for (; n < n1; ++n) tile<kM, 1>(x, w, scale, out, K, N, m0, n);
}

template <typename WT>
void rows_block(const uint16_t* x, const WT* w, const float* scale, at::BFloat16* out, int64_t K,
                int64_t N, int64_t m0, int64_t mb, int64_t n0, int64_t n1) {
  switch (mb) {
    case 1: return rows_block<1>(x, w, scale, out, K, N, m0, n0, n1);
    case 2: return rows_block<2>(x, w, scale, out, K, N, m0, n0, n1);
    case 3: return rows_block<3>(x, w, scale, out, K, N, m0, n0, n1);
    case 4: return rows_block<4>(x, w, scale, out, K, N, m0, n0, n1);
    case 5: return rows_block<5>(x, w, scale, out, K, N, m0, n0, n1);
    case 6: return rows_block<6>(x, w, scale, out, K, N, m0, n0, n1);
    case 7: return rows_block<7>(x, w, scale, out, K, N, m0, n0, n1);
    default: return rows_block<8>(x, w, scale, out, K, N, m0, n0, n1);
  }
}

// x [..., K] (bf16) times weight [N, K] (bf16, or int8 with scale [N]) -> bf16 [..., N].
template <typename WT>
at::Tensor rows_product(const at::Tensor& x, const at::Tensor& weight, const float* scale) {
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  const int64_t K = weight.size(1), N = weight.size(0), M = K > 0 ? xc.numel() / K : 0;
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = N;
  at::Tensor out = at::empty(sizes, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  if (K == 0) return out.zero_();
  const auto* xp = reinterpret_cast<const uint16_t*>(xc.data_ptr<at::BFloat16>());
  const auto* wp = reinterpret_cast<const WT*>(wc.data_ptr());
  auto* op = out.data_ptr<at::BFloat16>();
  // Grain (weight rows per task): a second thread pays for its wake-up (~2 us)
  // from about kParallelWork weight elements of one row; a pass over more input
  // rows is more work per element, ~(rows + 3) / 4 times (loads are shared,
  // VDPBF16PS are not). So the default model's q/k/v, o and down stay on one
  // thread at 1-4 rows, its 4096-row LM head does not (timed with one and two
  // threads at those sizes; bench/bench_linear.py's "cache" rows show the result).
  const int64_t passes = (M + kRowBlock - 1) / kRowBlock;
  const int64_t per_row = std::max<int64_t>(1, K * passes * (std::min(M, kRowBlock) + 3) / 4);
  const int64_t grain = std::max<int64_t>(16, (kParallelWork + per_row - 1) / per_row);
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < M; m0 += kRowBlock)
      rows_block(xp, wp, scale, op, K, N, m0, std::min(kRowBlock, M - m0), n0, n1);
  });
  return out;
}
#pragma GCC diagnostic pop
#endif

}  // namespace

at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& weight) {
#ifdef LAYERSKIP_LINEAR_ROWS_AVX512BF16
  if (x.scalar_type() == at::kBFloat16) return rows_product<uint16_t>(x, weight, nullptr);
#endif
  return at::linear(x, weight);
}

at::Tensor linear_rows_int8_aten(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale) {
  const at::Tensor y = at::linear(x.to(at::kFloat), weight.to(at::kFloat)) * scale.to(at::kFloat);
  return y.to(x.scalar_type()).contiguous();
}

at::Tensor linear_rows_int8(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale) {
#ifdef LAYERSKIP_LINEAR_ROWS_AVX512BF16
  if (x.scalar_type() == at::kBFloat16) {
    const at::Tensor sc = scale.contiguous();
    return rows_product<int8_t>(x, weight, sc.data_ptr<float>());
  }
#endif
  return linear_rows_int8_aten(x, weight, scale);
}

}  // namespace layerskip::cpu
