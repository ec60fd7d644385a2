// linear_rows on the CPU, the torch-facing part (compiled at the baseline):
// contiguous inputs, the output, x prepared once in the running level's
// layout, and the split of the weight rows over threads; the products are the
// level's kernels (linear_kernels.h).
//
// bf16 x with bf16 weights, fp32 x with fp32 weights, and bf16 or fp32 x with
// int8 weights run the kernels on every level; other dtypes (fp16) run ATen's
// linear (same result up to summation order; int8 weights widened to fp32 first).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/kernels.h"

namespace layerskip::cpu {
namespace {

constexpr int64_t kParallelWork = 384 * 1024;  // weight elements x row factor per task (see rows_product)

// x [..., K] times weight [N, K] (wk; scale [N] for int8) -> [..., N] in x's dtype.
at::Tensor rows_product(const at::Tensor& x, const at::Tensor& weight, const float* scale, WeightKind wk) {
  const KernelTable& T = kernels();
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  const int64_t K = weight.size(1), N = weight.size(0), M = K > 0 ? xc.numel() / K : 0;
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = N;
  at::Tensor out = at::empty(sizes, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  if (K == 0) return out.zero_();
  const DType xd = x.scalar_type() == at::kBFloat16 ? DType::kBFloat16 : DType::kFloat;
  // x prepared on a 64-byte boundary (its rows are whole vectors long): no
  // vector load of it straddles two cache lines (timed up to 1.3x at 8 rows).
  std::vector<uint8_t> xbuf(T.linear_x_bytes(wk, xd, M, K) + 63);
  void* xp = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(xbuf.data()) + 63) & ~uintptr_t{63});
  T.linear_prepare_x(wk, xd, xc.data_ptr(), M, K, xp);
  const LinearArgs a{xp, wc.data_ptr(), scale, out.data_ptr(), xd, wk, M, K, N};
  // Grain (weight rows per task): a second thread pays for its wake-up (~2 us)
  // from about kParallelWork weight elements of one row; a pass over more input
  // rows is more work per element, ~(rows + 3) / 4 times (loads are shared,
  // multiply-adds are not). So the default model's q/k/v, o and down stay on one
  // thread at 1-4 rows, its 4096-row LM head does not (timed with one and two
  // threads at those sizes; bench/bench_linear.py's "cache" rows show the result).
  const int64_t passes = (M + T.row_block - 1) / T.row_block;
  const int64_t per_row = std::max<int64_t>(1, K * passes * (std::min(M, T.row_block) + 3) / 4);
  const int64_t grain = std::max<int64_t>(16, (kParallelWork + per_row - 1) / per_row);
  const int64_t unit = T.row_unit, units = (N + unit - 1) / unit;
  at::parallel_for(0, units, (grain + unit - 1) / unit, [&](int64_t u0, int64_t u1) {
    T.linear_rows(a, u0 * unit, std::min(N, u1 * unit));
  });
  return out;
}

}  // namespace

at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& weight) {
  if (x.scalar_type() == at::kBFloat16) return rows_product(x, weight, nullptr, WeightKind::kBf16);
  if (x.scalar_type() == at::kFloat) return rows_product(x, weight, nullptr, WeightKind::kF32);
  return at::linear(x, weight).contiguous();
}

at::Tensor linear_rows_int8_aten(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale) {
  const at::Tensor y = at::linear(x.to(at::kFloat), weight.to(at::kFloat)) * scale.to(at::kFloat);
  return y.to(x.scalar_type()).contiguous();
}

at::Tensor linear_rows_int8(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale) {
  if (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat) {
    const at::Tensor sc = scale.contiguous();
    return rows_product(x, weight, sc.data_ptr<float>(), WeightKind::kInt8);
  }
  return linear_rows_int8_aten(x, weight, scale);
}

}  // namespace layerskip::cpu
