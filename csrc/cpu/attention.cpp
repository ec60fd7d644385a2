// draft_verify_attention on the CPU, the torch-facing part (compiled at the
// baseline): output allocation, the thread count, per-thread scratch and the
// parallel loop over (batch row, kv head) tasks, each run by the kernel of the
// running CPU level (attention_kernels.h).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/dispatch.h"
#include "cpu/kernels.h"

namespace layerskip::cpu {
namespace {

// Multiply-adds that pay for one more thread: a decode step's attention is a
// few thousand of them per head, less than waking a second thread costs (timed
// at the default model's shapes, S = 1 and 4, 64-192 keys: one thread was
// faster below ~300k).
constexpr int64_t kWorkPerThread = 192 * 1024;

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

DType dtype_of(at::ScalarType t) {
  return t == at::kFloat ? DType::kFloat : t == at::kHalf ? DType::kHalf : DType::kBFloat16;
}

}  // namespace

at::Tensor draft_verify_attention(const at::Tensor& q, at::Tensor& k_cache, at::Tensor& v_cache,
                                  const at::Tensor& k_new, const at::Tensor& v_new,
                                  const at::Tensor& cache_seqlens,
                                  const c10::optional<at::Tensor>& cos,
                                  const c10::optional<at::Tensor>& sin, double softmax_scale) {
  const KernelTable& T = kernels();
  AttnParams P;
  P.B = q.size(0);
  P.S = q.size(1);
  P.Hq = q.size(2);
  P.D = q.size(3);
  P.Hkv = k_cache.size(1);
  P.T_max = k_cache.size(2);
  P.G = P.Hq / P.Hkv;
  P.scale = static_cast<float>(softmax_scale);
  P.q = strides_of(q);
  P.kc = strides_of(k_cache);
  P.vc = strides_of(v_cache);
  P.kn = strides_of(k_new);
  P.vn = strides_of(v_new);
  at::Tensor out = at::empty({P.B, P.S, P.Hq, P.D}, q.options().memory_format(at::MemoryFormat::Contiguous));
  if (P.B == 0 || P.D == 0) return out;
  const at::Tensor lens = cache_seqlens.contiguous();
  AttnPtrs A{q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), k_new.data_ptr(), v_new.data_ptr(),
             lens.data_ptr<int32_t>(), nullptr, nullptr, out.data_ptr()};
  P.cos_s0 = P.cos_s1 = P.sin_s0 = P.sin_s1 = 0;
  if (cos.has_value()) {
    A.cos = cos->data_ptr<float>();
    A.sin = sin->data_ptr<float>();
    P.cos_s0 = cos->stride(0);
    P.cos_s1 = cos->stride(1);
    P.sin_s0 = sin->stride(0);
    P.sin_s1 = sin->stride(1);
  }
  const DType dt = dtype_of(q.scalar_type());

  const int64_t G = P.G;
  // Whole queries per chunk while their heads fit in kAttnMaxRows, else kAttnMaxRows heads.
  const int64_t s_per_chunk = std::max<int64_t>(1, std::min<int64_t>(P.S, G > 0 ? kAttnMaxRows / G : P.S));
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(s_per_chunk * G, kAttnMaxRows));
  const int64_t tasks = P.B * P.Hkv;
  const int32_t* lp = A.lens;
  int64_t keys = 0;
  for (int64_t b = 0; b < P.B; ++b) keys += std::min<int64_t>(std::max<int64_t>(lp[b], 0) + P.S, P.T_max);
  const int64_t work = 2 * keys * P.S * P.G * P.Hkv * P.D;
  const int64_t by_work = std::max<int64_t>(1, work / kWorkPerThread);
  const int threads = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()), tasks, by_work})));
  // Scratch is allocated here, not inside the parallel region: an exception
  // (std::bad_alloc) escaping an OpenMP region terminates the process, while
  // here it reaches the caller as a Python MemoryError.
  const int64_t per_thread = T.attention_scratch_floats(rows, P.D);
  std::vector<float> scratch(per_thread * threads);
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    float* W = scratch.data() + per_thread * omp_get_thread_num();
#else
    float* W = scratch.data();
#endif
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task)
      T.attention_task(dt, P, A, task / P.Hkv, task % P.Hkv, rows, W);
  }
  return out;
}

}  // namespace layerskip::cpu
