// CPU kernels of the layerskip ops, the torch-facing entry points (compiled at
// the baseline; each runs the kernels of the running CPU level, dispatch.h).
// Inputs are already checked (csrc/checks.h).
#pragma once
#include <torch/extension.h>

#include <string>
#include <tuple>

namespace layerskip::cpu {

// q: [B, S, Hq, D]; k_cache, v_cache: [B, Hkv, T_max, D] (written at
// cache_seqlens[b] + s); k_new, v_new: [B, S, Hkv, D]; cache_seqlens: int32 [B];
// cos, sin: [>= T_max, D/2] fp32 or none. Returns [B, S, Hq, D] in q's dtype.
at::Tensor draft_verify_attention(const at::Tensor& q, at::Tensor& k_cache, at::Tensor& v_cache,
                                  const at::Tensor& k_new, const at::Tensor& v_new,
                                  const at::Tensor& cache_seqlens,
                                  const c10::optional<at::Tensor>& cos,
                                  const c10::optional<at::Tensor>& sin, double softmax_scale);

// draft_tokens: int64 [B, k]; target_logits: [B, k+1, V] fp32/fp16/bf16;
// draft_lens: int32 [B] (row b drafted draft_tokens[b, :draft_lens[b]]) or
// none (k for every row). Returns (num_accepted int32 [B], out_tokens int64 [B, k+1]).
std::tuple<at::Tensor, at::Tensor> verify_greedy(const at::Tensor& draft_tokens,
                                                 const at::Tensor& target_logits,
                                                 const c10::optional<at::Tensor>& draft_lens);

// draft_probs: fp32 [B, k, V]; target_probs: fp32 [B, k+1, V].
std::tuple<at::Tensor, at::Tensor> verify_sampling(const at::Tensor& draft_tokens,
                                                   const at::Tensor& draft_probs,
                                                   const at::Tensor& target_probs, int64_t seed,
                                                   int64_t offset,
                                                   const c10::optional<at::Tensor>& draft_lens);

// x: [..., K]; weight: [N, K] in x's dtype. Returns x @ weight^T: [..., N] in x's
// dtype, contiguous (fp32 accumulation).
at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& weight);

// x: [..., K]; weight: int8 [N, K]; scale: fp32 [N]. Returns (x @ weight^T) * scale:
// [..., N] in x's dtype, contiguous (fp32 accumulation).
at::Tensor linear_rows_int8(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale);

// How many threads a linear_rows / linear_rows_int8 product of `rows` rows and an
// [N, K] weight (weight_dtype: "bfloat16", "float32" or "int8") runs on at the
// running level and torch's thread count: the split over threads, for tests.
int64_t linear_rows_threads(int64_t rows, int64_t K, int64_t N, const std::string& weight_dtype);

// The same product from ATen ops (any device): weights widened to fp32, one GEMM,
// the scales, the cast. Runs where the kernel does not (other dtypes, CUDA).
at::Tensor linear_rows_int8_aten(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale);

}  // namespace layerskip::cpu
