// Philox4x32-10 (Salmon et al., SC'11) and the random numbers that
// verify_sampling draws from it. This is the one C++ implementation, used by
// the CPU and CUDA kernels; reference.py and the Triton kernel reproduce it bit
// for bit. The counter layout is documented in layerskip_kernels/reference.py.
#pragma once
#include <math.h>
#include <stdint.h>

#include "macros.h"

namespace layerskip {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct Philox4 {
  uint32_t x[4];
};

HOST_DEVICE LS_FORCE_INLINE void philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

HOST_DEVICE inline Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                         uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kPhiloxM0, c0, &hi0, &lo0);
    philox_mulhilo(kPhiloxM1, c2, &hi1, &lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return {{c0, c1, c2, c3}};
}

// uint32 -> uniform in [2^-24, 1 - 2^-24]: the top 23 bits plus one half, so
// the value is exact in fp32 (24 significant bits), never 0 and never 1 (the
// exponential race needs log(u) finite and nonzero).
HOST_DEVICE LS_FORCE_INLINE float philox_uniform(uint32_t x) {
  return (static_cast<float>(x >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

// Counter fields of verify_sampling (see reference.py):
//   c0 = vocabulary group v / 4 (word v % 4), or 0 for the accept coin
//   c1 = 2 * position for the race at that position, 2 * position + 1 for its coin
//   c2 = batch row, c3 = offset; key = (seed low 32 bits, seed high 32 bits)
struct SamplingKey {
  uint32_t k0, k1, offset;
};

HOST_DEVICE LS_FORCE_INLINE float sampling_coin(const SamplingKey& key, uint32_t row, uint32_t pos) {
  return philox_uniform(philox4x32_10(0u, 2u * pos + 1u, row, key.offset, key.k0, key.k1).x[0]);
}

// The four race uniforms of vocabulary ids 4*group .. 4*group+3 at (row, pos).
HOST_DEVICE LS_FORCE_INLINE Philox4 sampling_race_words(const SamplingKey& key, uint32_t row,
                                                        uint32_t pos, uint32_t group) {
  return philox4x32_10(group, 2u * pos, row, key.offset, key.k0, key.k1);
}

// Exponential race key r / E with E = -log(u), in double so that every backend
// orders candidates identically (fp32 logf differs by an ulp between libms).
// The winner of argmax_v r_v / E_v is distributed as r / sum(r).
HOST_DEVICE LS_FORCE_INLINE double race_key(float r, float u) {
  return static_cast<double>(r) / -log(static_cast<double>(u));
}

// Accept test of draft token d: u < p(d) / q(d), written without a division.
// u and q have 24-bit significands, so the double product is exact.
HOST_DEVICE LS_FORCE_INLINE bool sampling_accept(float u, float p, float q) {
  return q > 0.f && static_cast<double>(u) * static_cast<double>(q) < static_cast<double>(p);
}

}  // namespace layerskip
