// Schemas of the layerskip ops, their input checks, and the CPU/CUDA
// registrations. Also the pybind11 module `layerskip_kernels._C`, whose import
// runs the registrations below.
#include <torch/extension.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "checks.h"
#include "cpu/dispatch.h"
#include "cpu/kernels.h"
#ifdef LAYERSKIP_WITH_CUDA
#include "cuda/kernels.h"
#endif

namespace layerskip {
namespace {

double resolve_scale(const c10::optional<double>& softmax_scale, int64_t D) {
  if (softmax_scale.has_value()) {
    // Scores are computed in fp32: a scale finite as a double may not be
    // (1e39), and converting it would be undefined behaviour besides.
    const double s = *softmax_scale;
    TORCH_CHECK(std::isfinite(s) && std::abs(s) <= std::numeric_limits<float>::max(),
                "softmax_scale must be finite in float32 (|scale| <= 3.4e38), got ", s);
    return s;
  }
  return 1.0 / std::sqrt(static_cast<double>(D));
}

template <bool kCuda>
at::Tensor attention_impl(const at::Tensor& q, at::Tensor& k_cache, at::Tensor& v_cache,
                          const at::Tensor& k_new, const at::Tensor& v_new,
                          const at::Tensor& cache_seqlens, const c10::optional<at::Tensor>& cos,
                          const c10::optional<at::Tensor>& sin,
                          c10::optional<double> softmax_scale) {
  check_attention_args(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos, sin);
  const double scale = resolve_scale(softmax_scale, q.size(3));
  if constexpr (kCuda) {
#ifdef LAYERSKIP_WITH_CUDA
    // No value check here: it would synchronize the stream on every call. The
    // CUDA kernel skips writes past T_max; layerskip_kernels.ops checks values.
    return cuda::draft_verify_attention(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos,
                                        sin, scale);
#else
    TORCH_CHECK(false, "layerskip_kernels._C was built without CUDA kernels");
#endif
  } else {
    check_cache_seqlens_values(cache_seqlens, q.size(1), k_cache.size(2));
    return cpu::draft_verify_attention(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos, sin,
                                       scale);
  }
}

void check_greedy(const at::Tensor& draft_tokens, const at::Tensor& target_logits,
                  const c10::optional<at::Tensor>& draft_lens) {
  check_draft_tokens(draft_tokens, target_logits, "target_logits", draft_lens);
  TORCH_CHECK(is_float_dtype(target_logits.scalar_type()),
              "target_logits must be float32, float16 or bfloat16, got ",
              target_logits.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> greedy_cpu(const at::Tensor& draft_tokens,
                                              const at::Tensor& target_logits,
                                              const c10::optional<at::Tensor>& draft_lens) {
  check_greedy(draft_tokens, target_logits, draft_lens);
  return cpu::verify_greedy(draft_tokens, target_logits, draft_lens);
}

std::tuple<at::Tensor, at::Tensor> sampling_cpu(const at::Tensor& draft_tokens,
                                                const at::Tensor& draft_probs,
                                                const at::Tensor& target_probs, int64_t seed,
                                                int64_t offset,
                                                const c10::optional<at::Tensor>& draft_lens) {
  check_sampling_args(draft_tokens, draft_probs, target_probs, offset, draft_lens);
  return cpu::verify_sampling(draft_tokens, draft_probs, target_probs, seed, offset, draft_lens);
}

at::Tensor linear_rows_cpu(const at::Tensor& x, const at::Tensor& weight) {
  check_linear_rows_args(x, weight);
  return cpu::linear_rows(x, weight);
}

at::Tensor linear_rows_int8_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale) {
  check_linear_rows_int8_args(x, weight, scale);
  return cpu::linear_rows_int8(x, weight, scale);
}

// Autograd kernels of the ops a decode step calls per layer: the ops have no
// backward, so these run them below autograd (outputs never require grad). In
// C++ rather than Python (ops.py registers the acceptance ops' ones) because
// a compiled step calls them dozens of times.
at::Tensor attention_autograd(const at::Tensor& q, at::Tensor& k_cache, at::Tensor& v_cache,
                              const at::Tensor& k_new, const at::Tensor& v_new,
                              const at::Tensor& cache_seqlens, const c10::optional<at::Tensor>& cos,
                              const c10::optional<at::Tensor>& sin,
                              c10::optional<double> softmax_scale) {
  TORCH_CHECK(!k_cache.requires_grad(),
              "k_cache is written in place and must not require grad (the layerskip ops have no backward)");
  TORCH_CHECK(!v_cache.requires_grad(),
              "v_cache is written in place and must not require grad (the layerskip ops have no backward)");
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("layerskip::draft_verify_attention", "")
          .typed<at::Tensor(const at::Tensor&, at::Tensor&, at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                            const c10::optional<at::Tensor>&, c10::optional<double>)>();
  at::AutoDispatchBelowAutograd guard;
  return op.call(q, k_cache, v_cache, k_new, v_new, cache_seqlens, cos, sin, softmax_scale);
}

at::Tensor linear_rows_autograd(const at::Tensor& x, const at::Tensor& weight) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("layerskip::linear_rows", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  at::AutoDispatchBelowAutograd guard;
  return op.call(x, weight);
}

at::Tensor linear_rows_int8_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("layerskip::linear_rows_int8", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  at::AutoDispatchBelowAutograd guard;
  return op.call(x, weight, scale);
}

#ifdef LAYERSKIP_WITH_CUDA
// GPUs run this op as cuBLAS (ATen's linear): a decode step's GEMMs are not
// launch-bound there once the step is a CUDA graph.
at::Tensor linear_rows_cuda(const at::Tensor& x, const at::Tensor& weight) {
  check_linear_rows_args(x, weight);
  return at::linear(x, weight).contiguous();
}

// Not faster than bf16 weights on a GPU yet: the int8 weights are widened by a
// separate op before the GEMM (a fused kernel is future work).
at::Tensor linear_rows_int8_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale) {
  check_linear_rows_int8_args(x, weight, scale);
  return cpu::linear_rows_int8_aten(x, weight, scale);
}

// No value read of draft_lens here (a host sync): the kernels clamp it into
// [0, k] on the device.
std::tuple<at::Tensor, at::Tensor> greedy_cuda(const at::Tensor& draft_tokens,
                                               const at::Tensor& target_logits,
                                               const c10::optional<at::Tensor>& draft_lens) {
  check_greedy(draft_tokens, target_logits, draft_lens);
  return cuda::verify_greedy(draft_tokens, target_logits, draft_lens);
}

std::tuple<at::Tensor, at::Tensor> sampling_cuda(const at::Tensor& draft_tokens,
                                                 const at::Tensor& draft_probs,
                                                 const at::Tensor& target_probs, int64_t seed,
                                                 int64_t offset,
                                                 const c10::optional<at::Tensor>& draft_lens) {
  check_sampling_args(draft_tokens, draft_probs, target_probs, offset, draft_lens);
  return cuda::verify_sampling(draft_tokens, draft_probs, target_probs, seed, offset, draft_lens);
}
#endif

std::string cpu_level_name() { return cpu::kCpuLevelNames[static_cast<int>(cpu::cpu_level())]; }

// What this binary was compiled with, and the CPU level it runs; `layerskip
// info` prints it. cpu_isa: what this CPU and its OS support; cpu_levels: the
// levels compiled in; cpu_level: the one running (raises when
// LAYERSKIP_CPU_CAPABILITY asks for one that cannot run).
pybind11::dict build_info() {
  pybind11::dict info;
  info["cpu_isa"] = cpu::cpu_features();
  info["cpu_levels"] = cpu::compiled_cpu_levels();
  info["cpu_level"] = cpu_level_name();
#ifdef _OPENMP
  info["openmp"] = true;
  info["openmp_version"] = _OPENMP;
  info["openmp_max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
#endif
#ifdef LAYERSKIP_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = LAYERSKIP_CUDA_VERSION;
  info["cuda_archs"] = LAYERSKIP_CUDA_ARCHS;
#else
  info["cuda"] = false;
#endif
  info["torch_version"] = LAYERSKIP_TORCH_VERSION;
  return info;
}

}  // namespace
}  // namespace layerskip

// The schemas are the contract of ../shared/DESIGN.md; layerskip_kernels/ops.py
// defines the same strings when this extension is not built (a test compares).
TORCH_LIBRARY(layerskip, m) {
  m.def(
      "draft_verify_attention(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k_new, "
      "Tensor v_new, Tensor cache_seqlens, Tensor? cos=None, Tensor? sin=None, "
      "float? softmax_scale=None) -> Tensor");
  m.def(
      "verify_greedy(Tensor draft_tokens, Tensor target_logits, Tensor? draft_lens=None) -> "
      "(Tensor, Tensor)");
  m.def(
      "verify_sampling(Tensor draft_tokens, Tensor draft_probs, Tensor target_probs, int seed, "
      "int offset, Tensor? draft_lens=None) -> (Tensor, Tensor)");
  m.def("linear_rows(Tensor x, Tensor weight) -> Tensor");
  m.def("linear_rows_int8(Tensor x, Tensor weight, Tensor scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(layerskip, CPU, m) {
  m.impl("draft_verify_attention", &layerskip::attention_impl<false>);
  m.impl("verify_greedy", &layerskip::greedy_cpu);
  m.impl("verify_sampling", &layerskip::sampling_cpu);
  m.impl("linear_rows", &layerskip::linear_rows_cpu);
  m.impl("linear_rows_int8", &layerskip::linear_rows_int8_cpu);
}

TORCH_LIBRARY_IMPL(layerskip, Autograd, m) {
  m.impl("draft_verify_attention", &layerskip::attention_autograd);
  m.impl("linear_rows", &layerskip::linear_rows_autograd);
  m.impl("linear_rows_int8", &layerskip::linear_rows_int8_autograd);
}

#ifdef LAYERSKIP_WITH_CUDA
TORCH_LIBRARY_IMPL(layerskip, CUDA, m) {
  m.impl("draft_verify_attention", &layerskip::attention_impl<true>);
  m.impl("verify_greedy", &layerskip::greedy_cuda);
  m.impl("verify_sampling", &layerskip::sampling_cuda);
  m.impl("linear_rows", &layerskip::linear_rows_cuda);
  m.impl("linear_rows_int8", &layerskip::linear_rows_int8_cuda);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "layerskip_kernels native ops (registered as torch.ops.layerskip.*)";
  m.def("build_info", &layerskip::build_info, "What this extension was compiled with, and its CPU level.");
  m.def("cpu_level", &layerskip::cpu_level_name,
        "The CPU level the cpu kernels run: the best one this CPU and OS support, or the one "
        "LAYERSKIP_CPU_CAPABILITY or set_cpu_level() chose.");
  m.def("set_cpu_level", &layerskip::cpu::set_cpu_level, pybind11::arg("name"),
        "Run the cpu kernels of another level (one of supported_cpu_levels()); raises on any other name.");
  m.def("supported_cpu_levels", &layerskip::cpu::supported_cpu_levels,
        "The CPU levels compiled in that this CPU and OS support, lowest first.");
  m.def("linear_rows_threads", &layerskip::cpu::linear_rows_threads, pybind11::arg("rows"), pybind11::arg("K"),
        pybind11::arg("N"), pybind11::arg("weight_dtype"),
        "How many threads the cpu linear_rows / linear_rows_int8 of `rows` rows and an [N, K] weight "
        "('bfloat16', 'float32' or 'int8') runs on at the running CPU level and torch's thread count.");
}
