// Tensor-core and async-copy primitives of the kernel headers, at the level
// of one warp's fragments (PTX ISA, "Warp-level matrix fragments" of
// mma.m16n8k16 and ldmatrix), sm_80 and later.
//
// Each function is one PTX instruction on the device. The host emulation
// (tests/cpp/emu/cuda_shim.h, which defines LS_CUDA_EMULATION) implements the
// same instructions lane by lane with the fragment layouts of the PTX ISA: a
// warp-collective instruction publishes every lane's registers (or row
// address), waits for the warp, and each lane computes what the hardware would
// put in its own registers. A kernel that mixes up a fragment layout therefore
// fails its parity cases on the CPU. cp.async is emulated as a copy deferred to
// the cp.async.wait_group that covers it, so a read of shared memory before
// its wait sees stale (or NaN-filled) data there too.
//
// Fragments of mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: with
// g = lane / 4 and t = lane % 4 (every register holds two 16-bit elements,
// the lower column first):
//   A (16 x 16, row-major) a[0] = A[g][2t..2t+1]   a[1] = A[g+8][2t..2t+1]
//                          a[2] = A[g][2t+8..]     a[3] = A[g+8][2t+8..]
//   B (16 x 8, "col")      b[0] = B[2t..2t+1][g]   b[1] = B[2t+8..2t+9][g]
//   C, D (16 x 8, fp32)    c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..2t+1]
// ldmatrix.x4 loads four 8 x 8 matrices of 16-bit elements: lane l gives the
// address of row l % 8 of matrix l / 8, and register j of lane l receives
// matrix j's elements [l / 4][2(l % 4)..+1] (.trans: [2(l % 4)..+1][l / 4]).
#pragma once
#include <stdint.h>
#include <string.h>

#include <limits>

#include "device.cuh"

namespace layerskip::cuda {

// bf16 (8 significand bits) or fp16 (11): picks the mma's input type without
// naming a torch type (c10::BFloat16 and c10::Half both specialize
// numeric_limits).
template <typename T>
constexpr bool is_bf16() {
  static_assert(sizeof(T) == 2, "tensor-core inputs are 16-bit");
  return std::numeric_limits<T>::digits == 8;
}

// Two floats rounded to T (nearest even) in one 32-bit register, lo first.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const T t[2] = {static_cast<T>(lo), static_cast<T>(hi)};
  uint32_t r;
  memcpy(&r, t, sizeof(r));
  return r;
}

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

// d += a @ b for one m16n8k16 tile (fp32 accumulators).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4],
                                          const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (is_bf16<T>()) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // the launcher never runs the tensor-core kernel below sm_80
#elif defined(LS_CUDA_EMULATION)
  ::ls_emu::mma_16816<is_bf16<T>()>(d, a, b);
#endif
}

// Four 8 x 8 matrices from shared memory; `row` is this lane's row address
// (16-byte aligned).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
#elif defined(__CUDA_ARCH__)
  __trap();
#elif defined(LS_CUDA_EMULATION)
  ::ls_emu::ldmatrix_x4(r, row, false);
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
#elif defined(__CUDA_ARCH__)
  __trap();
#elif defined(LS_CUDA_EMULATION)
  ::ls_emu::ldmatrix_x4(r, row, true);
#endif
}

// 16 bytes global -> shared without a register round trip; with `fill` false
// nothing is read and the 16 bytes become zeros (src-size 0).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool fill) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(fill ? 16 : 0));
#elif defined(__CUDA_ARCH__)
  __trap();
#elif defined(LS_CUDA_EMULATION)
  ::ls_emu::cp_async_16(dst, src, fill);
#endif
}

// Closes the group of this thread's cp.async issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#elif defined(LS_CUDA_EMULATION)
  ::ls_emu::cp_async_commit();
#endif
}

// Waits until at most N of this thread's committed groups are in flight. The
// data is visible to the other threads after a following __syncthreads.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#elif defined(LS_CUDA_EMULATION)
  ::ls_emu::cp_async_wait(N);
#endif
}

}  // namespace layerskip::cuda
