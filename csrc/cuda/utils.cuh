// Small device helpers and compile-time switches shared by the .cu files.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <stdint.h>

namespace layerskip::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

template <typename I>
__host__ __device__ constexpr I ceil_div(I a, I b) {
  return (a + b - 1) / b;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, off));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(kFullMask, x, off);
  return x;
}

__device__ __forceinline__ bool is_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

}  // namespace layerskip::cuda

// The three activation dtypes of the ops as a compile-time type, so one
// templated kernel serves all of them (AT_DISPATCH_FLOATING_TYPES would also
// instantiate double, which no op accepts):
//   LS_FLOAT_TYPE_SWITCH(q.scalar_type(), "op", T, [&] { launch<T>(...); });
#define LS_FLOAT_TYPE_SWITCH(dtype, op_name, NAME, ...)                                  \
  [&] {                                                                                  \
    switch (dtype) {                                                                     \
      case at::kFloat: {                                                                 \
        using NAME = float;                                                              \
        return __VA_ARGS__();                                                            \
      }                                                                                  \
      case at::kHalf: {                                                                  \
        using NAME = at::Half;                                                           \
        return __VA_ARGS__();                                                            \
      }                                                                                  \
      case at::kBFloat16: {                                                              \
        using NAME = at::BFloat16;                                                       \
        return __VA_ARGS__();                                                            \
      }                                                                                  \
      default:                                                                           \
        TORCH_CHECK(false, op_name, " (cuda): dtype must be float32, float16 or bfloat16, " \
                    "got ", dtype);                                                      \
    }                                                                                    \
  }()
