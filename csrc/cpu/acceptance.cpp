// verify_greedy and verify_sampling on the CPU: bit-exact with reference.py.
// This part (compiled at the baseline) splits the work and merges the partial
// winners; the vocabulary scans are the running CPU level's
// (acceptance_kernels.h).
//
// Both stream the vocabulary once, split into (row, position, vocabulary chunk)
// tasks whose partial winners merge in vocabulary order, so the result does not
// depend on the chunking or the thread count. Nothing of size [B, k+1, V] is
// materialized.
//
// Sampling reads less than greedy: the accept coins need only p and q at the
// drafted ids, which fixes the first rejected position a of each row first;
// only the race at a decides the emitted token, so only that position's
// probabilities are streamed (the races at other positions are never used).
//
// Per-row draft lengths d = draft_lens[b]: the coins stop at d, the race at
// a = d is the bonus race over p, and greedy scans no position past d: no
// draft token or draft probability at a position >= d is read, and no target
// row past position d.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/philox.h"
#include "cpu/dispatch.h"
#include "cpu/kernels.h"

namespace layerskip::cpu {
namespace {

int num_threads_for(int64_t tasks) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks)));
}

// Splits [0, n) into pieces of at least `min_piece` so that `rows * pieces`
// gives every thread a few tasks.
int64_t pieces_for(int64_t n, int64_t rows, int64_t min_piece) {
  const int64_t want = (4 * static_cast<int64_t>(at::get_num_threads()) + rows - 1) / std::max<int64_t>(rows, 1);
  const int64_t most = std::max<int64_t>(1, n / min_piece);
  return std::max<int64_t>(1, std::min(want, most));
}

// Draft length of every row: draft_lens clamped into [0, k] (ops.cpp refuses
// other values before; the clamp keeps every index inside the tensors all the
// same), k for every row without draft_lens.
std::vector<int64_t> row_draft_lens(const c10::optional<at::Tensor>& draft_lens, int64_t B,
                                    int64_t k) {
  std::vector<int64_t> lens(B, k);
  if (!draft_lens.has_value()) return lens;
  const at::Tensor t = draft_lens->contiguous();
  const int32_t* p = t.data_ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b) lens[b] = std::clamp<int64_t>(p[b], 0, k);
  return lens;
}

// Emits drafts[:a], then `last` at a, then -1.
void emit_row(const int64_t* drafts, int64_t k, int64_t a, int64_t last, int64_t* out) {
  for (int64_t i = 0; i < a; ++i) out[i] = drafts[i];
  out[a] = last;
  for (int64_t i = a + 1; i <= k; ++i) out[i] = -1;
}

// ---------------------------------------------------------------- greedy

// lens: the draft length of every row; positions past it are not scanned.
void greedy_kernel(const KernelTable& T, DType dt, const int64_t* drafts, const char* logits, int64_t row_bytes,
                   const int64_t* lens, int64_t B, int64_t k, int64_t V, int32_t* num_accepted, int64_t* out) {
  const int64_t rows = B * (k + 1);
  const int64_t pieces = pieces_for(V, rows, 16384);
  const int64_t piece = (V + pieces - 1) / pieces;
  const int64_t tasks = rows * pieces;
  std::vector<ArgmaxPart> parts(tasks);
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads_for(tasks))
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t row = t / pieces, c = t % pieces;
    if (row % (k + 1) > lens[row / (k + 1)]) continue;  // never emitted: parts[t] stays unused
    const int64_t v0 = std::min(V, c * piece), v1 = std::min(V, v0 + piece);
    parts[t] = T.argmax_range(dt, logits + row * row_bytes, v0, v1);
  }
  std::vector<int64_t> target(rows);
  for (int64_t row = 0; row < rows; ++row) {
    ArgmaxPart best = parts[row * pieces];
    for (int64_t c = 1; c < pieces && !best.nan; ++c) {
      const ArgmaxPart& p = parts[row * pieces + c];
      if (p.nan || p.val > best.val) best = p;
    }
    target[row] = best.idx;
  }
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* d = drafts + b * k;
    const int64_t* tgt = target.data() + b * (k + 1);
    int64_t a = 0;
    while (a < lens[b] && d[a] == tgt[a]) ++a;
    num_accepted[b] = static_cast<int32_t>(a);
    emit_row(d, k, a, tgt[a], out + b * (k + 1));
  }
}

// ---------------------------------------------------------------- sampling

// lens: the draft length d of every row; the coins stop at d, and the race at
// a = d (all accepted) is the bonus race over p at that position.
void sampling_kernel(const KernelTable& T, const int64_t* drafts, const float* dprobs, const float* tprobs,
                     const int64_t* lens, int64_t B, int64_t k, int64_t V, const SamplingKey& key,
                     int32_t* num_accepted, int64_t* out) {
  // Accept coins: O(d) reads per row.
  std::vector<int64_t> first_reject(B);
  for (int64_t b = 0; b < B; ++b) {
    int64_t a = 0;
    while (a < lens[b]) {
      const int64_t d = drafts[b * k + a];
      const float p_d = tprobs[(b * (k + 1) + a) * V + d];
      const float q_d = dprobs[(b * k + a) * V + d];
      if (!sampling_accept(sampling_coin(key, static_cast<uint32_t>(b), static_cast<uint32_t>(a)), p_d, q_d))
        break;
      ++a;
    }
    first_reject[b] = a;
  }

  // The race at position a of each row, split over vocabulary pieces aligned to
  // Philox groups of 4.
  const int64_t pieces = pieces_for(V, B, 16384);
  const int64_t piece = ((V + pieces - 1) / pieces + 3) / 4 * 4;
  const int64_t tasks = B * pieces;
  std::vector<RaceBest> part_r(tasks), part_p(tasks);
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads_for(tasks))
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t b = t / pieces, c = t % pieces;
    const int64_t v0 = std::min(V, c * piece), v1 = std::min(V, v0 + piece);
    const int64_t a = first_reject[b];
    const float* p = tprobs + (b * (k + 1) + a) * V;
    if (a < lens[b]) {
      T.race_range(p, dprobs + (b * k + a) * V, v0, v1, key, static_cast<uint32_t>(b),
                       static_cast<uint32_t>(a), part_r[t], part_p[t]);
    } else {
      T.race_range(p, nullptr, v0, v1, key, static_cast<uint32_t>(b),
                        static_cast<uint32_t>(a), part_r[t], part_p[t]);
    }
  }

  for (int64_t b = 0; b < B; ++b) {
    RaceBest r, p;
    for (int64_t c = 0; c < pieces; ++c) {  // in vocabulary order: ties stay with the lowest id
      const RaceBest& pr = part_r[b * pieces + c];
      const RaceBest& pp = part_p[b * pieces + c];
      if (pr.key > r.key) r = pr;
      if (pp.key > p.key) p = pp;
    }
    const int64_t a = first_reject[b];
    // At a < d a residual with no positive entry falls back to the race over p.
    const int64_t token = (a < lens[b] && r.key < 0.0) ? p.idx : r.idx;
    num_accepted[b] = static_cast<int32_t>(a);
    emit_row(drafts + b * k, k, a, token, out + b * (k + 1));
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> verify_greedy(const at::Tensor& draft_tokens,
                                                 const at::Tensor& target_logits,
                                                 const c10::optional<at::Tensor>& draft_lens) {
  const KernelTable& T = kernels();
  const at::Tensor drafts = draft_tokens.contiguous();
  const at::Tensor logits = target_logits.contiguous();
  const int64_t B = drafts.size(0), k = drafts.size(1), V = logits.size(2);
  at::Tensor num_accepted = at::empty({B}, drafts.options().dtype(at::kInt));
  at::Tensor out_tokens = at::empty({B, k + 1}, drafts.options());
  if (B == 0) return {num_accepted, out_tokens};
  const std::vector<int64_t> lens = row_draft_lens(draft_lens, B, k);
  const at::ScalarType st = logits.scalar_type();
  const DType dt = st == at::kFloat ? DType::kFloat : st == at::kHalf ? DType::kHalf : DType::kBFloat16;
  greedy_kernel(T, dt, drafts.data_ptr<int64_t>(), static_cast<const char*>(logits.data_ptr()),
                V * logits.element_size(), lens.data(), B, k, V, num_accepted.data_ptr<int32_t>(),
                out_tokens.data_ptr<int64_t>());
  return {num_accepted, out_tokens};
}

std::tuple<at::Tensor, at::Tensor> verify_sampling(const at::Tensor& draft_tokens,
                                                   const at::Tensor& draft_probs,
                                                   const at::Tensor& target_probs, int64_t seed,
                                                   int64_t offset,
                                                   const c10::optional<at::Tensor>& draft_lens) {
  const KernelTable& T = kernels();
  const at::Tensor drafts = draft_tokens.contiguous();
  const at::Tensor q = draft_probs.contiguous();
  const at::Tensor p = target_probs.contiguous();
  const int64_t B = drafts.size(0), k = drafts.size(1), V = p.size(2);
  at::Tensor num_accepted = at::empty({B}, drafts.options().dtype(at::kInt));
  at::Tensor out_tokens = at::empty({B, k + 1}, drafts.options());
  if (B == 0) return {num_accepted, out_tokens};
  const uint64_t s = static_cast<uint64_t>(seed);
  const SamplingKey key{static_cast<uint32_t>(s & 0xffffffffu), static_cast<uint32_t>(s >> 32),
                        static_cast<uint32_t>(offset)};
  const std::vector<int64_t> lens = row_draft_lens(draft_lens, B, k);
  sampling_kernel(T, drafts.data_ptr<int64_t>(), q.data_ptr<float>(), p.data_ptr<float>(), lens.data(),
                  B, k, V, key, num_accepted.data_ptr<int32_t>(), out_tokens.data_ptr<int64_t>());
  return {num_accepted, out_tokens};
}

}  // namespace layerskip::cpu
