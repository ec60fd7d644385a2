// draft_verify_attention kernels of one CPU level (included by level_kernels.h
// inside the level's namespace): RoPE + KV-cache write + causal GQA attention
// over a static cache, one task per (batch row, kv head); attention.cpp runs
// the tasks in parallel.
//
// A task owns the cache slice [b, h] and every query that reads it: the G = Hq/Hkv
// query heads times the S queries of row b form a block of G*S query rows that
// shares ONE pass over the keys (tiles of kTile keys converted to fp32 once and
// reused by every row), with an online softmax per row. Decode (S = 1) and
// verify (S = k+1) are bandwidth-bound: K and V are read once per call. Large S
// (prefill) is split into chunks of queries so the per-thread buffers stay
// bounded; a chunk reads only the keys its last query can see.
//
// Three ways to compute the score block Q·K^T of a tile, because the cache keeps
// keys in rows ([t][d]) and vectorizing over d needs a horizontal sum per score:
//   - few rows (decode: G*S < kTransposeRows): one dot product per (row, key),
//     vectorized over d;
//   - a task of kTransposeRows to kMaxRows query rows (verify steps, short
//     prompts) keeps each row in a lane of its own, kLanes rows to a group
//     (queries stored [d][row]): a key's scores for a group are one vector of
//     broadcast-FMAs, and so are the softmax and P·V, with no horizontal sums
//     and no transpose of the keys (with fewer rows most lanes would idle: the
//     dot products cost less);
//   - more rows (long prompts, in chunks of whole queries): the tile is stored
//     transposed ([d][t]) once, and each row's scores are a vector over keys
//     built by broadcast-FMAs, no horizontal sums. The transpose is scalar work
//     per key, which only pays off with many rows.

// Query rows held across the lanes of one vector of fp32 (see above): 16 with
// AVX-512, 8 with AVX2 and the baseline.
constexpr int kLanes = Vec::kLanes;
constexpr int kTile = 2 * kLanes;          // keys per tile: two vectors of scores
constexpr int kMaxRows = kAttnMaxRows;     // query rows (heads x queries) per pass over the keys
// From this many rows on, vectors of rows (up to kLanes) or a transposed key
// tile (more) cost less than the horizontal sums of the dot-product path (a
// rough crossover: G = 4 heads at S = 1 stay on the dot path, verify steps with
// S >= 2 do not).
constexpr int kTransposeRows = 8;

// exp(x) for x <= 0 in fp32 (within ~2 ulp), exactly 0 below -87 and at -inf.
// glibc's vector expf is only declared under -ffast-math, which the exact
// acceptance kernels of this extension must not be built with; this is a plain
// sequence of fma/select/bit operations the compiler vectorizes.
LS_FORCE_INLINE float exp_nonpos(float x) {
  const float xc = x < -87.f ? -87.f : x;
  // Round x/ln2 to an integer with the 1.5*2^23 trick (no fast-math: kept as written).
  const float n = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f;
  float r = fmadd_f(n, -0.693145751953125f, xc);  // ln2 split: hi has 16 bits, n*hi exact
  r = fmadd_f(n, -1.428606765330187e-06f, r);
  // Taylor series of exp on |r| <= ln2/2, degree 7: truncation error < 1e-8.
  float p = 1.f / 5040.f;
  p = fmadd_f(p, r, 1.f / 720.f);
  p = fmadd_f(p, r, 1.f / 120.f);
  p = fmadd_f(p, r, 1.f / 24.f);
  p = fmadd_f(p, r, 1.f / 6.f);
  p = fmadd_f(p, r, 0.5f);
  p = fmadd_f(p, r, 1.f);
  p = fmadd_f(p, r, 1.f);
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 0]
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return x < -87.f ? 0.f : p * two_n;
}

// Per-thread scratch, views of one buffer the caller allocates per thread
// (scratch_floats) for `rows` query rows, rounded up to whole groups of lanes.
struct Scratch {
  float* q;          // [rows, D] rotated, scaled queries
  float* acc;        // [rows, D] unnormalized outputs
  float* k;          // [kTile, D] or transposed [D, kTile]
  float* v;          // [kTile, D]
  float* p;          // [rows, kTile] scores, then probabilities
  float* tmp;        // [D] one head, for RoPE
  SoftmaxState* st;  // [rows]
  float* rescale;    // [rows] accumulator factor of the current tile
  int* visible;      // [rows] keys of the current tile the row sees
};

inline int64_t lane_rows(int64_t rows) { return (rows + kLanes - 1) / kLanes * kLanes; }

int64_t attention_scratch_floats(int64_t rows, int64_t D) {
  const int64_t R = lane_rows(rows);
  return 2 * R * D + 2 * kTile * D + R * kTile + D + 2 * R + R + R;
}

Scratch scratch_views(float* base, int64_t rows, int64_t D) {
  const int64_t R = lane_rows(rows);
  Scratch W;
  W.q = base;
  W.acc = W.q + R * D;
  W.k = W.acc + R * D;
  W.v = W.k + kTile * D;
  W.p = W.v + kTile * D;
  W.tmp = W.p + R * kTile;
  W.st = reinterpret_cast<SoftmaxState*>(W.tmp + D);
  W.rescale = W.tmp + D + 2 * R;
  W.visible = reinterpret_cast<int*>(W.rescale + R);
  return W;
}

// Loads one head (stride `sd` over d) into fp32, rotated at table row `pos` when kRope.
template <typename scalar_t, bool kRope>
void load_head(const scalar_t* src, int64_t sd, int64_t D, const AttnParams& P, const float* cos,
               const float* sin, int64_t pos, float* dst) {
  for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<float>(src[d * sd]);
  if constexpr (kRope) {
    const float* c = cos + pos * P.cos_s0;
    const float* s = sin + pos * P.sin_s0;
    const int64_t half = D / 2;
    for (int64_t i = 0; i < half; ++i) {
      const RotatedPair r = rope_rotate_pair(dst[i], dst[i + half], c[i * P.cos_s1], s[i * P.sin_s1]);
      dst[i] = r.lo;
      dst[i + half] = r.hi;
    }
  }
}

// Scores of `nrows` rows against one tile of keys stored [t][d]: a dot product each.
template <int kD>
void scores_dot(const float* __restrict q, int nrows, const float* __restrict k, int nt, int64_t Drt,
                float* __restrict out) {
  const int64_t D = kD > 0 ? kD : Drt;
  for (int t = 0; t < nt; ++t) {
    const float* kt = k + t * D;
    for (int r = 0; r < nrows; ++r) {
      const float* qr = q + r * D;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t d = 0; d < D; ++d) s = fmadd_f(qr[d], kt[d], s);
      out[r * kTile + t] = s;
    }
  }
}

// out[i][w] = a_i · bT[:, w] for NA rows a_i (stride D) against bT stored [d][W]:
// a vector over w per row; the NA rows share each load of bT[d] and give NA
// independent FMA chains. Transposed keys: a = query rows, bT = a key tile
// [d][kTile]. Rows in lanes: a = keys, bT = a group's queries [d][kLanes].
template <int kD, int NA, int W>
LS_FORCE_INLINE void dot_block(const float* __restrict a, const float* __restrict bT, int64_t Drt,
                               float* __restrict out) {
  const int64_t D = kD > 0 ? kD : Drt;
  float s[NA][W];
  for (int i = 0; i < NA; ++i)
#pragma omp simd
    for (int w = 0; w < W; ++w) s[i][w] = 0.f;
  for (int64_t d = 0; d < D; ++d) {
    const float* bd = bT + d * W;
    for (int i = 0; i < NA; ++i) {
      const float ad = a[i * D + d];
#pragma omp simd
      for (int w = 0; w < W; ++w) s[i][w] = fmadd_f(ad, bd[w], s[i][w]);
    }
  }
  for (int i = 0; i < NA; ++i)
#pragma omp simd
    for (int w = 0; w < W; ++w) out[i * W + w] = s[i][w];
}

template <int kD>
void scores_transposed(const float* q, int nrows, const float* kT, int64_t Drt, float* out) {
  const int64_t D = kD > 0 ? kD : Drt;
  int r = 0;
  for (; r + 4 <= nrows; r += 4) dot_block<kD, 4, kTile>(q + r * D, kT, Drt, out + r * kTile);
  for (; r + 2 <= nrows; r += 2) dot_block<kD, 2, kTile>(q + r * D, kT, Drt, out + r * kTile);
  for (; r < nrows; ++r) dot_block<kD, 1, kTile>(q + r * D, kT, Drt, out + r * kTile);
}

// acc_i[0..D) = acc_i * rescale_i + sum_t p_i[t] * v[t][:] for NR rows at once
// (NR independent FMA chains per vector of d, sharing each load of v), with the
// accumulators held in registers across the tile when D is a compile-time constant.
template <int kD, int NR>
LS_FORCE_INLINE void accumulate_pv(float* __restrict acc, const float* rescale, const float* __restrict p,
                                   const float* __restrict v, int nt, int64_t Drt) {
  if constexpr (kD > 0) {
    float a[NR][kD];
    for (int i = 0; i < NR; ++i)
#pragma omp simd
      for (int d = 0; d < kD; ++d) a[i][d] = acc[i * kD + d] * rescale[i];
    for (int t = 0; t < nt; ++t) {
      const float* vt = v + t * kD;
      for (int i = 0; i < NR; ++i) {
        const float pt = p[i * kTile + t];
#pragma omp simd
        for (int d = 0; d < kD; ++d) a[i][d] = fmadd_f(pt, vt[d], a[i][d]);
      }
    }
    for (int i = 0; i < NR; ++i)
#pragma omp simd
      for (int d = 0; d < kD; ++d) acc[i * kD + d] = a[i][d];
  } else {
    for (int i = 0; i < NR; ++i) {
      float* ai = acc + i * Drt;
      for (int64_t d = 0; d < Drt; ++d) ai[d] *= rescale[i];
      for (int t = 0; t < nt; ++t) {
        const float pt = p[i * kTile + t];
        const float* vt = v + t * Drt;
#pragma omp simd
        for (int64_t d = 0; d < Drt; ++d) ai[d] = fmadd_f(pt, vt[d], ai[d]);
      }
    }
  }
}

// acc[d][lane] = acc[d][lane] * rescale[lane] + sum_t p[t][lane] * v[t][d], NB values
// of d at a time held in registers across the keys. Keys at index >= first_masked
// (the step's new keys, which later queries of the block see and earlier ones do
// not) add only to lanes with key <= last[lane]: p = 0 there already, but 0 * v
// would turn an inf or NaN in a later query's v_new into NaN in an earlier output.
template <int kD>
void accumulate_pv_lanes(float* __restrict acc, const float* __restrict rescale, const float* __restrict p,
                         const float* __restrict v, int nt, int64_t Drt, int64_t t0, int64_t first_masked,
                         const int64_t* __restrict last) {
  constexpr int NB = 8;
  const int64_t D = kD > 0 ? kD : Drt;
  const int n_plain = static_cast<int>(std::clamp<int64_t>(first_masked - t0, 0, nt));
  int64_t d0 = 0;
  for (; d0 + NB <= D; d0 += NB) {
    float a[NB][kLanes];
    for (int j = 0; j < NB; ++j)
#pragma omp simd
      for (int r = 0; r < kLanes; ++r) a[j][r] = acc[(d0 + j) * kLanes + r] * rescale[r];
    for (int t = 0; t < n_plain; ++t) {
      const float* pt = p + t * kLanes;
      for (int j = 0; j < NB; ++j) {
        const float vv = v[t * D + d0 + j];
#pragma omp simd
        for (int r = 0; r < kLanes; ++r) a[j][r] = fmadd_f(pt[r], vv, a[j][r]);
      }
    }
    for (int t = n_plain; t < nt; ++t) {
      const float* pt = p + t * kLanes;
      const int64_t key = t0 + t;
      for (int j = 0; j < NB; ++j) {
        const float vv = v[t * D + d0 + j];
#pragma omp simd
        for (int r = 0; r < kLanes; ++r) a[j][r] = key <= last[r] ? fmadd_f(pt[r], vv, a[j][r]) : a[j][r];
      }
    }
    for (int j = 0; j < NB; ++j)
#pragma omp simd
      for (int r = 0; r < kLanes; ++r) acc[(d0 + j) * kLanes + r] = a[j][r];
  }
  if constexpr (kD % NB != 0 || kD == 0) {
    for (; d0 < D; ++d0) {  // a D that is not a multiple of NB: the rest one value of d at a time
      float* ad = acc + d0 * kLanes;
#pragma omp simd
      for (int r = 0; r < kLanes; ++r) ad[r] *= rescale[r];
      for (int t = 0; t < nt; ++t) {
        const float* pt = p + t * kLanes;
        const float vv = v[t * D + d0];
        const int64_t key = t0 + t;
#pragma omp simd
        for (int r = 0; r < kLanes; ++r) ad[r] = key <= last[r] ? fmadd_f(pt[r], vv, ad[r]) : ad[r];
      }
    }
  }
}

// Attention of a whole task's G*S <= kMaxRows query rows, row R = s*G + g in lane
// R % kLanes of group R / kLanes (lanes past G*S idle: they see no key). K and V
// are read once, a tile of kTile keys at a time converted to fp32 in rows and
// shared by every group; the online softmax runs per lane.
template <typename scalar_t, bool kRope, int kD>
void attention_lanes(const AttnParams& P, int64_t b, int64_t h, int64_t L, const scalar_t* q,
                     const scalar_t* kc, const scalar_t* vc, const float* cos, const float* sin,
                     scalar_t* out, Scratch& W) {
  constexpr int kMaxGroups = kMaxRows / kLanes;
  const int64_t D = kD > 0 ? kD : P.D;
  const int64_t S = P.S, G = P.G;
  const int nrows = static_cast<int>(S * G);
  const int groups = (nrows + kLanes - 1) / kLanes;
  float* kbuf = W.k;  // [kTile][D]
  float* vbuf = W.v;  // [kTile][D]
  // Per group: queries qT and accumulators acc [D][kLanes], scores [kTile][kLanes].
  auto qT = [&](int grp) { return W.q + grp * D * kLanes; };
  auto acc = [&](int grp) { return W.acc + grp * D * kLanes; };
  auto sc = [&](int grp) { return W.p + grp * kTile * kLanes; };
  alignas(64) float m[kMaxGroups][kLanes], l[kMaxGroups][kLanes];
  alignas(64) float m_new[kLanes], rescale[kLanes], sum[kLanes], m_tile[kLanes];
  alignas(64) int64_t last[kMaxGroups][kLanes];  // the last key a lane sees; -1: an idle lane
  for (int grp = 0; grp < groups; ++grp) {
    for (int r = 0; r < kLanes; ++r) {
      const int R = grp * kLanes + r;
      last[grp][r] = R < nrows ? L + R / G : -1;
      m[grp][r] = -INFINITY;
      l[grp][r] = 0.f;
    }
    float* qg = qT(grp);
    for (int r = 0; r < kLanes; ++r) {
      const int R = grp * kLanes + r;
      if (R >= nrows) {
        for (int64_t d = 0; d < D; ++d) qg[d * kLanes + r] = 0.f;
        continue;
      }
      const int64_t s = R / G, g = R % G;
      load_head<scalar_t, kRope>(q + b * P.q.s0 + s * P.q.s1 + (h * G + g) * P.q.s2, P.q.s3, D, P, cos, sin,
                                 L + s, W.tmp);
      for (int64_t d = 0; d < D; ++d) qg[d * kLanes + r] = W.tmp[d] * P.scale;
    }
    std::fill(acc(grp), acc(grp) + D * kLanes, 0.f);
  }

  const int64_t n_keys = L + S;  // keys the block's last query sees
  for (int64_t t0 = 0; t0 < n_keys; t0 += kTile) {
    const int nt = static_cast<int>(std::min<int64_t>(kTile, n_keys - t0));
    for (int t = 0; t < nt; ++t) {
      const scalar_t* ksrc = kc + (t0 + t) * P.kc.s2;
      const scalar_t* vsrc = vc + (t0 + t) * P.vc.s2;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) kbuf[t * D + d] = static_cast<float>(ksrc[d]);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) vbuf[t * D + d] = static_cast<float>(vsrc[d]);
    }
    for (int grp = 0; grp < groups; ++grp) {
      float* scg = sc(grp);
      const int64_t* lastg = last[grp];
      int t = 0;
      for (; t + 8 <= nt; t += 8) dot_block<kD, 8, kLanes>(kbuf + t * D, qT(grp), D, scg + t * kLanes);
      for (; t < nt; ++t) dot_block<kD, 1, kLanes>(kbuf + t * D, qT(grp), D, scg + t * kLanes);

      // Causal mask and the tile's max per lane, then the new running max.
#pragma omp simd
      for (int r = 0; r < kLanes; ++r) m_tile[r] = -INFINITY;
      for (int u = 0; u < nt; ++u) {
        const int64_t key = t0 + u;
        float* pu = scg + u * kLanes;
#pragma omp simd
        for (int r = 0; r < kLanes; ++r) {
          const float x = key <= lastg[r] ? pu[r] : -INFINITY;
          pu[r] = x;
          m_tile[r] = std::max(m_tile[r], x);
        }
      }
      // A lane whose scores so far are all -inf adds nothing yet (p = 0, no rescale).
      float* mg = m[grp];
      float* lg = l[grp];
#pragma omp simd
      for (int r = 0; r < kLanes; ++r) {
        m_new[r] = std::max(mg[r], m_tile[r]);
        const bool empty = m_new[r] == -INFINITY;
        rescale[r] = empty ? 1.f : (mg[r] == -INFINITY ? 0.f : exp_nonpos(mg[r] - m_new[r]));
        sum[r] = 0.f;
      }
      for (int u = 0; u < nt; ++u) {
        float* pu = scg + u * kLanes;
#pragma omp simd
        for (int r = 0; r < kLanes; ++r) {
          const float e = m_new[r] == -INFINITY ? 0.f : exp_nonpos(pu[r] - m_new[r]);
          pu[r] = e;
          sum[r] += e;
        }
      }
#pragma omp simd
      for (int r = 0; r < kLanes; ++r) {
        lg[r] = lg[r] * rescale[r] + sum[r];
        mg[r] = m_new[r];
      }
      accumulate_pv_lanes<kD>(acc(grp), rescale, scg, vbuf, nt, D, t0, L, lastg);
    }
  }

  for (int R = 0; R < nrows; ++R) {
    const int grp = R / kLanes, r = R % kLanes;
    const int64_t s = R / G, g = R % G;
    const float inv = 1.f / l[grp][r];
    const float* ag = acc(grp);
    scalar_t* o = out + ((b * S + s) * P.Hq + h * G + g) * D;
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(ag[d * kLanes + r] * inv);
  }
}

// One (batch row b, kv head h) task: cache write, then attention of its G*S rows.
template <typename scalar_t, bool kRope, int kD>
void attention_task(const AttnParams& P, int64_t b, int64_t h, int64_t L, const scalar_t* q,
                    scalar_t* k_cache, scalar_t* v_cache, const scalar_t* k_new,
                    const scalar_t* v_new, const float* cos, const float* sin, scalar_t* out,
                    int64_t rows_per_chunk, Scratch& W) {
  const int64_t D = kD > 0 ? kD : P.D;
  const int64_t S = P.S, G = P.G;
  scalar_t* kc = k_cache + b * P.kc.s0 + h * P.kc.s1;
  scalar_t* vc = v_cache + b * P.vc.s0 + h * P.vc.s1;

  // (1) Write this head's new keys (rotated, rounded once to the cache dtype) and values.
  for (int64_t s = 0; s < S; ++s) {
    const int64_t pos = L + s;
    load_head<scalar_t, kRope>(k_new + b * P.kn.s0 + s * P.kn.s1 + h * P.kn.s2, P.kn.s3, D, P, cos,
                               sin, pos, W.tmp);
    scalar_t* kdst = kc + pos * P.kc.s2;
    for (int64_t d = 0; d < D; ++d) kdst[d] = static_cast<scalar_t>(W.tmp[d]);
    const scalar_t* vsrc = v_new + b * P.vn.s0 + s * P.vn.s1 + h * P.vn.s2;
    scalar_t* vdst = vc + pos * P.vc.s2;
    for (int64_t d = 0; d < D; ++d) vdst[d] = vsrc[d * P.vn.s3];
  }
  if (G == 0) return;
  if (S * G >= kTransposeRows && S * G <= kMaxRows) {
    attention_lanes<scalar_t, kRope, kD>(P, b, h, L, q, kc, vc, cos, sin, out, W);
    return;
  }

  // (2) Attention, one chunk of query rows at a time. Rows are numbered
  // R = s * G + g over the whole task and r = R - R0 inside a chunk; a chunk is
  // whole queries when G <= kMaxRows, else part of one query's heads, so the
  // scratch stays bounded whatever G is.
  for (int64_t R0 = 0; R0 < S * G; R0 += rows_per_chunk) {
    const int64_t R1 = std::min(S * G, R0 + rows_per_chunk);
    const int nrows = static_cast<int>(R1 - R0);
    const int64_t s0 = R0 / G, s_last = (R1 - 1) / G;
    for (int r = 0; r < nrows; ++r) {
      const int64_t s = (R0 + r) / G, g = (R0 + r) % G;
      float* qr = W.q + r * D;
      load_head<scalar_t, kRope>(q + b * P.q.s0 + s * P.q.s1 + (h * G + g) * P.q.s2, P.q.s3, D, P,
                                 cos, sin, L + s, qr);
      for (int64_t d = 0; d < D; ++d) qr[d] *= P.scale;
    }
    std::fill(W.acc, W.acc + nrows * D, 0.f);
    std::fill(W.st, W.st + nrows, softmax_state_empty());
    const bool transposed = nrows >= kTransposeRows;

    const int64_t n_keys = L + s_last + 1;  // keys the chunk's last query sees
    for (int64_t t0 = 0; t0 < n_keys; t0 += kTile) {
      const int nt = static_cast<int>(std::min<int64_t>(kTile, n_keys - t0));
      // Convert the tile to fp32 once for all rows. Keys past n_keys are never
      // read: their scores are masked and their values multiply p = 0 (zeros, not
      // whatever stale data the cache holds, so 0 * NaN cannot happen).
      float* kbuf = W.k;
      float* vbuf = W.v;
      for (int t = 0; t < nt; ++t) {
        const scalar_t* ksrc = kc + (t0 + t) * P.kc.s2;
        const scalar_t* vsrc = vc + (t0 + t) * P.vc.s2;
        if (transposed) {
          for (int64_t d = 0; d < D; ++d) kbuf[d * kTile + t] = static_cast<float>(ksrc[d]);
        } else {
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) kbuf[t * D + d] = static_cast<float>(ksrc[d]);
        }
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) vbuf[t * D + d] = static_cast<float>(vsrc[d]);
      }
      if (nt < kTile) {
        std::fill(vbuf + nt * D, vbuf + kTile * D, 0.f);
        if (transposed)
          for (int64_t d = 0; d < D; ++d) std::fill(kbuf + d * kTile + nt, kbuf + (d + 1) * kTile, 0.f);
      }

      // Rows whose queries see no key of this tile are skipped (prefill chunks).
      const int64_t first_s = std::max<int64_t>(s0, t0 - L);  // queries with L + s >= t0
      const int r_begin = static_cast<int>(std::max<int64_t>(0, first_s * G - R0));
      if (r_begin >= nrows) continue;
      float* sc = W.p;
      if (transposed)
        scores_transposed<kD>(W.q + r_begin * D, nrows - r_begin, kbuf, D, sc + r_begin * kTile);
      else
        scores_dot<kD>(W.q + r_begin * D, nrows - r_begin, kbuf, nt, D, sc + r_begin * kTile);

      // Online softmax per row: p = exp(score - running max), and the factor
      // that rescales the row's accumulator to the new max.
      float* rescale = W.rescale;
      int* visible = W.visible;
      for (int r = r_begin; r < nrows; ++r) {
        const int64_t s = (R0 + r) / G;
        // Keys t0 + t with t0 + t <= L + s are visible to this row.
        const int vis = static_cast<int>(std::min<int64_t>(nt, L + s + 1 - t0));
        float* pr = sc + r * kTile;
        float m_tile = -INFINITY;
#pragma omp simd reduction(max : m_tile)
        for (int t = 0; t < kTile; ++t) m_tile = std::max(m_tile, t < vis ? pr[t] : -INFINITY);
        SoftmaxState& st = W.st[r];
        const float m_new = std::max(st.m, m_tile);
        if (m_new == -INFINITY) {  // every score so far is -inf: nothing to add yet
          rescale[r] = 1.f;
          visible[r] = 0;
          std::fill(pr, pr + kTile, 0.f);  // its P·V partner may run over this tile
          continue;
        }
        rescale[r] = softmax_rescale(st.m, m_new);
        visible[r] = vis;
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int t = 0; t < kTile; ++t) {
          const float e = exp_nonpos(pr[t] - m_new);
          pr[t] = t < vis ? e : 0.f;
          sum += pr[t];
        }
        st.l = st.l * rescale[r] + sum;
        st.m = m_new;
      }
      // P·V two rows at a time over the keys both rows see; the longer row
      // then takes its extra keys alone. Running the pair to the longer range
      // would multiply the shorter row's p = 0 by values it must not see, and
      // 0 * NaN (a NaN in a later query's v_new) would leak into its output.
      int r = r_begin;
      for (; r + 2 <= nrows; r += 2) {
        const int lo = std::min(visible[r], visible[r + 1]), hi = std::max(visible[r], visible[r + 1]);
        accumulate_pv<kD, 2>(W.acc + r * D, rescale + r, sc + r * kTile, vbuf, lo, D);
        if (hi > lo) {
          const int longer = visible[r] > visible[r + 1] ? r : r + 1;
          const float no_rescale = 1.f;  // already applied by the pair call
          accumulate_pv<kD, 1>(W.acc + longer * D, &no_rescale, sc + longer * kTile + lo,
                               vbuf + lo * D, hi - lo, D);
        }
      }
      if (r < nrows) accumulate_pv<kD, 1>(W.acc + r * D, rescale + r, sc + r * kTile, vbuf, visible[r], D);
    }

    for (int r = 0; r < nrows; ++r) {
      const int64_t s = (R0 + r) / G, g = (R0 + r) % G;
      const float inv = 1.f / W.st[r].l;
      const float* ar = W.acc + r * D;
      scalar_t* o = out + ((b * S + s) * P.Hq + h * G + g) * D;
      for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(ar[d] * inv);
    }
  }
}

template <typename scalar_t>
void attention_task_t(const AttnParams& P, const AttnPtrs& A, int64_t b, int64_t h, int64_t rows_per_chunk,
                      float* scratch) {
  Scratch W = scratch_views(scratch, rows_per_chunk, P.D);
  const bool has_rope = A.cos != nullptr;
  LS_BOOL_SWITCH(has_rope, kRope, [&] {
    auto go = [&](auto d_const) {
      constexpr int kD = decltype(d_const)::value;
      attention_task<scalar_t, kRope, kD>(
          P, b, h, A.lens[b], static_cast<const scalar_t*>(A.q), static_cast<scalar_t*>(A.k_cache),
          static_cast<scalar_t*>(A.v_cache), static_cast<const scalar_t*>(A.k_new),
          static_cast<const scalar_t*>(A.v_new), A.cos, A.sin, static_cast<scalar_t*>(A.out), rows_per_chunk, W);
    };
    switch (P.D) {
      case 32: go(std::integral_constant<int, 32>{}); break;
      case 64: go(std::integral_constant<int, 64>{}); break;
      case 96: go(std::integral_constant<int, 96>{}); break;
      case 128: go(std::integral_constant<int, 128>{}); break;
      default: go(std::integral_constant<int, 0>{}); break;  // any other D: runtime loops
    }
  });
}

void attention_task(DType dt, const AttnParams& P, const AttnPtrs& A, int64_t b, int64_t h, int64_t rows_per_chunk,
                    float* scratch) {
  switch (dt) {
    case DType::kFloat: return attention_task_t<float>(P, A, b, h, rows_per_chunk, scratch);
    case DType::kHalf: return attention_task_t<c10::Half>(P, A, b, h, rows_per_chunk, scratch);
    case DType::kBFloat16: return attention_task_t<c10::BFloat16>(P, A, b, h, rows_per_chunk, scratch);
  }
}
