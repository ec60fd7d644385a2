// Unit tests of the header-only math in csrc/common/ (no torch needed).
// Built and run by CMake/ctest; each check prints what failed and the test
// exits non-zero.
#include <math.h>
#include <stdio.h>

#include "../../csrc/common/online_softmax.h"
#include "../../csrc/common/philox.h"
#include "../../csrc/common/rope.h"

static int failures = 0;
#define CHECK(cond)                                                \
  do {                                                             \
    if (!(cond)) {                                                 \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                  \
    }                                                              \
  } while (0)

using namespace layerskip;

static void test_philox_known_answers() {
  // Random123 kat_vectors for philox4x32_10.
  Philox4 a = philox4x32_10(0, 0, 0, 0, 0, 0);
  CHECK(a.x[0] == 0x6627e8d5u && a.x[1] == 0xe169c58du && a.x[2] == 0xbc57ac4cu && a.x[3] == 0x9b00dbd8u);
  Philox4 b = philox4x32_10(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu);
  CHECK(b.x[0] == 0x408f276du && b.x[1] == 0x41c83b0eu && b.x[2] == 0xa20bc7c6u && b.x[3] == 0x6d5451fdu);
  Philox4 c = philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u);
  CHECK(c.x[0] == 0xd16cfe09u && c.x[1] == 0x94fdccebu && c.x[2] == 0x5001e420u && c.x[3] == 0x24126ea1u);
}

static void test_uniform_range() {
  CHECK(philox_uniform(0u) == 1.0f / 16777216.0f);
  CHECK(philox_uniform(0xffffffffu) == 1.0f - 1.0f / 16777216.0f);
  CHECK(philox_uniform(0xffffffffu) < 1.0f);
  CHECK(race_key(1.0f, philox_uniform(0xffffffffu)) > 0.0 && isfinite(race_key(1.0f, philox_uniform(0xffffffffu))));
  CHECK(race_key(0.0f, 0.5f) == 0.0);
}

static void test_accept() {
  CHECK(!sampling_accept(0.1f, 0.5f, 0.0f));          // q == 0 rejects
  CHECK(sampling_accept(1.0f - 1.0f / 16777216.0f, 0.3f, 0.3f));  // p >= q always accepts
  CHECK(sampling_accept(0.49f, 0.5f, 1.0f));
  CHECK(!sampling_accept(0.51f, 0.5f, 1.0f));
  CHECK(!sampling_accept(0.5f, 0.5f, 1.0f));          // strict: u < p / q
}

static void test_rope() {
  // Rotation by an angle preserves the norm of each pair and matches cos/sin.
  const float th = 0.7f;
  RotatedPair r = rope_rotate_pair(1.0f, 0.0f, cosf(th), sinf(th));
  CHECK(fabsf(r.lo - cosf(th)) < 1e-7f && fabsf(r.hi - sinf(th)) < 1e-7f);
  float x[4] = {1.f, 2.f, 3.f, 4.f};
  const float cs[2] = {1.f, 0.f}, sn[2] = {0.f, 1.f};
  rope_rotate_head(x, cs, sn, 4);
  // pair 0 (1, 3) by angle 0; pair 1 (2, 4) by 90 degrees -> (-4, 2)
  CHECK(x[0] == 1.f && x[2] == 3.f && x[1] == -4.f && x[3] == 2.f);
}

static void test_online_softmax_merge() {
  // Scores split into two halves, merged, must equal the one-pass softmax.
  const float s[6] = {0.5f, -1.f, 3.f, 2.f, -0.25f, 1.5f};
  const float v[6] = {1.f, 2.f, 3.f, 4.f, 5.f, 6.f};
  double num = 0, den = 0, mx = -1e30;
  for (float si : s) mx = si > mx ? si : mx;
  for (int i = 0; i < 6; ++i) { num += exp(s[i] - mx) * v[i]; den += exp(s[i] - mx); }
  SoftmaxState a = softmax_state_empty(), b = softmax_state_empty();
  float acc_a = 0.f, acc_b = 0.f, p;
  for (int i = 0; i < 3; ++i) { float sc = softmax_push(a, s[i], &p); acc_a = acc_a * sc + p * v[i]; }
  for (int i = 3; i < 6; ++i) { float sc = softmax_push(b, s[i], &p); acc_b = acc_b * sc + p * v[i]; }
  softmax_merge(a, &acc_a, b, &acc_b, 1);
  CHECK(fabs(acc_a / a.l - num / den) < 1e-6);
  CHECK(fabs(softmax_lse(a) - (mx + log(den))) < 1e-5);
  // Merging an empty partial changes nothing; two empties stay empty.
  SoftmaxState e = softmax_state_empty(), e2 = softmax_state_empty();
  float acc_e = 0.f, acc_e2 = 0.f, before = acc_a / a.l;
  softmax_merge(a, &acc_a, e, &acc_e, 1);
  CHECK(fabsf(acc_a / a.l - before) < 1e-7f);
  softmax_merge(e, &acc_e, e2, &acc_e2, 1);
  CHECK(e.l == 0.f && e.m == -INFINITY && softmax_lse(e) == -INFINITY);
}

int main() {
  test_philox_known_answers();
  test_uniform_range();
  test_accept();
  test_rope();
  test_online_softmax_merge();
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("all common-math checks passed\n");
  return 0;
}
