// Rotary position embedding, rotate-half convention (transformers' Llama):
//   x1, x2 = x[:D/2], x[D/2:]
//   out    = cat(x1*cos - x2*sin, x2*cos + x1*sin)
// One call rotates the pair (x[i], x[i + D/2]) with the table entry i.
#pragma once
#include "macros.h"

namespace layerskip {

struct RotatedPair {
  float lo;  // new x[i]
  float hi;  // new x[i + D/2]
};

HOST_DEVICE LS_FORCE_INLINE RotatedPair rope_rotate_pair(float x1, float x2, float c, float s) {
  return {x1 * c - x2 * s, x2 * c + x1 * s};
}

// Rotates a whole head in place: x has `head_dim` floats, cos/sin hold head_dim/2.
HOST_DEVICE inline void rope_rotate_head(float* x, const float* cos_row, const float* sin_row,
                                         int head_dim) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    RotatedPair r = rope_rotate_pair(x[i], x[i + half], cos_row[i], sin_row[i]);
    x[i] = r.lo;
    x[i + half] = r.hi;
  }
}

}  // namespace layerskip
