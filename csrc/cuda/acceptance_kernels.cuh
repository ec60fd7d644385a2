// Kernels of verify_greedy / verify_sampling and their launch plan (see
// acceptance.cu for the launches). Torch-free, so that tests/cpp/emu runs this
// very code on the CPU; only acceptance.cu includes it in the build.
//
// Draft token ids are not checked on the host (that would synchronize): an id
// outside [0, V) is never used to index memory. Greedy: it cannot equal the
// target's argmax, so the row is rejected there. Sampling: it is rejected
// there (as a token the draft gave probability 0), and the residual race at
// that position reads q at no id in particular: it is the race over
// max(p - q, 0) as for any rejection.
//
// Per-row draft lengths (draft_lens, int32 [B], or nullptr for k everywhere)
// are not read on the host either: each kernel clamps draft_lens[b] into
// [0, k] (row_draft_len), so any value keeps every index inside the tensors
// and gives the reference's result for the clamped length. No draft token or
// draft probability at a position >= the row's length is read (greedy does
// not even scan the target rows past it).
#pragma once
#include <stdint.h>

#include <algorithm>
#include <climits>

#include "../common/philox.h"
#include "device.cuh"

namespace layerskip::cuda::acceptance {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kNone = INT_MAX;  // "no candidate yet"; loses to every real index
// Each thread reads at least this many groups of 4 ids per vocabulary split.
constexpr int kMinGroupsPerThread = 4;

struct ArgmaxPartial {
  float val;
  int idx;
};

struct RacePartial {
  double key_res;  // best race key over the residual (candidates: residual > 0)
  double key_p;    // best race key over p (candidates: p > 0)
  int idx_res;
  int idx_p;
  int any_res;  // some residual entry > 0
  int pos;      // the row's first rejected position (k: all accepted), where the race ran
};

// Whether (av, ai) beats (bv, bi) in torch.argmax order: NaN above every
// number, then larger values, ties (and NaN against NaN) to the lower index.
// A total order on distinct indices, so a butterfly reduction agrees on every lane.
__device__ __forceinline__ bool argmax_better(float av, int ai, float bv, int bi) {
  if (bi == kNone) return ai != kNone;
  if (ai == kNone) return false;
  const bool an = isnan(av), bn = isnan(bv);
  if (an != bn) return an;
  if (!an && av != bv) return av > bv;
  return ai < bi;
}

// Race keys of candidates are > 0; ties go to the lower index.
__device__ __forceinline__ bool race_better(double ak, int ai, double bk, int bi) {
  if (bi == kNone) return ai != kNone;
  if (ai == kNone) return false;
  return ak > bk || (ak == bk && ai < bi);
}

// The 4 values of ids 4g .. 4g+3 of a row as float; ids >= V are not read.
template <typename T>
__device__ __forceinline__ void load_group(const T* row, int64_t g, int64_t V, bool vec,
                                           float (&x)[4]) {
  const int64_t v0 = 4 * g;
  if (vec && v0 + 3 < V) {
    if constexpr (sizeof(T) == 4) {
      const float4 f = __ldg(reinterpret_cast<const float4*>(row + v0));
      x[0] = f.x, x[1] = f.y, x[2] = f.z, x[3] = f.w;
    } else {
      const Vec<T, 4> e = unpack<T>(__ldg(reinterpret_cast<const uint2*>(row + v0)));
#pragma unroll
      for (int w = 0; w < 4; ++w) x[w] = static_cast<float>(e.e[w]);
    }
  } else {
#pragma unroll
    for (int w = 0; w < 4; ++w) x[w] = v0 + w < V ? static_cast<float>(row[v0 + w]) : 0.f;
  }
}

// Groups [begin, end) of vocabulary split `split`.
struct SplitRange {
  int64_t begin, end;
};

__device__ __forceinline__ SplitRange split_range(int split, int64_t groups_per_split,
                                                  int64_t groups) {
  const int64_t begin = split * groups_per_split;
  return {begin, min(begin + groups_per_split, groups)};
}

// Draft length of row b: draft_lens[b] clamped into [0, k]; k without draft_lens.
__device__ __forceinline__ int row_draft_len(const int32_t* draft_lens, int64_t b, int k) {
  if (draft_lens == nullptr) return k;
  const int32_t d = draft_lens[b];
  return d < 0 ? 0 : (d > k ? k : static_cast<int>(d));
}

// ---------------------------------------------------------------------------- greedy

// One CTA per (row-position rp = b * (k+1) + i, vocabulary split). Positions
// past the row's draft length are never emitted: their CTAs return at once.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    greedy_argmax_kernel(const T* __restrict__ logits, const int32_t* __restrict__ draft_lens,
                         int k, int64_t V, int64_t groups, int64_t groups_per_split, int nsplit,
                         ArgmaxPartial* __restrict__ ws) {
  const int64_t rp = blockIdx.x / nsplit;
  const int split = static_cast<int>(blockIdx.x % nsplit);
  // The whole CTA leaves together, before any barrier.
  if (rp % (k + 1) > row_draft_len(draft_lens, rp / (k + 1), k)) return;
  const T* row = logits + rp * V;
  const bool vec = is_aligned(row, 4 * sizeof(T));
  const SplitRange range = split_range(split, groups_per_split, groups);

  float best = -INFINITY;
  int best_i = kNone;
  for (int64_t g = range.begin + threadIdx.x; g < range.end; g += kThreads) {
    float x[4];
    load_group(row, g, V, vec, x);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int v = static_cast<int>(4 * g + w);
      if (v < V && argmax_better(x[w], v, best, best_i)) {
        best = x[w];
        best_i = v;
      }
    }
  }

  __shared__ float s_val[kWarps];
  __shared__ int s_idx[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, best, off);
    const int oi = __shfl_xor_sync(kFullMask, best_i, off);
    if (argmax_better(ov, oi, best, best_i)) best = ov, best_i = oi;
  }
  if (lane == 0) s_val[warp] = best, s_idx[warp] = best_i;
  __syncthreads();
  if (warp == 0) {
    best = lane < kWarps ? s_val[lane] : -INFINITY;
    best_i = lane < kWarps ? s_idx[lane] : kNone;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float ov = __shfl_xor_sync(kFullMask, best, off);
      const int oi = __shfl_xor_sync(kFullMask, best_i, off);
      if (argmax_better(ov, oi, best, best_i)) best = ov, best_i = oi;
    }
    if (lane == 0) ws[blockIdx.x] = {best, best_i};
  }
}

__device__ __forceinline__ int64_t greedy_target(const ArgmaxPartial* ws, int64_t rp, int nsplit) {
  float best = -INFINITY;
  int best_i = kNone;
  for (int j = 0; j < nsplit; ++j) {
    const ArgmaxPartial part = ws[rp * nsplit + j];
    if (argmax_better(part.val, part.idx, best, best_i)) best = part.val, best_i = part.idx;
  }
  return best_i == kNone ? 0 : best_i;  // never kNone: V >= 1 and no split is empty
}

// Writes out_tokens[b]: drafts before `a`, `last` at a, -1 after.
__device__ __forceinline__ void emit_row(const int64_t* draft, int64_t b, int k, int a,
                                         int64_t last, int32_t* num_accepted,
                                         int64_t* out_tokens) {
  int64_t* out = out_tokens + b * (k + 1);
  for (int j = 0; j <= k; ++j) out[j] = j < a ? draft[b * k + j] : (j == a ? last : -1);
  num_accepted[b] = a;
}

__global__ void greedy_finalize_kernel(const int64_t* __restrict__ draft,
                                       const int32_t* __restrict__ draft_lens,
                                       const ArgmaxPartial* __restrict__ ws, int64_t B, int k,
                                       int nsplit, int32_t* __restrict__ num_accepted,
                                       int64_t* __restrict__ out_tokens) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  const int64_t rp0 = b * (k + 1);
  const int d = row_draft_len(draft_lens, b, k);
  int a = 0;
  while (a < d && draft[b * k + a] == greedy_target(ws, rp0 + a, nsplit)) ++a;
  emit_row(draft, b, k, a, greedy_target(ws, rp0 + a, nsplit), num_accepted, out_tokens);
}

// ---------------------------------------------------------------------------- sampling

// Whether row b accepts its draft at position i: the coin u < p(d) / q(d).
// An id outside [0, V) is rejected without a read (see the top of the file).
__device__ __forceinline__ bool sampling_accepts(const int64_t* draft, const float* draft_probs,
                                                 const float* target_probs, int64_t b, int k,
                                                 int i, int64_t V, const SamplingKey& key) {
  const int64_t d = draft[b * k + i];
  if (d < 0 || d >= V) return false;
  const float p_d = target_probs[(b * (k + 1) + i) * V + d];
  const float q_d = draft_probs[(b * k + i) * V + d];
  return sampling_accept(sampling_coin(key, static_cast<uint32_t>(b), static_cast<uint32_t>(i)),
                         p_d, q_d);
}

// First rejected position of row b among its d drafts (d when all are
// accepted), from warp 0: lane j decides position j (+ 32 per round) and a
// ballot finds the first rejection, so the d coins cost one round of loads
// instead of d in a row.
__device__ __forceinline__ int first_rejection(const int64_t* draft, const float* draft_probs,
                                               const float* target_probs, int64_t b, int k, int d,
                                               int64_t V, const SamplingKey& key, int lane) {
  for (int base = 0; base < d; base += 32) {
    const int i = base + lane;
    const bool reject =
        i < d && !sampling_accepts(draft, draft_probs, target_probs, b, k, i, V, key);
    const unsigned mask = __ballot_sync(kFullMask, reject);
    if (mask != 0u) return base + __ffs(static_cast<int>(mask)) - 1;
  }
  return d;
}

// One CTA per (row b, vocabulary split). The coins come first (as the cpu
// backend does): only the race at the row's first rejected position a
// decides the emitted token, so it is the only one run, over the residual
// max(p - q, 0) at a < d (the row's draft length) and over p (the fallback
// when the residual is all zero, and the bonus token at a = d) with the same
// uniforms.
__global__ void __launch_bounds__(kThreads)
    sampling_race_kernel(const int64_t* __restrict__ draft, const float* __restrict__ draft_probs,
                         const float* __restrict__ target_probs,
                         const int32_t* __restrict__ draft_lens, int64_t V, int k, int64_t groups,
                         int64_t groups_per_split, int nsplit, SamplingKey key,
                         RacePartial* __restrict__ ws) {
  const int64_t b = blockIdx.x / nsplit;
  const int split = static_cast<int>(blockIdx.x % nsplit);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

  const int d = row_draft_len(draft_lens, b, k);
  __shared__ int s_pos;
  if (warp == 0) {
    const int a = first_rejection(draft, draft_probs, target_probs, b, k, d, V, key, lane);
    if (lane == 0) s_pos = a;
  }
  __syncthreads();
  const int i = s_pos;
  const bool has_q = i < d;
  const float* p_row = target_probs + (b * (k + 1) + i) * V;
  const float* q_row = draft_probs + (b * k + (has_q ? i : 0)) * V;
  const bool vec = is_aligned(p_row, 16) && is_aligned(q_row, 16);
  const SplitRange range = split_range(split, groups_per_split, groups);

  double key_res = -1.0, key_p = -1.0;
  int idx_res = kNone, idx_p = kNone;
  bool any_res = false;
  for (int64_t g = range.begin + threadIdx.x; g < range.end; g += kThreads) {
    const Philox4 words = sampling_race_words(key, static_cast<uint32_t>(b),
                                              static_cast<uint32_t>(i), static_cast<uint32_t>(g));
    float p[4], q[4] = {0.f, 0.f, 0.f, 0.f};
    load_group(p_row, g, V, vec, p);
    if (has_q) load_group(q_row, g, V, vec, q);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int v = static_cast<int>(4 * g + w);
      if (v >= V) break;
      const float u = philox_uniform(words.x[w]);
      if (has_q) {
        const float r = p[w] - q[w];  // the reference's fp32 residual before the clamp
        if (r > 0.f) {
          any_res = true;
          const double kr = race_key(r, u);
          if (race_better(kr, v, key_res, idx_res)) key_res = kr, idx_res = v;
        }
      }
      if (p[w] > 0.f) {
        const double kp = race_key(p[w], u);
        if (race_better(kp, v, key_p, idx_p)) key_p = kp, idx_p = v;
      }
    }
  }

  __shared__ RacePartial s_part[kWarps];
  auto warp_reduce = [&]() {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const double ok_r = __shfl_xor_sync(kFullMask, key_res, off);
      const int oi_r = __shfl_xor_sync(kFullMask, idx_res, off);
      if (race_better(ok_r, oi_r, key_res, idx_res)) key_res = ok_r, idx_res = oi_r;
      const double ok_p = __shfl_xor_sync(kFullMask, key_p, off);
      const int oi_p = __shfl_xor_sync(kFullMask, idx_p, off);
      if (race_better(ok_p, oi_p, key_p, idx_p)) key_p = ok_p, idx_p = oi_p;
    }
    any_res = __any_sync(kFullMask, any_res);
  };
  warp_reduce();
  if (lane == 0) s_part[warp] = {key_res, key_p, idx_res, idx_p, any_res, i};
  __syncthreads();
  if (warp == 0) {
    const bool mine = lane < kWarps;
    key_res = mine ? s_part[lane].key_res : -1.0;
    idx_res = mine ? s_part[lane].idx_res : kNone;
    key_p = mine ? s_part[lane].key_p : -1.0;
    idx_p = mine ? s_part[lane].idx_p : kNone;
    any_res = mine && s_part[lane].any_res;
    warp_reduce();
    if (lane == 0) ws[blockIdx.x] = {key_res, key_p, idx_res, idx_p, any_res, i};
  }
}

// One thread per row: merges the splits of the race at the row's first
// rejected position and writes the row.
__global__ void sampling_finalize_kernel(const int64_t* __restrict__ draft,
                                         const RacePartial* __restrict__ ws, int64_t B, int k,
                                         int nsplit, int32_t* __restrict__ num_accepted,
                                         int64_t* __restrict__ out_tokens) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  double key_res = -1.0, key_p = -1.0;
  int idx_res = kNone, idx_p = kNone;
  bool any_res = false;
  const int a = ws[b * nsplit].pos;
  for (int j = 0; j < nsplit; ++j) {
    const RacePartial part = ws[b * nsplit + j];
    if (race_better(part.key_res, part.idx_res, key_res, idx_res))
      key_res = part.key_res, idx_res = part.idx_res;
    if (race_better(part.key_p, part.idx_p, key_p, idx_p)) key_p = part.key_p, idx_p = part.idx_p;
    any_res = any_res || part.any_res;
  }
  // any_res is set only by a residual race (a < the row's draft length): the
  // residual's winner then, else the race over p (the fallback, or the bonus
  // token). A race without candidates (all weights zero) gives id 0, like
  // argmax over the reference's all -1 keys.
  const int winner = any_res ? idx_res : idx_p;
  emit_row(draft, b, k, a, winner == kNone ? 0 : winner, num_accepted, out_tokens);
}

// Vocabulary splits: enough CTAs for a few per SM when B * (k+1) alone is
// small, each still reading kMinGroupsPerThread groups per thread.
inline int choose_vocab_splits(int64_t row_positions, int64_t groups, int64_t sms) {
  const int64_t target = 4 * sms;
  const int64_t max_useful =
      std::max<int64_t>(1, groups / (static_cast<int64_t>(kThreads) * kMinGroupsPerThread));
  const int64_t want = ceil_div<int64_t>(target, row_positions);
  return static_cast<int>(std::clamp<int64_t>(want, 1, max_useful));
}

struct Launch {
  int64_t B, k, V, groups, groups_per_split;
  int nsplit;
  int64_t grid;  // CTAs of the first launch
};

// rows: the reductions of the first launch (greedy: B * (k+1) row positions;
// sampling: B rows, one race each); sms: multiprocessors of the device. The
// caller checks V <= INT_MAX - 4 and rows * nsplit <= INT_MAX.
inline Launch plan(int64_t B, int64_t k, int64_t V, int64_t rows, int64_t sms) {
  Launch l{};
  l.B = B, l.k = k, l.V = V;
  l.groups = ceil_div<int64_t>(V, 4);
  const int want = choose_vocab_splits(rows, l.groups, sms);
  l.groups_per_split = ceil_div<int64_t>(l.groups, want);
  l.nsplit = static_cast<int>(ceil_div<int64_t>(l.groups, l.groups_per_split));  // none empty
  l.grid = static_cast<int64_t>(rows) * l.nsplit;
  return l;
}

}  // namespace layerskip::cuda::acceptance
