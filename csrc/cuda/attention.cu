// draft_verify_attention on CUDA: RoPE + KV-cache write, then causal GQA
// attention over the static cache, split over the keys (flash-decoding).
//
// Three launches on the current stream:
//   1. cache_write_kernel: rotates k_new in fp32, rounds it once to the cache
//      dtype and writes k_new / v_new at cache_seqlens[b] + s. It is its own
//      launch because with split-KV the CTAs that read a new key are not the
//      ones that would write it; stream order makes the writes visible.
//   2. attention_mma_kernel (fp16/bf16: tensor cores, sm_80+) or
//      attention_split_kernel (fp32: FMA): one CTA per (batch, kv head, kv
//      split, query tile). All G*S query rows of a kv head (G = Hq / Hkv)
//      share every K/V tile loaded to shared memory; for S <= 16 (and G <= 8)
//      they fit one tile, so the cache is read once per kv head and split (the
//      tiling is documented in attention_kernels.cuh). fp32 online softmax
//      and accumulators. Each split covers whole key tiles of the row's real
//      length (cache_seqlens, read on the device), at least 256 keys; the
//      count of splits fills about one wave of the kernel's occupancy, and
//      the splits past a short row's length exit at once.
//   3. attention_merge_kernel (only with more than one split): log-sum-exp merge
//      of the per-split partials (m, l, acc) from a fp32 workspace, the (m, l)
//      of all splits of a row loaded at once; empty partials are skipped unread.
//
// cache_seqlens values are not checked on the host (that would synchronize):
// a row b with cache_seqlens[b] < 0 or cache_seqlens[b] + S > T_max is neither
// written nor read, and its output is zero.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdlib>
#include <type_traits>

#include "attention_kernels.cuh"
#include "kernels.h"
#include "utils.cuh"

namespace layerskip::cuda {
namespace {

using attention::AttnLaunch;
using attention::AttnParams;

// The attention kernel of dtype T: tensor cores in 16 bits, FMA in fp32. A
// function template, so that `if constexpr` drops the other kernel's
// instantiation (in the switch macros' lambdas it would not).
template <typename T, int D, int R>
const void* attention_kernel() {
  if constexpr (std::is_same_v<T, float>)
    return reinterpret_cast<const void*>(attention::attention_split_kernel<T, D, R>);
  else
    return reinterpret_cast<const void*>(attention::attention_mma_kernel<T, D, R>);
}

template <typename T, int D, int R>
void launch_attention(const AttnLaunch& l, const AttnParams& ap, cudaStream_t stream) {
  const auto grid = static_cast<unsigned>(l.ctas);
  if constexpr (std::is_same_v<T, float>)
    attention::attention_split_kernel<T, D, R><<<grid, l.threads, l.smem, stream>>>(ap);
  else
    attention::attention_mma_kernel<T, D, R><<<grid, l.threads, l.smem, stream>>>(ap);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor draft_verify_attention(const at::Tensor& q, at::Tensor& k_cache, at::Tensor& v_cache,
                                  const at::Tensor& k_new, const at::Tensor& v_new,
                                  const at::Tensor& cache_seqlens,
                                  const c10::optional<at::Tensor>& cos,
                                  const c10::optional<at::Tensor>& sin, double softmax_scale) {
  using namespace attention;
  const int64_t D = q.size(3);
  // Before any launch: an unsupported head dim must not write the cache.
  TORCH_CHECK(supported_head_dim(D), "draft_verify_attention (cuda): head dim D=", D,
              " is not supported; the CUDA kernel is built for D in {16, 32, 64, 96, 128}");
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty(q.sizes(), q.options());  // contiguous [B, S, Hq, D]
  if (out.numel() == 0) return out;
  const at::Tensor seqlens = cache_seqlens.contiguous();
  const AttnShape shape{q.size(0), q.size(1), q.size(2), k_cache.size(1), D, k_cache.size(2)};
  TORCH_CHECK(shape.T_max < INT_MAX / 2 && shape.S < INT_MAX && shape.Hq * shape.S < INT_MAX,
              "draft_verify_attention (cuda): T_max, S and Hq*S must fit in int32, got T_max=",
              shape.T_max, ", S=", shape.S, ", Hq=", shape.Hq);
  const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
  const bool half = q.element_size() == 2;
  // Before any launch, as the head-dim check: the 16-bit kernel is the tensor-core one.
  TORCH_CHECK(!half || props->major >= 8, "draft_verify_attention (cuda): float16/bfloat16 needs "
              "tensor cores of sm_80 or later (this GPU is sm_", props->major, props->minor,
              "); use float32 or the triton backend");
  int forced_splits = 0;  // LAYERSKIP_CUDA_NUM_SPLITS=n forces n splits (tests of the merge)
  if (const char* env = std::getenv("LAYERSKIP_CUDA_NUM_SPLITS")) forced_splits = std::atoi(env);
  AttnLaunch l = plan_tiles(shape, props->sharedMemPerBlockOptin, half);
  // One wave: the chosen kernel's resident CTAs per SM (with its shared memory
  // opted in first, or the query would see the 48 KB default).
  const void* kernel = LS_FLOAT_TYPE_SWITCH(q.scalar_type(), "draft_verify_attention", T, [&] {
    return LS_HEAD_DIM_SWITCH(static_cast<int>(D), kD, [&] {
      return LS_ROW_TILE_SWITCH(l.rows, kR, [&] { return attention_kernel<T, kD, kR>(); });
    });
  });
  if (l.smem > 48 * 1024)  // past the default limit: opt in (plan_tiles kept it <= the device's)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(l.smem)));
  int blocks_per_sm = 1;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, l.threads,
                                                               l.smem));
  plan_splits(shape, props->multiProcessorCount, blocks_per_sm, forced_splits, &l);
  at::Tensor ws_acc, ws_ml;
  if (l.splits > 1) {
    const auto f32 = q.options().dtype(at::kFloat);
    ws_acc = at::empty({l.merge_rows * l.splits * D}, f32);
    ws_ml = at::empty({l.merge_rows * l.splits * 2}, f32);
  }
  AttnTensors t{};
  t.q = q.data_ptr();
  t.k_cache = k_cache.data_ptr();
  t.v_cache = v_cache.data_ptr();
  t.k_new = k_new.data_ptr();
  t.v_new = v_new.data_ptr();
  t.seqlens = seqlens.data_ptr<int32_t>();
  t.out = out.data_ptr();
  t.ws_acc = l.splits > 1 ? ws_acc.data_ptr<float>() : nullptr;
  t.ws_ml = l.splits > 1 ? ws_ml.data_ptr<float>() : nullptr;
  for (int i = 0; i < 4; ++i) {
    t.q_s[i] = q.stride(i);
    t.kn_s[i] = k_new.stride(i);
    t.vn_s[i] = v_new.stride(i);
  }
  for (int i = 0; i < 3; ++i) {
    t.kc_s[i] = k_cache.stride(i);
    t.vc_s[i] = v_cache.stride(i);
  }
  const bool rope = cos.has_value();
  if (rope) {
    t.cos = cos->data_ptr<float>();
    t.sin = sin->data_ptr<float>();
    for (int i = 0; i < 2; ++i) {
      t.cos_s[i] = cos->stride(i);
      t.sin_s[i] = sin->stride(i);
    }
  }
  t.elem_size = q.element_size();
  WriteParams wp;
  AttnParams ap;
  make_params(shape, l, t, softmax_scale, &wp, &ap);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  LS_FLOAT_TYPE_SWITCH(q.scalar_type(), "draft_verify_attention", T, [&] {
    LS_BOOL_SWITCH(rope, kRope, [&] {
      cache_write_kernel<T, kRope>
          <<<static_cast<unsigned>(l.write_blocks), kWriteThreads, 0, stream>>>(wp);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    LS_HEAD_DIM_SWITCH(static_cast<int>(D), kD, [&] {
      LS_ROW_TILE_SWITCH(l.rows, kR, [&] { launch_attention<T, kD, kR>(l, ap, stream); });
    });
    if (l.merge_ctas > 0) {
      const dim3 block(static_cast<unsigned>(D / 4), static_cast<unsigned>(l.merge_rows_per_cta));
      attention_merge_kernel<T><<<static_cast<unsigned>(l.merge_ctas), block, 0, stream>>>(
          ap.ws_acc, ap.ws_ml, static_cast<T*>(ap.out), l.merge_rows, ap.S, ap.Hq, ap.Hkv, ap.G,
          ap.splits);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

}  // namespace layerskip::cuda
