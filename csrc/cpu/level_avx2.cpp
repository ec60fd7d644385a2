// The CPU kernels at the avx2 level: AVX2 + FMA (+ F16C, which every AVX2 CPU
// has), 8-lane fp32 vectors. Only the functions of level_kernels.h get these
// instructions (see level_includes.h).
#include "cpu/level_includes.h"

#if defined(__x86_64__) || defined(_M_X64)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#define LS_LEVEL avx2
#define LS_LEVEL_ID CpuLevel::kAvx2
#define LS_LEVEL_TABLE kAvx2Kernels
#define LS_VEC_AVX2 1
#define LS_HAS_FMA 1
#include "cpu/level_kernels.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
