// The CPU kernels at the avx512 level: AVX-512 F + BW + VL + DQ (and AVX2, FMA,
// F16C), 16-lane fp32 vectors. Only the functions of level_kernels.h get these
// instructions (see level_includes.h).
#include "cpu/level_includes.h"

#if defined(__x86_64__) || defined(_M_X64)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
// GCC 12 reports the "undefined" pass-through operand inside its own AVX-512
// intrinsics as uninitialized (a false positive of its headers).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#endif

#define LS_LEVEL avx512
#define LS_LEVEL_ID CpuLevel::kAvx512
#define LS_LEVEL_TABLE kAvx512Kernels
#define LS_VEC_AVX512 1
#define LS_HAS_FMA 1
#include "cpu/level_kernels.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
#endif
