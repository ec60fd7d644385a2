// The vocabulary scans of verify_greedy and verify_sampling for one CPU level
// (included by level_kernels.h inside the level's namespace); acceptance.cpp
// splits the work and merges the partial winners. Bit-exact on every level:
// comparisons, exact products and the double-precision race keys only.

template <typename T>
ArgmaxPart argmax_range_t(const T* x, int64_t v0, int64_t v1) {
  constexpr int64_t kBlock = 2048;
  ArgmaxPart best{-INFINITY, v0, false};
  for (int64_t b0 = v0; b0 < v1; b0 += kBlock) {
    const int64_t b1 = std::min(v1, b0 + kBlock);
    // Vector max plus a NaN flag; the max's value under NaN does not matter,
    // since a block with a NaN is resolved by the scalar scan below.
    float m = -INFINITY;
    int has_nan = 0;
#pragma omp simd reduction(max : m) reduction(| : has_nan)
    for (int64_t i = b0; i < b1; ++i) {
      const float f = static_cast<float>(x[i]);
      m = f > m ? f : m;
      has_nan |= static_cast<int>(f != f);
    }
    if (has_nan) {
      for (int64_t i = b0; i < b1; ++i)
        if (std::isnan(static_cast<float>(x[i]))) return {NAN, i, true};
    }
    if (m > best.val) {
      int64_t i = b0;
      while (static_cast<float>(x[i]) != m) ++i;
      best = {m, i, false};
    }
  }
  return best;
}

ArgmaxPart argmax_range(DType dt, const void* x, int64_t v0, int64_t v1) {
  switch (dt) {
    case DType::kFloat: return argmax_range_t(static_cast<const float*>(x), v0, v1);
    case DType::kHalf: return argmax_range_t(static_cast<const c10::Half*>(x), v0, v1);
    default: return argmax_range_t(static_cast<const c10::BFloat16*>(x), v0, v1);
  }
}

// Candidates can be skipped without a log: -log(u) >= 1 - u, so
// race_key(r, u) <= r / (1 - u), and r <= thr * (1 - u) with thr a little below
// the leader's key means the candidate cannot overtake it (the 1e-5 margin
// covers fp32 rounding of thr and of the product; 1 - u is exact). Keys outside
// [1e-29, 1e30] disable the filter, so fp32 range limits cannot skip a winner.
float filter_threshold(double key) {
  if (!(key >= 1e-29 && key <= 1e30)) return 0.f;
  return static_cast<float>(key * (1.0 - 1e-5));
}

constexpr int64_t kGroups = 16;  // Philox calls per block: 64 vocabulary ids

// The race(s) of one row at position `pos` over vocabulary ids [v0, v1) (v0 a
// multiple of 4). With kResidual (q given) the weights are max(p - q, 0), and the race
// over p runs alongside for the case where the residual is zero everywhere.
template <bool kResidual>
void race_range_t(const float* p, const float* q, int64_t v0, int64_t v1, const SamplingKey& key, uint32_t row,
                  uint32_t pos, RaceBest& best_r, RaceBest& best_p) {
  uint32_t w[4][kGroups];
  for (int64_t b0 = v0; b0 < v1; b0 += 4 * kGroups) {
    const uint32_t g0 = static_cast<uint32_t>(b0 / 4);
#pragma omp simd
    for (int64_t gi = 0; gi < kGroups; ++gi) {
      const Philox4 x = sampling_race_words(key, row, pos, g0 + static_cast<uint32_t>(gi));
      w[0][gi] = x.x[0];
      w[1][gi] = x.x[1];
      w[2][gi] = x.x[2];
      w[3][gi] = x.x[3];
    }
    const int64_t b1 = std::min(v1, b0 + 4 * kGroups);
    bool hit = true;
    if (b1 - b0 == 4 * kGroups) {
      const float thr_r = filter_threshold(best_r.key);
      const float thr_p = filter_threshold(best_p.key);
      int any = 0;
#pragma omp simd reduction(| : any)
      for (int64_t gi = 0; gi < kGroups; ++gi) {
        for (int j = 0; j < 4; ++j) {
          const int64_t v = b0 + 4 * gi + j;
          const float om = 1.f - philox_uniform(w[j][gi]);
          if constexpr (kResidual) {
            const float r = p[v] - q[v];
            any |= static_cast<int>(r > thr_r * om) | static_cast<int>(p[v] > thr_p * om);
          } else {
            any |= static_cast<int>(p[v] > thr_r * om);
          }
        }
      }
      hit = any != 0;
    }
    if (!hit) continue;
    for (int64_t v = b0; v < b1; ++v) {
      const int64_t gi = (v - b0) / 4;
      const float u = philox_uniform(w[v % 4][gi]);
      if constexpr (kResidual) {
        const float diff = p[v] - q[v];
        best_r.offer(diff > 0.f ? diff : 0.f, u, v);  // clamp(p - q, min=0) as the reference
        best_p.offer(p[v], u, v);
      } else {
        best_r.offer(p[v], u, v);
      }
    }
  }
}

void race_range(const float* p, const float* q, int64_t v0, int64_t v1, const SamplingKey& key, uint32_t row,
                uint32_t pos, RaceBest& best_r, RaceBest& best_p) {
  if (q != nullptr)
    race_range_t<true>(p, q, v0, v1, key, row, pos, best_r, best_p);
  else
    race_range_t<false>(p, nullptr, v0, v1, key, row, pos, best_r, best_p);
}
