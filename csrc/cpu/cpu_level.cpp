// Which CPU level runs: detection (CPUID, and XGETBV for the register state
// the OS saves), LAYERSKIP_CPU_CAPABILITY, set_cpu_level(). Compiled at the
// baseline like every file outside the level sources.
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define LAYERSKIP_X86 1
#include <cpuid.h>
#endif

#include "cpu/dispatch.h"

namespace layerskip::cpu {

// The tables of the compiled levels (csrc/cpu/level_*.cpp).
extern const KernelTable kBaselineKernels;
#ifdef LAYERSKIP_X86
extern const KernelTable kAvx2Kernels;
extern const KernelTable kAvx512Kernels;
extern const KernelTable kAvx512Bf16Kernels;
#endif

namespace {

const KernelTable* table_of(int level) {
  switch (level) {
    case 0: return &kBaselineKernels;
#ifdef LAYERSKIP_X86
    case 1: return &kAvx2Kernels;
    case 2: return &kAvx512Kernels;
    case 3: return &kAvx512Bf16Kernels;
#endif
    default: return nullptr;
  }
}

struct Features {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512bf16 = false;
};

Features detect() {
  Features f;
#ifdef LAYERSKIP_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28);
  if (!(osxsave && avx)) return f;
  // XGETBV(0): which register state the OS saves on a context switch. YMM needs
  // SSE and AVX state (bits 1, 2); ZMM also opmask, ZMM0-15 upper halves and
  // ZMM16-31 (bits 5, 6, 7). Inline asm: the intrinsic would need -mxsave.
  unsigned xlo, xhi;
  __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  const bool ymm_state = (xlo & 0x6u) == 0x6u;
  const bool zmm_state = ymm_state && (xlo & 0xE0u) == 0xE0u;
  if (!ymm_state) return f;
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = b & (1u << 5);
  if (zmm_state) {
    f.avx512f = b & (1u << 16);
    f.avx512dq = b & (1u << 17);
    f.avx512bw = b & (1u << 30);
    f.avx512vl = b & (1u << 31);
    const unsigned max_sub = a;
    if (max_sub >= 1) {
      __cpuid_count(7, 1, a, b, c, d);
      f.avx512bf16 = a & (1u << 5);
    }
  }
#endif
  return f;
}

const Features& features() {
  static const Features f = detect();
  return f;
}

// Whether the CPU and OS support a level (compiled or not).
bool cpu_supports(int level) {
  const Features& f = features();
  const bool avx2 = f.avx2 && f.fma && f.f16c;
  const bool avx512 = avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
  switch (level) {
    case 0: return true;
    case 1: return avx2;
    case 2: return avx512;
    case 3: return avx512 && f.avx512bf16;
    default: return false;
  }
}

bool usable(int level) { return table_of(level) != nullptr && cpu_supports(level); }

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

int level_index(const std::string& name) {
  for (int i = 0; i < kNumCpuLevels; ++i)
    if (name == kCpuLevelNames[i]) return i;
  return -1;
}

// Empty when `name` can run here, else why not.
std::string why_not(const std::string& name, const std::string& source) {
  const int i = level_index(name);
  if (i < 0)
    return source + ": '" + name + "' is not a CPU level; the levels are baseline, avx2, avx512, " +
           "avx512_bf16 (this build and CPU support: " + join(supported_cpu_levels()) + ")";
  if (table_of(i) == nullptr)
    return source + ": this build has no " + name + " kernels (compiled: " +
           join(compiled_cpu_levels()) + ")";
  if (!cpu_supports(i))
    return source + ": this CPU (or its OS) does not support " + name +
           " (supported: " + join(supported_cpu_levels()) + ")";
  return "";
}

// The running level, or -1 with `g_error` saying why none (a bad environment).
std::atomic<int> g_level{-2};  // -2: not resolved yet
std::string g_error;
std::mutex g_mutex;

int resolve() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_level.load() != -2) return g_level.load();
  const char* env = std::getenv("LAYERSKIP_CPU_CAPABILITY");
  int level = 0;
  if (env != nullptr && *env != '\0') {
    g_error = why_not(env, std::string("LAYERSKIP_CPU_CAPABILITY=") + env);
    level = g_error.empty() ? level_index(env) : -1;
  } else {
    for (int i = kNumCpuLevels - 1; i > 0 && level == 0; --i)
      if (usable(i)) level = i;
  }
  g_level.store(level);
  return level;
}

}  // namespace

const KernelTable& kernels() {
  int level = g_level.load(std::memory_order_relaxed);
  if (level < 0) level = level == -2 ? resolve() : -1;
  TORCH_CHECK(level >= 0, g_error);
  return *table_of(level);
}

CpuLevel cpu_level() { return kernels().level; }

void set_cpu_level(const std::string& name) {
  const std::string err = why_not(name, "set_cpu_level('" + name + "')");
  TORCH_CHECK(err.empty(), err);
  std::lock_guard<std::mutex> lock(g_mutex);
  g_level.store(level_index(name));
}

std::vector<std::string> compiled_cpu_levels() {
  std::vector<std::string> out;
  for (int i = 0; i < kNumCpuLevels; ++i)
    if (table_of(i) != nullptr) out.emplace_back(kCpuLevelNames[i]);
  return out;
}

std::vector<std::string> supported_cpu_levels() {
  std::vector<std::string> out;
  for (int i = 0; i < kNumCpuLevels; ++i)
    if (usable(i)) out.emplace_back(kCpuLevelNames[i]);
  return out;
}

std::vector<std::string> cpu_features() {
  std::vector<std::string> out;
#ifdef LAYERSKIP_X86
  const Features& f = features();
  const std::pair<bool, const char*> all[] = {
      {f.avx2, "avx2"},         {f.fma, "fma"},           {f.f16c, "f16c"},
      {f.avx512f, "avx512f"},   {f.avx512bw, "avx512bw"}, {f.avx512vl, "avx512vl"},
      {f.avx512dq, "avx512dq"}, {f.avx512bf16, "avx512bf16"}};
  for (const auto& [has, name] : all)
    if (has) out.emplace_back(name);
#elif defined(__ARM_NEON)
  out.emplace_back("neon");
#endif
  return out;
}

}  // namespace layerskip::cpu
