// The raw-pointer CPU kernels of every compiled level (csrc/cpu/level_*.cpp),
// without torch: each level this CPU supports against a naive product on
// integer-valued inputs (exact in fp32 in any summation order), and the
// vocabulary argmax. Built and run by CMake/ctest.
#include <stdio.h>
#include <stdlib.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../../csrc/cpu/dispatch.h"

namespace layerskip::cpu {
extern const KernelTable kBaselineKernels;
#if defined(__x86_64__) || defined(_M_X64)
extern const KernelTable kAvx2Kernels;
extern const KernelTable kAvx512Kernels;
extern const KernelTable kAvx512Bf16Kernels;
#endif
}  // namespace layerskip::cpu

using namespace layerskip::cpu;

static int failures = 0;
#define CHECK(cond, ...)                                          \
  do {                                                            \
    if (!(cond)) {                                                \
      fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                               \
      fprintf(stderr, "\n");                                      \
      ++failures;                                                 \
    }                                                             \
  } while (0)

static uint16_t bf16(float f) {  // round to nearest even (no NaN here)
  uint32_t u;
  memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static float from_bf16(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void test_linear(const KernelTable& T, const char* name, WeightKind wk, DType xd, int64_t M, int64_t K,
                        int64_t N) {
  std::vector<float> xf(M * K), wf(N * K), scale(N);
  for (int64_t i = 0; i < M * K; ++i) xf[i] = static_cast<float>(rand() % 7 - 3);
  for (int64_t i = 0; i < N * K; ++i) wf[i] = static_cast<float>(wk == WeightKind::kInt8 ? rand() % 256 - 128 : rand() % 7 - 3);
  for (int64_t n = 0; n < N; ++n) scale[n] = wk == WeightKind::kInt8 ? std::ldexp(1.f, -(rand() % 6)) : 1.f;
  std::vector<uint16_t> xb(M * K), wb(N * K);
  std::vector<int8_t> w8(N * K);
  for (int64_t i = 0; i < M * K; ++i) xb[i] = bf16(xf[i]);
  for (int64_t i = 0; i < N * K; ++i) {
    wb[i] = bf16(wf[i]);
    w8[i] = static_cast<int8_t>(wf[i]);
  }
  const void* x = xd == DType::kBFloat16 ? static_cast<const void*>(xb.data()) : xf.data();
  const void* w = wk == WeightKind::kInt8 ? static_cast<const void*>(w8.data())
                  : wk == WeightKind::kBf16 ? static_cast<const void*>(wb.data())
                                            : wf.data();
  std::vector<uint8_t> xp(T.linear_x_bytes(wk, xd, M, K));
  T.linear_prepare_x(wk, xd, x, M, K, xp.data());
  std::vector<float> outf(M * N);
  std::vector<uint16_t> outb(M * N);
  void* out = xd == DType::kBFloat16 ? static_cast<void*>(outb.data()) : outf.data();
  const LinearArgs a{xp.data(), w, wk == WeightKind::kInt8 ? scale.data() : nullptr, out, xd, wk, M, K, N};
  T.linear_rows(a, 0, N / 2);  // two column ranges, as two threads would
  T.linear_rows(a, N / 2, N);
  int bad = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      float want = 0.f;
      for (int64_t k = 0; k < K; ++k) want += xf[m * K + k] * wf[n * K + k];
      want *= scale[n];
      if (xd == DType::kBFloat16) want = from_bf16(bf16(want));  // the sum is exact, rounded once
      const float got = xd == DType::kBFloat16 ? from_bf16(outb[m * N + n]) : outf[m * N + n];
      bad += got != want;
    }
  CHECK(bad == 0, "%s linear wk=%d xd=%d M=%lld K=%lld N=%lld: %d wrong outputs", name, static_cast<int>(wk),
        static_cast<int>(xd), static_cast<long long>(M), static_cast<long long>(K), static_cast<long long>(N), bad);
}

static void test_argmax(const KernelTable& T, const char* name) {
  std::vector<float> x(5000);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rand() % 50);
  x[4321] = 50.f;
  x[4400] = 50.f;  // a tie: the first one wins
  ArgmaxPart p = T.argmax_range(DType::kFloat, x.data(), 0, 5000);
  CHECK(p.idx == 4321 && p.val == 50.f && !p.nan, "%s argmax: got %lld", name, static_cast<long long>(p.idx));
  p = T.argmax_range(DType::kFloat, x.data(), 4322, 5000);
  CHECK(p.idx == 4400, "%s argmax of a range: got %lld", name, static_cast<long long>(p.idx));
  x[77] = NAN;
  p = T.argmax_range(DType::kFloat, x.data(), 0, 5000);
  CHECK(p.idx == 77 && p.nan, "%s argmax with NaN: got %lld", name, static_cast<long long>(p.idx));
}

static void test_level(const KernelTable& T, const char* name) {
  const int64_t shapes[][3] = {{1, 256, 384}, {4, 33, 70}, {8, 100, 17}, {9, 31, 5}, {32, 64, 40}, {3, 1, 2}};
  for (const auto& s : shapes) {
    test_linear(T, name, WeightKind::kBf16, DType::kBFloat16, s[0], s[1], s[2]);
    test_linear(T, name, WeightKind::kF32, DType::kFloat, s[0], s[1], s[2]);
    test_linear(T, name, WeightKind::kInt8, DType::kBFloat16, s[0], s[1], s[2]);
    test_linear(T, name, WeightKind::kInt8, DType::kFloat, s[0], s[1], s[2]);
  }
  test_argmax(T, name);
  printf("level %s: checked\n", name);
}

int main() {
  test_level(kBaselineKernels, "baseline");
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (avx2) test_level(kAvx2Kernels, "avx2"); else printf("level avx2: CPU lacks avx2\n");
  if (avx512) test_level(kAvx512Kernels, "avx512"); else printf("level avx512: CPU lacks avx512\n");
  if (avx512 && __builtin_cpu_supports("avx512bf16"))
    test_level(kAvx512Bf16Kernels, "avx512_bf16");
  else
    printf("level avx512_bf16: CPU lacks avx512_bf16\n");
#endif
  if (failures) fprintf(stderr, "%d failures\n", failures);
  return failures ? 1 : 0;
}
