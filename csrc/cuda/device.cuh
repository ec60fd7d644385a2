// Device helpers of the kernel headers. Torch-free on purpose: the kernel
// headers include only this and csrc/common, so that tests/cpp/emu compiles the
// very same kernels as host C++ (with tests/cpp/emu/cuda_shim.h providing
// threadIdx, __syncthreads, shuffles and __ldg).
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../common/macros.h"

// Dynamic shared memory as a T* named `name`. One untyped extern array: the
// kernels are templates, and extern __shared__ arrays of different element
// types under one name would conflict. The host emulation defines its own.
#ifndef LS_DYNAMIC_SHARED
#define LS_DYNAMIC_SHARED(T, name)                                 \
  extern __shared__ __align__(16) unsigned char ls_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(ls_dynamic_smem_)
#endif

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

// N elements of T held in registers. Filled from a raw vector load with
// memcpy, never by reading a uint4 through a T* (strict-aliasing UB that GCC
// really miscompiles at -O2; nvcc turns the memcpy into register moves).
template <typename T, int N>
struct Vec {
  T e[N];
};

template <typename T, typename Raw>
__device__ __forceinline__ Vec<T, sizeof(Raw) / sizeof(T)> unpack(const Raw& raw) {
  static_assert(sizeof(Raw) % sizeof(T) == 0, "raw vector must hold whole elements");
  Vec<T, sizeof(Raw) / sizeof(T)> v;
  memcpy(&v, &raw, sizeof(Raw));
  return v;
}

// float4 access to fp32 shared memory (16-byte aligned). One 128-bit
// instruction on the device; the host emulation goes through memcpy, where
// the float4-over-float access would again be an aliasing question.
__device__ __forceinline__ float4 lds4(const float* p) {
#ifdef __CUDA_ARCH__
  return *reinterpret_cast<const float4*>(p);
#else
  float4 v;
  memcpy(&v, p, sizeof(v));
  return v;
#endif
}

__device__ __forceinline__ void sts4(float* p, const float4& v) {
#ifdef __CUDA_ARCH__
  *reinterpret_cast<float4*>(p) = v;
#else
  memcpy(p, &v, sizeof(v));
#endif
}

}  // namespace layerskip::cuda
