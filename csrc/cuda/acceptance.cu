// verify_greedy / verify_sampling on CUDA, bit-identical to reference.py.
//
// Two launches each:
//   1. A reduction over the vocabulary, split into `nsplit` vocabulary ranges
//      when the rows alone would leave the GPU idle; partials go to a small
//      workspace. Greedy: argmax of every (row b, position i) (NaN counts as
//      the maximum, like torch.argmax; ties to the lowest id). Sampling: the
//      accept coins first (d loads per row, d = the row's draft length, k
//      without draft_lens), then only the race at each row's first rejected
//      position a: over the residual max(p - q, 0) and over p (the fallback
//      when the residual is all zero, and the bonus token at a = d), with the
//      same uniforms for both, plus whether the residual has any positive entry.
//   2. One thread per row: merges the partials (greedy: walks the accept
//      prefix up to the first mismatch) and writes num_accepted int32 [B] and
//      out_tokens int64 [B, k+1] padded with -1.
// draft_lens is never read on the host: the kernels clamp it into [0, k]
// (acceptance_kernels.cuh). The random numbers come from csrc/common/philox.h,
// the implementation shared with the CPU kernel; no fast-math, so the double
// race keys match the host.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "acceptance_kernels.cuh"
#include "kernels.h"
#include "utils.cuh"

namespace layerskip::cuda {

using namespace acceptance;

namespace {

Launch checked_plan(int64_t B, int64_t k, int64_t V, int64_t rows) {
  TORCH_CHECK(V <= INT_MAX - 4, "vocabulary size V=", V, " must fit in int32");
  TORCH_CHECK(k < INT_MAX, "k=", k, " must fit in int32");
  const Launch l = plan(B, k, V, rows, at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  TORCH_CHECK(l.grid <= INT_MAX, "batch * (k+1) too large for one launch");
  return l;
}

at::Tensor workspace(const at::Tensor& like, int64_t bytes) {
  return at::empty({bytes}, like.options().dtype(at::kByte));
}

// B int32s made contiguous (no sync), or an undefined tensor without draft_lens.
at::Tensor contiguous_lens(const c10::optional<at::Tensor>& draft_lens) {
  return draft_lens.has_value() ? draft_lens->contiguous() : at::Tensor();
}

const int32_t* lens_ptr(const at::Tensor& lens) {
  return lens.defined() ? lens.data_ptr<int32_t>() : nullptr;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> verify_greedy(const at::Tensor& draft_tokens,
                                                 const at::Tensor& target_logits,
                                                 const c10::optional<at::Tensor>& draft_lens) {
  const c10::cuda::CUDAGuard guard(target_logits.device());
  const int64_t B = draft_tokens.size(0), k = draft_tokens.size(1), V = target_logits.size(2);
  const auto opts = target_logits.options();
  at::Tensor num_accepted = at::empty({B}, opts.dtype(at::kInt));
  at::Tensor out_tokens = at::empty({B, k + 1}, opts.dtype(at::kLong));
  if (B == 0) return {num_accepted, out_tokens};
  const at::Tensor draft = draft_tokens.contiguous();
  const at::Tensor logits = target_logits.contiguous();
  const at::Tensor lens = contiguous_lens(draft_lens);
  const Launch l = checked_plan(B, k, V, B * (k + 1));
  at::Tensor ws = workspace(logits, l.grid * static_cast<int64_t>(sizeof(ArgmaxPartial)));
  auto* parts = reinterpret_cast<ArgmaxPartial*>(ws.data_ptr());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  LS_FLOAT_TYPE_SWITCH(logits.scalar_type(), "verify_greedy", T, [&] {
    greedy_argmax_kernel<T><<<static_cast<unsigned>(l.grid), kThreads, 0, stream>>>(
        logits.data_ptr<T>(), lens_ptr(lens), static_cast<int>(k), V, l.groups,
        l.groups_per_split, l.nsplit, parts);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  constexpr int kRowThreads = 128;
  greedy_finalize_kernel<<<static_cast<unsigned>(ceil_div<int64_t>(B, kRowThreads)), kRowThreads, 0,
                           stream>>>(draft.data_ptr<int64_t>(), lens_ptr(lens), parts, B,
                                     static_cast<int>(k), l.nsplit,
                                     num_accepted.data_ptr<int32_t>(),
                                     out_tokens.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {num_accepted, out_tokens};
}

std::tuple<at::Tensor, at::Tensor> verify_sampling(const at::Tensor& draft_tokens,
                                                   const at::Tensor& draft_probs,
                                                   const at::Tensor& target_probs, int64_t seed,
                                                   int64_t offset,
                                                   const c10::optional<at::Tensor>& draft_lens) {
  const c10::cuda::CUDAGuard guard(target_probs.device());
  const int64_t B = draft_tokens.size(0), k = draft_tokens.size(1), V = target_probs.size(2);
  const auto opts = target_probs.options();
  at::Tensor num_accepted = at::empty({B}, opts.dtype(at::kInt));
  at::Tensor out_tokens = at::empty({B, k + 1}, opts.dtype(at::kLong));
  if (B == 0) return {num_accepted, out_tokens};
  const at::Tensor draft = draft_tokens.contiguous();
  const at::Tensor q = draft_probs.contiguous();
  const at::Tensor p = target_probs.contiguous();
  const at::Tensor lens = contiguous_lens(draft_lens);
  // Key = seed mod 2^64 split in 32-bit halves (a negative int64 seed is its
  // two's complement, as in reference._seed_key).
  const uint64_t s = static_cast<uint64_t>(seed);
  const SamplingKey key{static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32),
                        static_cast<uint32_t>(offset)};
  const Launch l = checked_plan(B, k, V, B);
  at::Tensor ws = workspace(p, l.grid * static_cast<int64_t>(sizeof(RacePartial)));
  auto* parts = reinterpret_cast<RacePartial*>(ws.data_ptr());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  sampling_race_kernel<<<static_cast<unsigned>(l.grid), kThreads, 0, stream>>>(
      draft.data_ptr<int64_t>(), q.data_ptr<float>(), p.data_ptr<float>(), lens_ptr(lens), V,
      static_cast<int>(k), l.groups, l.groups_per_split, l.nsplit, key, parts);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  constexpr int kRowThreads = 128;
  sampling_finalize_kernel<<<static_cast<unsigned>(ceil_div<int64_t>(B, kRowThreads)), kRowThreads,
                             0, stream>>>(draft.data_ptr<int64_t>(), parts, B, static_cast<int>(k),
                                          l.nsplit, num_accepted.data_ptr<int32_t>(),
                                          out_tokens.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {num_accepted, out_tokens};
}

}  // namespace layerskip::cuda
