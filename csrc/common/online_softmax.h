// Online softmax state (running max m, running sum l of exp(score - m)) and the
// log-sum-exp merge used to combine partial results of split-KV attention.
//
// A partial result over a key range is (m, l, acc[D]) with
//   acc = sum_j exp(s_j - m) * v_j      (unnormalized)
// Two partials merge exactly: with m = max(m_a, m_b),
//   l   = l_a * exp(m_a - m) + l_b * exp(m_b - m)
//   acc = acc_a * exp(m_a - m) + acc_b * exp(m_b - m)
// and the final output is acc / l. An empty partial has m = -inf, l = 0; the
// merge guards exp(-inf - -inf) = exp(nan).
#pragma once
#include <math.h>

#include "macros.h"

namespace layerskip {

struct SoftmaxState {
  float m;  // running max of the scores seen so far (-inf when none)
  float l;  // sum of exp(score - m)
};

HOST_DEVICE LS_FORCE_INLINE SoftmaxState softmax_state_empty() { return {-INFINITY, 0.f}; }

// Rescale factor of a partial whose max was `m_old` once the max becomes `m_new`.
HOST_DEVICE LS_FORCE_INLINE float softmax_rescale(float m_old, float m_new) {
  return m_old == -INFINITY ? 0.f : expf(m_old - m_new);
}

// Adds one score; returns the factor by which the caller must scale its
// accumulator before adding p * v, and writes p = exp(score - m_new) to *p.
HOST_DEVICE LS_FORCE_INLINE float softmax_push(SoftmaxState& st, float score, float* p) {
  const float m_new = score > st.m ? score : st.m;
  const float scale = softmax_rescale(st.m, m_new);
  *p = expf(score - m_new);
  st.l = st.l * scale + *p;
  st.m = m_new;
  return scale;
}

// Merges partial b into partial a (both with accumulators of length d).
HOST_DEVICE inline void softmax_merge(SoftmaxState& a, float* acc_a, const SoftmaxState& b,
                                      const float* acc_b, int d) {
  const float m = a.m > b.m ? a.m : b.m;
  if (m == -INFINITY) return;  // both empty
  const float sa = softmax_rescale(a.m, m);
  const float sb = softmax_rescale(b.m, m);
  for (int i = 0; i < d; ++i) acc_a[i] = acc_a[i] * sa + acc_b[i] * sb;
  a.l = a.l * sa + b.l * sb;
  a.m = m;
}

// Natural-log sum of exp of the scores of a partial: m + log(l); -inf when empty.
HOST_DEVICE LS_FORCE_INLINE float softmax_lse(const SoftmaxState& st) {
  return st.l > 0.f ? st.m + logf(st.l) : -INFINITY;
}

}  // namespace layerskip
