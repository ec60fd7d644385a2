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
#include <string>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/kernels.h"

namespace layerskip::cpu {
namespace {

constexpr int64_t kParallelWork = 384 * 1024;  // weight elements x row factor per task (see split_grain)
// The least weight bytes per task of a product split for its bytes (see split_grain).
constexpr int64_t kStreamTaskBytes = 64 * 1024;

int64_t weight_size(WeightKind wk) { return wk == WeightKind::kF32 ? 4 : wk == WeightKind::kBf16 ? 2 : 1; }

// Weight rows per task of M rows times weight [N, K] of kind wk, a multiple of
// T.row_unit. Two rules; the one that splits finer wins:
// - FLOPs: a second thread pays for its wake-up (~2 us) from about
//   kParallelWork weight elements of one row; a pass over more input rows is
//   more work per element, ~(rows + 3) / 4 times (loads are shared,
//   multiply-adds are not). So the default model's q/k/v, o and down stay on
//   one thread at 1-4 rows from cache (timed with one and two threads at those
//   sizes; bench/bench_linear.py's "cache" rows show the result).
// - Bytes: weights larger than kStreamBytes (dispatch.h) come from L3 or DRAM
//   at every call of a decode step, and one core streams them at a fraction
//   of what two or more do (at the avx2 level one row from DRAM ran at
//   0.5-0.9x ATen's two-thread GEMM on one thread:
//   bench/results/amd-epyc-avx512_bf16/linear_rows_probe_avx2.csv).
//   Those are split over all threads whatever the row count, down to
//   kStreamTaskBytes per task.
// Where a row's output lands does not change its value (linear_kernels.h), so
// neither does the split.
int64_t split_grain(const KernelTable& T, int64_t M, int64_t K, int64_t N, WeightKind wk) {
  const int64_t passes = (M + T.row_block - 1) / T.row_block;
  const int64_t per_row = std::max<int64_t>(1, K * passes * (std::min(M, T.row_block) + 3) / 4);
  int64_t grain = std::max<int64_t>(16, (kParallelWork + per_row - 1) / per_row);
  const int64_t row_bytes = std::max<int64_t>(1, K * weight_size(wk));
  if (weight_streams(N, K, weight_size(wk))) grain = std::min(grain, (kStreamTaskBytes + row_bytes - 1) / row_bytes);
  const int64_t unit = T.row_unit;
  return std::max<int64_t>(1, (grain + unit - 1) / unit) * unit;
}

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
  const int64_t unit = T.row_unit, units = (N + unit - 1) / unit;
  at::parallel_for(0, units, split_grain(T, M, K, N, wk) / unit, [&](int64_t u0, int64_t u1) {
    T.linear_rows(a, u0 * unit, std::min(N, u1 * unit));
  });
  return out;
}

}  // namespace

int64_t linear_rows_threads(int64_t M, int64_t K, int64_t N, const std::string& weight_dtype) {
  TORCH_CHECK(M >= 0 && K >= 0 && N >= 0, "linear_rows_threads: rows, K and N must be >= 0");
  WeightKind wk;
  if (weight_dtype == "bfloat16")
    wk = WeightKind::kBf16;
  else if (weight_dtype == "float32")
    wk = WeightKind::kF32;
  else if (weight_dtype == "int8")
    wk = WeightKind::kInt8;
  else
    TORCH_CHECK(false, "linear_rows_threads: weight_dtype must be bfloat16, float32 or int8, got ", weight_dtype);
  if (M == 0 || N == 0 || K == 0) return 1;
  const KernelTable& T = kernels();
  // As at::parallel_for splits [0, units) with this grain: inline when it
  // holds at most one grain, else min(threads, ceil(units / grain)) tasks.
  const int64_t units = (N + T.row_unit - 1) / T.row_unit, grain = split_grain(T, M, K, N, wk) / T.row_unit;
  const int64_t threads = at::get_num_threads();
  if (units <= grain || threads <= 1) return 1;
  return std::min<int64_t>(threads, (units + grain - 1) / grain);
}

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
