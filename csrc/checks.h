// Input checks at the op boundary, shared by the CPU and CUDA registrations.
// Messages name the argument and the expected shape so a caller of
// torch.ops.layerskip.* directly gets the same diagnosis as the Python entry
// points in layerskip_kernels/ops.py.
#pragma once
#include <ATen/MemoryOverlap.h>
#include <torch/extension.h>

#include <algorithm>
#include <utility>
#include <vector>

namespace layerskip {

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// Kernels index rows and outputs with 32-bit counts in places; and an argument
// made by `expand` costs nothing to build, so its logical size is bounded here,
// before anything is allocated for it.
constexpr int64_t kMaxElements = (int64_t{1} << 31) - 1;

inline void check_numel(const at::Tensor& t, const char* name, const char* layout) {
  uint64_t n = 1;
  bool overflow = false;
  for (int64_t s : t.sizes()) overflow |= __builtin_mul_overflow(n, static_cast<uint64_t>(s), &n);
  TORCH_CHECK(!overflow && n <= static_cast<uint64_t>(kMaxElements), name, " ", layout, " = ", t.sizes(),
              " has more than 2^31 - 1 elements, the most this op supports");
}

// True when two different indices of `t` can address the same element (a
// stride-0 expand, or strides too small for the sizes). Sufficient condition
// for no overlap: sorted by stride, each stride exceeds the span of the
// smaller dimensions. Layouts that fail it yet are injective are exotic.
inline bool may_self_overlap(const at::Tensor& t) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of dims with size > 1
  for (int64_t i = 0; i < t.dim(); ++i)
    if (t.size(i) > 1) dims.emplace_back(t.stride(i), t.size(i));
  std::sort(dims.begin(), dims.end());
  int64_t span = 0;  // largest offset reachable with the dims so far
  for (auto [stride, size] : dims) {
    if (stride <= span) return true;
    span += stride * (size - 1);
  }
  return false;
}

// Outputs written in place must not alias themselves or another argument
// (as PyTorch refuses for the out= tensors of its own in-place ops).
inline void check_output_memory(const at::Tensor& out, const char* name,
                                std::initializer_list<std::pair<const at::Tensor*, const char*>> others) {
  TORCH_CHECK(!may_self_overlap(out), name, " is written in place and must not overlap itself (a stride-0 ",
              "expand or overlapping strides), got sizes ", out.sizes(), " strides ", out.strides());
  for (auto [other, other_name] : others) {
    if (other == nullptr || !other->defined()) continue;
    const auto status = at::get_overlap_status(out, *other);
    TORCH_CHECK(status != at::MemOverlapStatus::Full && status != at::MemOverlapStatus::Partial, name,
                " is written in place and must not share memory with ", other_name);
  }
}

inline void check_same_device(const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), name, " must be on ", ref.device(), " like q, got ",
              t.device());
}

// Shape/dtype/device checks of draft_verify_attention (no value reads).
inline void check_attention_args(const at::Tensor& q, const at::Tensor& k_cache,
                                 const at::Tensor& v_cache, const at::Tensor& k_new,
                                 const at::Tensor& v_new, const at::Tensor& cache_seqlens,
                                 const c10::optional<at::Tensor>& cos,
                                 const c10::optional<at::Tensor>& sin) {
  TORCH_CHECK(q.dim() == 4, "q must be [B, S, Hq, D], got ", q.sizes());
  TORCH_CHECK(k_cache.dim() == 4, "k_cache must be [B, Hkv, T_max, D], got ", k_cache.sizes());
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache must have the shape of k_cache ",
              k_cache.sizes(), ", got ", v_cache.sizes());
  const int64_t B = q.size(0), S = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t Hkv = k_cache.size(1);
  TORCH_CHECK(k_cache.size(0) == B && k_cache.size(3) == D, "k_cache must be [B=", B,
              ", Hkv, T_max, D=", D, "], got ", k_cache.sizes());
  TORCH_CHECK(k_new.dim() == 4 && k_new.size(0) == B && k_new.size(1) == S &&
                  k_new.size(2) == Hkv && k_new.size(3) == D,
              "k_new must be [B=", B, ", S=", S, ", Hkv=", Hkv, ", D=", D, "], got ",
              k_new.sizes());
  TORCH_CHECK(v_new.sizes() == k_new.sizes(), "v_new must have the shape of k_new ",
              k_new.sizes(), ", got ", v_new.sizes());
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "q heads (Hq=", Hq,
              ") must be a multiple of k_cache heads (Hkv=", Hkv, ")");
  TORCH_CHECK(S >= 1, "q must have S >= 1 queries, got S=", S);
  TORCH_CHECK(D >= 1, "q must have head dim D >= 1, got D=", D);
  // cache_seqlens >= 0, so S queries fit only if S <= T_max: a shape check that
  // holds whatever the values (the CUDA path does not read them on the host).
  TORCH_CHECK(S <= k_cache.size(2), "cache_seqlens + S must be <= T_max, but S=", S,
              " already exceeds the cache length T_max=", k_cache.size(2));
  check_numel(q, "q", "[B, S, Hq, D]");
  check_numel(k_new, "k_new", "[B, S, Hkv, D]");
  TORCH_CHECK(is_float_dtype(q.scalar_type()), "q must be float32, float16 or bfloat16, got ",
              q.scalar_type());
  for (auto [t, name] : {std::pair<const at::Tensor&, const char*>{k_cache, "k_cache"},
                         {v_cache, "v_cache"}, {k_new, "k_new"}, {v_new, "v_new"}}) {
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " must have q's dtype ",
                q.scalar_type(), ", got ", t.scalar_type());
    check_same_device(q, t, name);
  }
  TORCH_CHECK(k_cache.stride(3) == 1 && v_cache.stride(3) == 1,
              "k_cache and v_cache must be contiguous in the head dimension");
  TORCH_CHECK(cache_seqlens.dim() == 1 && cache_seqlens.size(0) == B,
              "cache_seqlens must be [B=", B, "], got ", cache_seqlens.sizes());
  TORCH_CHECK(cache_seqlens.scalar_type() == at::kInt, "cache_seqlens must be int32, got ",
              cache_seqlens.scalar_type());
  check_same_device(q, cache_seqlens, "cache_seqlens");
  TORCH_CHECK(cos.has_value() == sin.has_value(), "cos and sin must be given together");
  const at::Tensor none;
  const at::Tensor& cos_t = cos.has_value() ? *cos : none;
  const at::Tensor& sin_t = sin.has_value() ? *sin : none;
  check_output_memory(k_cache, "k_cache", {{&v_cache, "v_cache"}, {&q, "q"}, {&k_new, "k_new"},
                                           {&v_new, "v_new"}, {&cache_seqlens, "cache_seqlens"},
                                           {&cos_t, "cos"}, {&sin_t, "sin"}});
  check_output_memory(v_cache, "v_cache", {{&q, "q"}, {&k_new, "k_new"}, {&v_new, "v_new"},
                                           {&cache_seqlens, "cache_seqlens"}, {&cos_t, "cos"},
                                           {&sin_t, "sin"}});
  if (cos.has_value()) {
    const int64_t T_max = k_cache.size(2);
    for (auto [t, name] : {std::pair<const at::Tensor&, const char*>{*cos, "cos"}, {*sin, "sin"}}) {
      TORCH_CHECK(t.dim() == 2 && t.size(0) >= T_max && t.size(1) == D / 2, name,
                  " must be [T >= T_max=", T_max, ", D/2=", D / 2, "], got ", t.sizes());
      TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
      check_same_device(q, t, name);
    }
    TORCH_CHECK(D % 2 == 0, "head dim D must be even for RoPE, got ", D);
  }
}

// cache_seqlens values: 0 <= cache_seqlens[b] and cache_seqlens[b] + S <= T_max.
// CPU tensors only: on CUDA it would be a host sync per call, so the CUDA op
// reads no value and its kernels never touch memory outside the cache instead
// (docs/ops_boundary.md). Read through the strides: `contiguous()` copies a
// strided or expanded tensor into the order the loop below assumes.
inline void check_cache_seqlens_values(const at::Tensor& cache_seqlens, int64_t S, int64_t T_max) {
  TORCH_CHECK(cache_seqlens.is_cpu(), "check_cache_seqlens_values reads CPU tensors only");
  const at::Tensor lens = cache_seqlens.contiguous();
  const int32_t* p = lens.data_ptr<int32_t>();
  for (int64_t b = 0; b < lens.size(0); ++b) {
    TORCH_CHECK(p[b] >= 0, "cache_seqlens[", b, "] must be >= 0, got ", p[b]);
    TORCH_CHECK(p[b] + S <= T_max, "cache_seqlens[", b, "] + S = ", p[b], " + ", S,
                " exceeds the cache length T_max=", T_max);
  }
}

// Shared by verify_greedy and verify_sampling: draft_tokens [B, k] int64 with
// ids in [0, V), `target` [B, k+1, V], draft_lens none or int32 [B] in [0, k].
// Ids are checked only where a row drafted (i < draft_lens[b]): the entries
// past a row's length are never used and may hold anything.
inline void check_draft_tokens(const at::Tensor& draft_tokens, const at::Tensor& target,
                               const char* target_name,
                               const c10::optional<at::Tensor>& draft_lens) {
  TORCH_CHECK(draft_tokens.dim() == 2, "draft_tokens must be [B, k], got ", draft_tokens.sizes());
  TORCH_CHECK(draft_tokens.scalar_type() == at::kLong, "draft_tokens must be int64, got ",
              draft_tokens.scalar_type());
  const int64_t B = draft_tokens.size(0), k = draft_tokens.size(1);
  TORCH_CHECK(k >= 1, "draft_tokens must hold k >= 1 drafted tokens per row, got k=", k);
  TORCH_CHECK(target.dim() == 3 && target.size(0) == B && target.size(1) == k + 1 &&
                  target.size(2) >= 1,
              target_name, " must be [B=", B, ", k+1=", k + 1, ", V], got ", target.sizes());
  TORCH_CHECK(draft_tokens.device() == target.device(), "draft_tokens must be on ",
              target.device(), " like ", target_name, ", got ", draft_tokens.device());
  if (draft_lens.has_value()) {
    const at::Tensor& lens = *draft_lens;
    TORCH_CHECK(lens.dim() == 1 && lens.size(0) == B, "draft_lens must be [B=", B, "], got ",
                lens.sizes());
    TORCH_CHECK(lens.scalar_type() == at::kInt, "draft_lens must be int32, got ",
                lens.scalar_type());
    TORCH_CHECK(lens.device() == target.device(), "draft_lens must be on ", target.device(),
                " like ", target_name, ", got ", lens.device());
  }
  // Values are read on CPU only (no host sync on CUDA: there an id outside
  // [0, V) is rejected by the kernels, and draft_lens is clamped into [0, k]
  // on the device; see docs/ops_boundary.md). Read through the strides:
  // `contiguous()` copies a strided or expanded tensor into the order below.
  if (!draft_tokens.is_cpu()) return;
  at::Tensor lens;
  if (draft_lens.has_value()) lens = draft_lens->contiguous();
  const int32_t* len = lens.defined() ? lens.data_ptr<int32_t>() : nullptr;
  if (len != nullptr)
    for (int64_t b = 0; b < B; ++b)
      TORCH_CHECK(len[b] >= 0 && len[b] <= k, "draft_lens[", b, "] must be in [0, k=", k,
                  "], got ", len[b]);
  const int64_t V = target.size(2);
  const at::Tensor d = draft_tokens.contiguous();
  const int64_t* p = d.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t drafted = len == nullptr ? k : len[b];
    for (int64_t i = 0; i < drafted; ++i) {
      const int64_t id = p[b * k + i];
      TORCH_CHECK(id >= 0 && id < V, "draft_tokens must be token ids in [0, V=", V, "), got ", id,
                  " at [", b, ", ", i, "]");
    }
  }
}

inline void check_sampling_args(const at::Tensor& draft_tokens, const at::Tensor& draft_probs,
                                const at::Tensor& target_probs, int64_t offset,
                                const c10::optional<at::Tensor>& draft_lens) {
  check_draft_tokens(draft_tokens, target_probs, "target_probs", draft_lens);
  TORCH_CHECK(target_probs.scalar_type() == at::kFloat, "target_probs must be float32, got ",
              target_probs.scalar_type());
  TORCH_CHECK(draft_probs.scalar_type() == at::kFloat, "draft_probs must be float32, got ",
              draft_probs.scalar_type());
  TORCH_CHECK(draft_probs.dim() == 3 && draft_probs.size(0) == draft_tokens.size(0) &&
                  draft_probs.size(1) == draft_tokens.size(1) &&
                  draft_probs.size(2) == target_probs.size(2),
              "draft_probs must be [B, k, V] = [", draft_tokens.size(0), ", ",
              draft_tokens.size(1), ", ", target_probs.size(2), "], got ", draft_probs.sizes());
  TORCH_CHECK(draft_probs.device() == target_probs.device(), "draft_probs must be on ",
              target_probs.device(), " like target_probs, got ", draft_probs.device());
  TORCH_CHECK(offset >= 0 && offset < (int64_t{1} << 32), "offset must be in [0, 2^32), got ",
              offset);
}

// Checks linear_rows and linear_rows_int8 share: x [..., K] floating, weight
// [N, K] on x's device, sizes within the op's limits (no value reads).
inline void check_rows_product_args(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() >= 1, "x must be [..., K], got a 0-d tensor");
  TORCH_CHECK(weight.dim() == 2, "weight must be [N, K], got ", weight.sizes());
  TORCH_CHECK(x.size(-1) == weight.size(1), "x must be [..., K] with K = weight.size(1) = ", weight.size(1),
              ", got ", x.sizes());
  TORCH_CHECK(is_float_dtype(x.scalar_type()), "x must be float32, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), "weight must be on ", x.device(), " like x, got ", weight.device());
  check_numel(x, "x", "[..., K]");
  check_numel(weight, "weight", "[N, K]");
  const int64_t K = weight.size(1);
  const int64_t rows = K > 0 ? x.numel() / K : 0;
  int64_t out_numel = 0;
  TORCH_CHECK(!__builtin_mul_overflow(rows, weight.size(0), &out_numel) && out_numel <= kMaxElements,
              "the output [..., N] of x ", x.sizes(), " and weight ", weight.sizes(),
              " has more than 2^31 - 1 elements, the most this op supports");
}

// Shape/dtype/device checks of linear_rows (no value reads).
inline void check_linear_rows_args(const at::Tensor& x, const at::Tensor& weight) {
  check_rows_product_args(x, weight);
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "weight must have x's dtype ", x.scalar_type(), ", got ",
              weight.scalar_type());
}

// Shape/dtype/device checks of linear_rows_int8 (no value reads).
inline void check_linear_rows_int8_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale) {
  check_rows_product_args(x, weight);
  TORCH_CHECK(weight.scalar_type() == at::kChar, "weight must be int8, got ", weight.scalar_type());
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == weight.size(0), "scale must be [N] = [", weight.size(0),
              "], got ", scale.sizes());
  TORCH_CHECK(scale.scalar_type() == at::kFloat, "scale must be float32, got ", scale.scalar_type());
  TORCH_CHECK(scale.device() == x.device(), "scale must be on ", x.device(), " like x, got ", scale.device());
}

}  // namespace layerskip
