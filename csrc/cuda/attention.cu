// draft_verify_attention on CUDA: RoPE + KV-cache write, then causal GQA
// attention over the static cache, split over the keys (flash-decoding).
//
// Three launches on the current stream:
//   1. cache_write_kernel: rotates k_new in fp32, rounds it once to the cache
//      dtype and writes k_new / v_new at cache_seqlens[b] + s. It is its own
//      launch because with split-KV the CTAs that read a new key are not the
//      ones that would write it; stream order makes the writes visible.
//   2. attention_split_kernel: one CTA per (batch, kv head, kv split, tile of
//      kRows query rows). The G*S query rows of a kv head (G = Hq / Hkv) share
//      every K/V tile loaded to shared memory, so the cache is read once per
//      kv head instead of once per query head. fp32 online softmax.
//   3. attention_merge_kernel (only with more than one split): log-sum-exp merge
//      of the per-split partials (m, l, acc) from a fp32 workspace.
//
// cache_seqlens values are not checked on the host (that would synchronize):
// a row b with cache_seqlens[b] < 0 or cache_seqlens[b] + S > T_max is neither
// written nor read, and its output is zero.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "attention_kernels.cuh"
#include "kernels.h"

namespace layerskip::cuda {

at::Tensor draft_verify_attention(const at::Tensor& q, at::Tensor& k_cache, at::Tensor& v_cache,
                                  const at::Tensor& k_new, const at::Tensor& v_new,
                                  const at::Tensor& cache_seqlens,
                                  const c10::optional<at::Tensor>& cos,
                                  const c10::optional<at::Tensor>& sin, double softmax_scale) {
  using namespace attention;
  const int64_t D = q.size(3);
  // Before any launch: an unsupported head dim must not write the cache.
  TORCH_CHECK(supported_head_dim(D), "draft_verify_attention (cuda): head dim D=", D,
              " is not supported; the CUDA kernel is built for D in {32, 64, 96, 128}");
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty(q.sizes(), q.options());  // contiguous [B, S, Hq, D]
  if (out.numel() == 0) return out;
  const at::Tensor seqlens = cache_seqlens.contiguous();
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const Plan plan =
      make_plan(q, k_cache, v_cache, k_new, v_new, seqlens, cos, sin, softmax_scale, out, sms);
  const AttnParams& ap = plan.attn;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  LS_FLOAT_TYPE_SWITCH(q.scalar_type(), "draft_verify_attention", T, [&] {
    LS_BOOL_SWITCH(plan.rope, kRope, [&] {
      cache_write_kernel<T, kRope>
          <<<static_cast<unsigned>(plan.write_blocks), kWriteThreads, 0, stream>>>(plan.write);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    LS_HEAD_DIM_SWITCH(static_cast<int>(D), kD, [&] {
      attention_split_kernel<T, kD><<<static_cast<unsigned>(plan.ctas), kThreads, 0, stream>>>(ap);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (plan.merge_ctas > 0) {
      attention_merge_kernel<T>
          <<<static_cast<unsigned>(plan.merge_ctas), static_cast<unsigned>(D), 0, stream>>>(
              ap.ws_acc, ap.ws_ml, static_cast<T*>(ap.out), ap.S, ap.Hq, ap.Hkv, ap.G, ap.splits);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

}  // namespace layerskip::cuda
