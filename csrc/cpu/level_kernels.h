// The CPU kernels of one level, included once by each csrc/cpu/level_<name>.cpp
// after it has included csrc/cpu/level_includes.h and switched on its
// instruction set (#pragma GCC target / clang attribute) and defined:
//   LS_LEVEL        the level's namespace (baseline, avx2, avx512, avx512_bf16)
//   LS_LEVEL_ID     its CpuLevel
//   LS_LEVEL_TABLE  the name of its KernelTable
//   LS_VEC_AVX2 / LS_VEC_AVX512  the vector type (vec.h; neither: portable)
//   LS_HAS_FMA      fused multiply-add instructions
//   LS_HAS_BF16_DOT VDPBF16PS
// No #include below this point: everything defined here is ours, in the
// level's namespace, and gets the level's instruction set; everything from
// headers (std::, c10::, the csrc/common math) was compiled before, at the
// baseline, and is only inlined here.

namespace layerskip::cpu::LS_LEVEL {

// a * b + c in fp32: one rounding where the level has FMA instructions, else
// two (a fused multiply-add would be a library call).
LS_FORCE_INLINE float fmadd_f(float a, float b, float c) {
#if defined(LS_HAS_FMA)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

LS_FORCE_INLINE float widen(float x) { return x; }
LS_FORCE_INLINE float widen(int8_t x) { return static_cast<float>(x); }
LS_FORCE_INLINE float widen(uint16_t bf16) {  // bf16 bits -> fp32 (exact)
  const uint32_t u = static_cast<uint32_t>(bf16) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

#include "cpu/vec.h"

#include "cpu/linear_kernels.h"

#include "cpu/attention_kernels.h"

#include "cpu/acceptance_kernels.h"

}  // namespace layerskip::cpu::LS_LEVEL

namespace layerskip::cpu {
extern const KernelTable LS_LEVEL_TABLE;
const KernelTable LS_LEVEL_TABLE = {
    LS_LEVEL_ID,
    LS_LEVEL::kRowBlock,
    LS_LEVEL::kRowUnit,
    &LS_LEVEL::linear_x_bytes,
    &LS_LEVEL::linear_prepare_x,
    &LS_LEVEL::linear_rows,
    &LS_LEVEL::attention_scratch_floats,
    &LS_LEVEL::attention_task,
    &LS_LEVEL::argmax_range,
    &LS_LEVEL::race_range,
};
}  // namespace layerskip::cpu
