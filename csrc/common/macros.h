// Portability macros shared by the CPU (.cpp) and CUDA (.cu) builds.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HOST_DEVICE __host__ __device__
#define LS_FORCE_INLINE __forceinline__
#else
#define HOST_DEVICE
#define LS_FORCE_INLINE inline __attribute__((always_inline))
#endif

// Turns a runtime value into a compile-time constant for a small set of cases,
// so one templated kernel serves every variant instead of a copy per case:
//   LS_BOOL_SWITCH(has_rope, kRope, [&] { launch<kRope>(...); });
#define LS_BOOL_SWITCH(cond, NAME, ...) \
  [&] {                                 \
    if (cond) {                         \
      constexpr bool NAME = true;       \
      return __VA_ARGS__();             \
    } else {                            \
      constexpr bool NAME = false;      \
      return __VA_ARGS__();             \
    }                                   \
  }()
