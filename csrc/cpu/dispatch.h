// Run-time CPU dispatch of the CPU kernels.
//
// The kernels (csrc/cpu/*_kernels.h) are compiled once per CPU level, each copy
// in a namespace of its own (layerskip::cpu::baseline, ::avx2, ::avx512,
// ::avx512_bf16) with that level's instruction set given to our functions only
// (csrc/cpu/level_begin.h), and export a KernelTable of raw-pointer kernels.
// The torch-facing wrappers (checks, output allocation, dtype dispatch, the
// parallel loops) are compiled once, at the baseline, and call the table of the
// running level: the best one the CPU and the OS support, or the one that
// LAYERSKIP_CPU_CAPABILITY or set_cpu_level() asks for.
//
// This header is plain C++ (no torch, no intrinsics): the level sources include
// it before their instruction set is switched on.
#pragma once
#include <stdint.h>

#include <string>
#include <vector>

#include "common/philox.h"

namespace layerskip::cpu {

enum class CpuLevel : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };
constexpr int kNumCpuLevels = 4;
// Names as LAYERSKIP_CPU_CAPABILITY spells them, indexed by CpuLevel.
constexpr const char* kCpuLevelNames[kNumCpuLevels] = {"baseline", "avx2", "avx512", "avx512_bf16"};

// Element types of the raw kernels (float32, float16, bfloat16 as 16-bit patterns).
enum class DType : int { kFloat = 0, kHalf = 1, kBFloat16 = 2 };

// ---------------------------------------------------------------- linear_rows

// Weights of a rows product: bf16 (x bf16), fp32 (x fp32), int8 with one fp32
// scale per row (x bf16 or fp32).
enum class WeightKind : int { kBf16 = 0, kF32 = 1, kInt8 = 2 };

struct LinearArgs {
  const void* xp;      // x as prepared by prepare_x (the level's layout)
  const void* w;       // [N, K] contiguous
  const float* scale;  // [N] for int8 weights, else null
  void* out;           // [M, N] contiguous, out_dtype
  DType out_dtype;     // kFloat or kBFloat16
  WeightKind wk;
  int64_t M, K, N;
};

// ---------------------------------------------------------------- attention

constexpr int kAttnMaxRows = 64;  // query rows (heads x queries) per pass over the keys

struct Strides4 {
  int64_t s0, s1, s2, s3;
};

struct AttnParams {
  int64_t B, S, Hq, Hkv, D, T_max;
  int64_t G;  // query heads per kv head
  float scale;
  Strides4 q, kc, vc, kn, vn;
  int64_t cos_s0, cos_s1, sin_s0, sin_s1;
};

struct AttnPtrs {
  const void* q;
  void* k_cache;
  void* v_cache;
  const void* k_new;
  const void* v_new;
  const int32_t* lens;  // cache_seqlens [B]
  const float* cos;     // null without RoPE
  const float* sin;
  void* out;  // [B, S, Hq, D] contiguous
};

// ---------------------------------------------------------------- acceptance

// torch.argmax order: the first NaN wins outright, else the first maximum.
struct ArgmaxPart {
  float val;
  int64_t idx;
  bool nan;
};

// Leader of an exponential race: argmax of race_key, ties to the lowest id. An
// empty race (no weight > 0) keeps key -1 and id 0, as torch.argmax of all -1.
struct RaceBest {
  double key = -1.0;
  int64_t idx = 0;
  void offer(float r, float u, int64_t v) {
    if (!(r > 0.f)) return;
    const double key_v = race_key(r, u);
    if (key_v > key) {
      key = key_v;
      idx = v;
    }
  }
};

// Weights above kStreamBytes make linear_rows split over all threads even at
// one row (csrc/cpu/linear.cpp) and prefetch further ahead (linear_kernels.h).
// In a decode step every weight comes from L3 or DRAM whatever the L2 size (the
// rest of the model passes through L2 between two uses of it), so the bound is
// not a cache size but where a second core's share of the stream saves more
// than its wake-up (~2 us) costs; the same on every level (session 13, end to
// end at avx512_bf16: 1 MB, that level's L2, left the default model's 786 KB
// gate/up on one thread and decoded 10-19% slower than 512 KB).
constexpr int64_t kStreamBytes = 512 * 1024;

// Whether an [N, K] weight of elem_bytes-byte elements is above kStreamBytes.
constexpr bool weight_streams(int64_t N, int64_t K, int64_t elem_bytes) { return N * K * elem_bytes > kStreamBytes; }

// ---------------------------------------------------------------- the table

struct KernelTable {
  CpuLevel level;
  int64_t row_block;  // input rows per pass over the weights (linear_rows)
  int64_t row_unit;   // weight rows of the split over threads: whole tiles (linear_rows)
  // Bytes of x prepared for a product (prepare_x's output), and the preparation:
  // x [M, K] contiguous in x_dtype.
  int64_t (*linear_x_bytes)(WeightKind wk, DType x_dtype, int64_t M, int64_t K);
  void (*linear_prepare_x)(WeightKind wk, DType x_dtype, const void* x, int64_t M, int64_t K, void* xp);
  // Output columns [n0, n1) of the product (every row).
  void (*linear_rows)(const LinearArgs& a, int64_t n0, int64_t n1);

  // Floats of one thread's attention scratch for `rows` query rows of head dim D.
  int64_t (*attention_scratch_floats)(int64_t rows, int64_t D);
  // One (batch row, kv head) task: cache write, then attention of its rows.
  void (*attention_task)(DType dt, const AttnParams& P, const AttnPtrs& A, int64_t b, int64_t h,
                         int64_t rows_per_chunk, float* scratch);

  // First argmax of x[v0:v1) in torch.argmax order.
  ArgmaxPart (*argmax_range)(DType dt, const void* x, int64_t v0, int64_t v1);
  // The race(s) at one position over ids [v0, v1) (verify_sampling): with q, over
  // max(p - q, 0) into best_r and over p into best_p; without q, over p into best_r.
  void (*race_range)(const float* p, const float* q, int64_t v0, int64_t v1, const SamplingKey& key,
                     uint32_t row, uint32_t pos, RaceBest& best_r, RaceBest& best_p);
};

// The table of the running level. Throws (a c10::Error: RuntimeError in Python)
// when LAYERSKIP_CPU_CAPABILITY names a level that is unknown, not compiled, or
// not supported by this CPU and no set_cpu_level() replaced it.
const KernelTable& kernels();

CpuLevel cpu_level();                       // the running level (throws as kernels())
void set_cpu_level(const std::string& name);  // throws on a bad or unsupported name
std::vector<std::string> compiled_cpu_levels();
std::vector<std::string> supported_cpu_levels();  // compiled and supported by this CPU and OS
std::vector<std::string> cpu_features();          // instruction sets this CPU and OS support

}  // namespace layerskip::cpu
