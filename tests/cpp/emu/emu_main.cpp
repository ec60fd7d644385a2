// Runs the real CUDA kernels of csrc/cuda/*_kernels.cuh on the CPU (through
// cuda_shim.h) on the cases gen_cases.py wrote from reference.py, and checks
// them as the pytest parity tests check a backend:
//   attention: output within the tests' tolerance of the fp64 truth, v_cache
//     bit-identical to the reference's, k_cache within one rounding (RoPE) or
//     bit-identical, rows with out-of-range lengths untouched with zero output;
//     each case with the automatic plan and with 3 forced key splits (merge,
//     empty splits), with the scalar K/V path on every third case, and q as a
//     strided view over a NaN-filled buffer. fp16/bf16 run the tensor-core
//     kernel (mma, ldmatrix and cp.async emulated lane by lane, cuda_shim.h),
//     fp32 the FMA kernel. Where the truth is NaN or inf (a query that sees a
//     non-finite V), the output must be the same.
//   acceptance: num_accepted and out_tokens identical to the reference, with
//     and without per-row draft lengths (a case's optional "lens" tensor).
// Every buffer has NaN/0xA5 guard bytes on both sides, checked after each run:
// a write outside a tensor fails the case.
//
// Usage: emu_main CASE_DIR [FILTER]   (exit status: number of failed cases, capped)
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cuda_shim.h"

// The kernels under test, compiled as host C++.
#include "../../../csrc/cuda/acceptance_kernels.cuh"
#include "../../../csrc/cuda/attention_kernels.cuh"

#include <dirent.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <string>

namespace {

using namespace layerskip;
using namespace layerskip::cuda;

enum Code : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3, kI32 = 4, kI64 = 5 };
constexpr size_t kCodeBytes[] = {4, 2, 2, 8, 4, 8};

struct Tensor {
  Code code;
  std::vector<int64_t> shape;
  std::vector<unsigned char> data;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  template <typename T>
  const T* as() const {
    return reinterpret_cast<const T*>(data.data());
  }
  double scalar() const {
    switch (code) {
      case kF64: return *as<double>();
      case kI64: return static_cast<double>(*as<int64_t>());
      default: return NAN;
    }
  }
};

using Case = std::map<std::string, Tensor>;

Case read_case(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::string magic(7, '\0');
  f.read(&magic[0], 7);
  if (magic != "LSEMU1\n") throw std::runtime_error(path + ": not a case file");
  Case c;
  while (f.peek() != EOF) {
    std::string name;
    std::getline(f, name, '\0');
    uint8_t hdr[2];
    f.read(reinterpret_cast<char*>(hdr), 2);
    Tensor t;
    t.code = static_cast<Code>(hdr[0]);
    t.shape.resize(hdr[1]);
    f.read(reinterpret_cast<char*>(t.shape.data()), 8 * hdr[1]);
    t.data.resize(t.numel() * kCodeBytes[t.code]);
    f.read(reinterpret_cast<char*>(t.data.data()), t.data.size());
    if (!f) throw std::runtime_error(path + ": truncated");
    c.emplace(name, std::move(t));
  }
  return c;
}

// A device-like allocation: 16-byte aligned payload between guard bytes.
class Buffer {
 public:
  static constexpr size_t kGuard = 256;
  explicit Buffer(size_t bytes, size_t shift = 0)
      : raw_(bytes + 2 * kGuard + 16 + shift, 0xA5), bytes_(bytes) {
    uintptr_t p = reinterpret_cast<uintptr_t>(raw_.data()) + kGuard;
    p += (16 - p % 16) % 16 + shift;
    data_ = reinterpret_cast<unsigned char*>(p);
  }
  unsigned char* data() { return data_; }
  template <typename T>
  T* as() {
    return reinterpret_cast<T*>(data_);
  }
  bool guards_intact() const {
    for (const unsigned char* p = raw_.data(); p < data_; ++p)
      if (*p != 0xA5) return false;
    for (const unsigned char* p = data_ + bytes_; p < raw_.data() + raw_.size(); ++p)
      if (*p != 0xA5) return false;
    return true;
  }

 private:
  std::vector<unsigned char> raw_;
  size_t bytes_;
  unsigned char* data_;
};

Buffer upload(const Tensor& t, size_t shift = 0) {
  Buffer b(t.data.size(), shift);
  memcpy(b.data(), t.data.data(), t.data.size());
  return b;
}

template <typename T>
double to_double(T x) {
  return static_cast<double>(static_cast<float>(x));
}

struct Failure {
  std::string what;
};

void expect(bool ok, const std::string& what) {
  if (!ok) throw Failure{what};
}

// ------------------------------------------------------------------ attention

template <typename T>
void run_attention(const Case& c, int forced_splits, bool scalar_kv, std::string* info) {
  using namespace layerskip::cuda::attention;
  const Tensor& q = c.at("q");
  const Tensor& kc = c.at("k_cache");
  const int64_t B = q.shape[0], S = q.shape[1], Hq = q.shape[2], D = q.shape[3];
  const int64_t Hkv = kc.shape[1], T_max = kc.shape[2];
  const bool rope = c.count("cos") != 0;
  const AttnShape shape{B, S, Hq, Hkv, D, T_max};
  // An sm_86-sized shared memory limit (the R = 128 -> 64 fallback gets
  // exercised) and a one-wave budget of 2 SMs x 2 CTAs; fp16/bf16 take the
  // tensor-core kernel as on sm_80+.
  constexpr bool kHalf = sizeof(T) == 2;
  AttnLaunch l = plan_tiles(shape, 99 * 1024, kHalf);
  plan_splits(shape, 2, 2, forced_splits, &l);
  *info = std::string(kHalf ? "mma " : "fp32 ") + "R=" + std::to_string(l.rows) +
          " tiles=" + std::to_string(l.q_tiles) + " splits=" + std::to_string(l.splits) +
          (scalar_kv ? " scalar-kv" : "");

  // q as a view with head stride 2*D over a NaN buffer (the tests' non-contiguous q).
  Buffer qbuf(2 * q.data.size());
  memset(qbuf.data(), 0xFF, 2 * q.data.size());
  for (int64_t row = 0; row < B * S * Hq; ++row)
    memcpy(qbuf.data() + 2 * row * D * sizeof(T), q.data.data() + row * D * sizeof(T),
           D * sizeof(T));
  // scalar_kv: caches shifted by one element, so 16-byte loads are not allowed.
  const size_t shift = scalar_kv ? sizeof(T) : 0;
  Buffer kbuf = upload(kc, shift), vbuf = upload(c.at("v_cache"), shift);
  Buffer knb = upload(c.at("k_new")), vnb = upload(c.at("v_new"));
  Buffer lens = upload(c.at("seqlens"));
  std::unique_ptr<Buffer> cosb, sinb;
  if (rope) {
    cosb = std::make_unique<Buffer>(upload(c.at("cos")));
    sinb = std::make_unique<Buffer>(upload(c.at("sin")));
  }
  Buffer out(q.data.size());
  memset(out.data(), 0xFF, q.data.size());  // NaN: every element must be written
  const size_t ws_rows = static_cast<size_t>(std::max<int64_t>(l.merge_rows, 1)) * l.splits;
  Buffer ws_acc(ws_rows * D * sizeof(float)), ws_ml(ws_rows * 2 * sizeof(float));
  memset(ws_acc.data(), 0xFF, ws_rows * D * sizeof(float));
  memset(ws_ml.data(), 0xFF, ws_rows * 2 * sizeof(float));

  AttnTensors t{};
  t.q = qbuf.data();
  t.k_cache = kbuf.data();
  t.v_cache = vbuf.data();
  t.k_new = knb.data();
  t.v_new = vnb.data();
  t.seqlens = lens.as<int32_t>();
  t.cos = rope ? cosb->as<float>() : nullptr;
  t.sin = rope ? sinb->as<float>() : nullptr;
  t.out = out.data();
  t.ws_acc = l.splits > 1 ? ws_acc.as<float>() : nullptr;
  t.ws_ml = l.splits > 1 ? ws_ml.as<float>() : nullptr;
  const int64_t q_s[4] = {S * 2 * Hq * D, 2 * Hq * D, 2 * D, 1};
  const int64_t c_s[3] = {Hkv * T_max * D, T_max * D, D};
  const int64_t n_s[4] = {S * Hkv * D, Hkv * D, D, 1};
  for (int i = 0; i < 4; ++i) t.q_s[i] = q_s[i], t.kn_s[i] = n_s[i], t.vn_s[i] = n_s[i];
  for (int i = 0; i < 3; ++i) t.kc_s[i] = c_s[i], t.vc_s[i] = c_s[i];
  t.cos_s[0] = t.sin_s[0] = D / 2;
  t.cos_s[1] = t.sin_s[1] = 1;
  t.elem_size = sizeof(T);
  WriteParams wp;
  AttnParams ap;
  make_params(shape, l, t, c.at("scale").scalar(), &wp, &ap);
  expect(ap.kv_vec == !scalar_kv, "kv_vec flag");

  // The three launches of attention.cu, in stream order.
  LS_BOOL_SWITCH(rope, kRope, [&] {
    ls_emu::launch(cache_write_kernel<T, kRope>, dim3(static_cast<unsigned>(l.write_blocks)),
                   dim3(kWriteThreads), 0, wp);
  });
  LS_HEAD_DIM_SWITCH(static_cast<int>(D), kD, [&] {
    LS_ROW_TILE_SWITCH(l.rows, kR, [&] {
      if constexpr (kHalf)
        ls_emu::launch(attention_mma_kernel<T, kD, kR>, dim3(static_cast<unsigned>(l.ctas)),
                       dim3(l.threads), l.smem, ap);
      else
        ls_emu::launch(attention_split_kernel<T, kD, kR>, dim3(static_cast<unsigned>(l.ctas)),
                       dim3(l.threads), l.smem, ap);
    });
  });
  if (l.merge_ctas > 0)
    ls_emu::launch(attention_merge_kernel<T>, dim3(static_cast<unsigned>(l.merge_ctas)),
                   dim3(static_cast<unsigned>(D / 4), static_cast<unsigned>(l.merge_rows_per_cta)), 0,
                   ap.ws_acc, ap.ws_ml, static_cast<T*>(ap.out), l.merge_rows, ap.S, ap.Hq,
                   ap.Hkv, ap.G, ap.splits);

  for (Buffer* b : {&qbuf, &kbuf, &vbuf, &knb, &vnb, &lens, &out, &ws_acc, &ws_ml})
    expect(b->guards_intact(), "write outside a buffer");
  if (rope) expect(cosb->guards_intact() && sinb->guards_intact(), "write outside cos/sin");

  // Output vs the fp64 truth, with the tests' tolerance.
  const double* truth = c.at("truth").as<double>();
  const T* got = out.as<T>();
  double max_err = 0, sq = 0;
  int64_t n_finite = 0;
  for (int64_t i = 0; i < q.numel(); ++i) {
    if (!std::isfinite(truth[i])) {  // a NaN or inf in V that this query sees
      const double g = to_double(got[i]);
      expect(std::isnan(truth[i]) ? std::isnan(g) : g == truth[i],
             "element " + std::to_string(i) + " is " + std::to_string(g) + ", the reference's " +
                 std::to_string(truth[i]));
      continue;
    }
    ++n_finite;
    const double e = std::fabs(to_double(got[i]) - truth[i]);
    if (!(e <= max_err)) max_err = std::isnan(e) ? INFINITY : e;
    sq += e * e;
  }
  const double rms = std::sqrt(sq / std::max<int64_t>(n_finite, 1));
  const double max_limit = c.at("max_limit").scalar(), rms_limit = c.at("rms_limit").scalar();
  expect(max_err <= max_limit,
         "max err " + std::to_string(max_err) + " > " + std::to_string(max_limit));
  expect(rms <= rms_limit, "rms err " + std::to_string(rms) + " > " + std::to_string(rms_limit));

  // Caches: v bit-identical; k bit-identical, or within one rounding where RoPE wrote.
  expect(memcmp(vbuf.data(), c.at("v_ref").data.data(), c.at("v_ref").data.size()) == 0,
         "v_cache differs from the reference's");
  const T* k_got = kbuf.as<T>();
  const T* k_ref = c.at("k_ref").as<T>();
  const T* k_in = kc.as<T>();
  const double ulp = c.at("ulp").scalar();
  for (int64_t i = 0; i < kc.numel(); ++i) {
    const bool same = memcmp(&k_got[i], &k_ref[i], sizeof(T)) == 0;
    if (same) continue;
    const bool written = memcmp(&k_ref[i], &k_in[i], sizeof(T)) != 0;
    const double r = to_double(k_ref[i]);
    expect(rope && written && std::fabs(to_double(k_got[i]) - r) <= ulp * std::max(1.0, std::fabs(r)),
           "k_cache differs from the reference's at element " + std::to_string(i));
  }
}

void attention_case(const Case& c, int index, std::string* info) {
  for (int forced : {0, 3}) {
    const bool scalar_kv = forced == 0 && index % 3 == 0;
    switch (c.at("q").code) {
      case kF32: run_attention<float>(c, forced, scalar_kv, info); break;
      case kF16: run_attention<c10::Half>(c, forced, scalar_kv, info); break;
      case kBF16: run_attention<c10::BFloat16>(c, forced, scalar_kv, info); break;
      default: throw Failure{"q dtype"};
    }
  }
}

// ------------------------------------------------------------------ acceptance

template <typename T>
void run_greedy(const Case& c, Buffer& draft, const int32_t* lens, int64_t B, int64_t k, int64_t V,
                Buffer& n, Buffer& out) {
  using namespace layerskip::cuda::acceptance;
  Buffer logits = upload(c.at("logits"));
  const Launch l = plan(B, k, V, B * (k + 1), 2);
  Buffer ws(l.grid * sizeof(ArgmaxPartial));
  ls_emu::launch(greedy_argmax_kernel<T>, dim3(static_cast<unsigned>(l.grid)), dim3(kThreads), 0,
                 logits.as<const T>(), lens, static_cast<int>(k), V, l.groups, l.groups_per_split,
                 l.nsplit, ws.as<ArgmaxPartial>());
  ls_emu::launch(greedy_finalize_kernel, dim3(static_cast<unsigned>(ceil_div<int64_t>(B, 32))),
                 dim3(32), 0, draft.as<const int64_t>(), lens, ws.as<const ArgmaxPartial>(), B,
                 static_cast<int>(k), l.nsplit, n.as<int32_t>(), out.as<int64_t>());
  expect(logits.guards_intact() && ws.guards_intact(), "write outside a buffer");
}

void acceptance_case(const Case& c, std::string* info) {
  using namespace layerskip::cuda::acceptance;
  const Tensor& d = c.at("draft");
  const int64_t B = d.shape[0], k = d.shape[1];
  Buffer draft = upload(d);
  // Per-row draft lengths, or nullptr (k for every row) as the op passes without them.
  const bool has_lens = c.count("lens") != 0;
  Buffer lens_buf = has_lens ? upload(c.at("lens")) : Buffer(0);
  const int32_t* lens = has_lens ? lens_buf.as<const int32_t>() : nullptr;
  const std::string lens_info = has_lens ? " lens" : "";
  Buffer n(B * sizeof(int32_t)), out(B * (k + 1) * sizeof(int64_t));
  memset(n.data(), 0x7F, B * sizeof(int32_t));
  memset(out.data(), 0x7F, B * (k + 1) * sizeof(int64_t));
  if (c.at("kind").scalar() == 0) {
    const Tensor& logits = c.at("logits");
    const int64_t V = logits.shape[2];
    *info = "greedy B=" + std::to_string(B) + " k=" + std::to_string(k) + " V=" + std::to_string(V) +
            lens_info;
    switch (logits.code) {
      case kF32: run_greedy<float>(c, draft, lens, B, k, V, n, out); break;
      case kF16: run_greedy<c10::Half>(c, draft, lens, B, k, V, n, out); break;
      case kBF16: run_greedy<c10::BFloat16>(c, draft, lens, B, k, V, n, out); break;
      default: throw Failure{"logits dtype"};
    }
  } else {
    Buffer q = upload(c.at("q")), p = upload(c.at("p"));
    const int64_t V = c.at("p").shape[2];
    const uint64_t seed = static_cast<uint64_t>(*c.at("seed").as<int64_t>());
    const SamplingKey key{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                          static_cast<uint32_t>(*c.at("offset").as<int64_t>())};
    *info = "sampling B=" + std::to_string(B) + " k=" + std::to_string(k) + " V=" + std::to_string(V) +
            lens_info;
    const Launch l = plan(B, k, V, B, 2);
    Buffer ws(l.grid * sizeof(RacePartial));
    ls_emu::launch(sampling_race_kernel, dim3(static_cast<unsigned>(l.grid)), dim3(kThreads), 0,
                   draft.as<const int64_t>(), q.as<const float>(), p.as<const float>(), lens, V,
                   static_cast<int>(k), l.groups, l.groups_per_split, l.nsplit, key,
                   ws.as<RacePartial>());
    ls_emu::launch(sampling_finalize_kernel, dim3(static_cast<unsigned>(ceil_div<int64_t>(B, 32))),
                   dim3(32), 0, draft.as<const int64_t>(), ws.as<const RacePartial>(), B,
                   static_cast<int>(k), l.nsplit, n.as<int32_t>(), out.as<int64_t>());
    expect(q.guards_intact() && p.guards_intact() && ws.guards_intact(), "write outside a buffer");
  }
  expect(draft.guards_intact() && n.guards_intact() && out.guards_intact() &&
             lens_buf.guards_intact(),
         "write outside a buffer");
  const Tensor& n_ref = c.at("n");
  const Tensor& out_ref = c.at("out");
  expect(memcmp(n.data(), n_ref.data.data(), n_ref.data.size()) == 0,
         "num_accepted differs from the reference's");
  expect(memcmp(out.data(), out_ref.data.data(), out_ref.data.size()) == 0,
         "out_tokens differ from the reference's");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CASE_DIR [FILTER]\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const std::string filter = argc > 2 ? argv[2] : "";
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name.size() > 4 && name.substr(name.size() - 4) == ".bin" &&
          name.find(filter) != std::string::npos)
        names.push_back(name);
    }
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  if (names.empty()) {
    std::fprintf(stderr, "no cases in %s: run gen_cases.py first\n", dir.c_str());
    return 2;
  }
  int failed = 0, n_attn = 0, n_acc = 0;
  const auto start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < names.size(); ++i) {
    const Case c = read_case(dir + "/" + names[i]);
    std::string info;
    try {
      if (names[i].rfind("attn_", 0) == 0) {
        ++n_attn;
        attention_case(c, static_cast<int>(i), &info);
      } else {
        ++n_acc;
        acceptance_case(c, &info);
      }
    } catch (const Failure& f) {
      ++failed;
      std::fprintf(stderr, "FAIL %s (%s): %s\n", names[i].c_str(), info.c_str(), f.what.c_str());
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("emulated %d attention cases (x2 split plans) and %d acceptance cases in %.1f s: "
              "%d failed\n",
              n_attn, n_acc, secs, failed);
  return std::min(failed, 100);
}
