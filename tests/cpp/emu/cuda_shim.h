// Host emulation of the CUDA subset that csrc/cuda/*_kernels.cuh use, so that
// the real kernel code runs on the CPU under ctest (no GPU in CI).
//
// Every CUDA thread of a block is a fiber (ucontext) on one OS thread, run
// until it blocks; the blocks of a grid run one after the other. Barriers:
//   __syncthreads        all live threads of the block (exited threads count
//                        as arrived, as on sm_70+);
//   warp collectives     (__shfl_xor_sync, __any_sync, __ballot_sync) all live
//                        lanes of the warp: a lane writes its value to a slot,
//                        waits for its warp, reads. Two slot buffers used in
//                        turn make one barrier per collective enough: a buffer
//                        is rewritten only after a later barrier, which no lane
//                        passes before it has read.
//   __syncthreads_or     the block barrier, each thread's predicate in its own
//                        slot (two in turn, as above), ORed after the barrier.
// Tensor-core instructions (csrc/cuda/mma.cuh) are warp collectives too:
//   mma.m16n8k16         every lane publishes its A, B, C fragment registers;
//                        each lane then computes its own four D elements from
//                        the PTX fragment layouts (products exact in fp32, the
//                        16 of a dot summed in k order onto C);
//   ldmatrix.x4[.trans]  every lane publishes its row address; each lane reads
//                        the elements the PTX layout gives its registers;
//   cp.async             a per-thread list of 16-byte copies (or zero fills),
//                        done at the cp.async.wait_group that covers their
//                        group, so shared memory read before the wait (and a
//                        barrier) is stale or NaN; a thread that exits with
//                        copies in flight aborts.
// __shared__ becomes `static thread_local` (one copy per OS thread, shared by
// the fibers of the running block); dynamic shared memory is a per-block
// buffer filled with NaN bytes at each block start, so a read before a write
// shows up in the results. A deadlock (a barrier that some live thread never
// reaches) aborts with a message instead of hanging.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

// ------------------------------------------------------------------ keywords
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static thread_local
#define LS_CUDA_EMULATION 1  // csrc/cuda/mma.cuh: use the lane-by-lane emulation below
#define LS_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::ls_emu::dynamic_smem())

// ------------------------------------------------------------------ vector types
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// Device overloads of min/max that CUDA provides in the global namespace.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline int64_t min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max(int64_t a, int64_t b) { return a > b ? a : b; }

namespace ls_emu {

struct AsyncCopy {
  void* dst;
  const void* src;  // null: 16 zero bytes
  unsigned group;
};

struct Fiber {
  ucontext_t ctx;
  dim3 tid;
  int warp = 0, lane = 0;
  bool done = false;
  const unsigned* wait_gen = nullptr;  // blocked until *wait_gen != wait_value
  unsigned wait_value = 0;
  unsigned collectives = 0;  // warp collectives done: picks the slot buffer
  unsigned block_collectives = 0;  // __syncthreads_or calls done: picks or_slot
  int or_slot[2] = {0, 0};
  std::vector<AsyncCopy> copies;  // cp.async in flight
  unsigned copy_groups = 0;       // cp.async.commit_group calls done
};

// Threads that must all arrive; exited threads leave `live`.
struct Barrier {
  int live = 0, arrived = 0;
  unsigned gen = 0;
  bool complete() {  // releases the waiters when the last live thread is in
    if (arrived == 0 || arrived < live) return false;
    arrived = 0;
    ++gen;
    return true;
  }
};

// A lane's payload in one warp collective: a shuffled word, or the A, B and C
// registers of an mma (10 words of 32 bits).
constexpr int kSlotWords = 5;

struct Warp {
  Barrier bar;
  uint64_t slot[2][32][kSlotWords];
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  ucontext_t sched;
  Barrier bar;
  std::function<void()> body;
  std::vector<uint64_t> smem;  // 8-byte words: 16-byte alignment via the allocator below
};

struct State {
  Block block;
  Fiber* cur = nullptr;
  dim3 block_idx, block_dim, grid_dim;
  std::vector<std::vector<char>> stacks;
  unsigned char* smem = nullptr;
};

inline State& state() {
  static thread_local State s;
  return s;
}

inline unsigned char* dynamic_smem() { return state().smem; }

inline void yield_blocked(const unsigned* gen, unsigned value) {
  State& s = state();
  Fiber* f = s.cur;
  f->wait_gen = gen;
  f->wait_value = value;
  swapcontext(&f->ctx, &s.block.sched);
}

inline void arrive(Barrier& bar) {
  const unsigned gen = bar.gen;
  ++bar.arrived;
  if (!bar.complete()) yield_blocked(&bar.gen, gen);
}

inline void syncthreads() { arrive(state().block.bar); }

// Publishes this lane's payload (at most kSlotWords 64-bit words), waits for
// the warp, returns the 32 lanes' payloads.
inline const uint64_t (*warp_exchange_words(const void* payload, size_t bytes))[kSlotWords] {
  State& s = state();
  Fiber* f = s.cur;
  Warp& w = s.block.warps[f->warp];
  const int buf = f->collectives++ & 1;
  if (bytes > sizeof(w.slot[buf][f->lane])) std::abort();
  memcpy(w.slot[buf][f->lane], payload, bytes);
  arrive(w.bar);
  return w.slot[buf];
}

// Word 0 of each lane's slot: lane l's 64-bit word at [l * kSlotWords].
inline const uint64_t* warp_exchange(uint64_t word) {
  return &warp_exchange_words(&word, sizeof(word))[0][0];
}

template <typename T>
inline T shfl_xor(T v, int lane_mask) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 64 bits");
  uint64_t word = 0;
  memcpy(&word, &v, sizeof(T));
  const uint64_t* slots = warp_exchange(word);
  const int src = state().cur->lane ^ lane_mask;
  T out;
  memcpy(&out, &slots[src * kSlotWords], sizeof(T));
  return out;
}

inline unsigned ballot(bool pred) {
  const uint64_t* slots = warp_exchange(pred ? 1u : 0u);
  unsigned mask = 0;
  for (int l = 0; l < 32; ++l)
    if (slots[l * kSlotWords] == 1u) mask |= 1u << l;
  return mask;
}

inline int syncthreads_or(int pred) {
  State& s = state();
  Fiber* f = s.cur;
  const unsigned n = f->block_collectives++;
  f->or_slot[n & 1] = pred != 0;
  syncthreads();
  // The threads that took part in call n (one may have exited since; one that
  // exited before it did not take part and its slot is stale).
  int any = 0;
  for (const Fiber& o : s.block.fibers) any |= o.block_collectives > n && o.or_slot[n & 1];
  return any;
}

// ---------------------------------------------------------------- tensor cores

inline float bf16_bits_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  float v;
  memcpy(&v, &w, sizeof(v));
  return v;
}

inline float fp16_bits_to_float(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const float v = e == 0    ? std::ldexp(static_cast<float>(m), -24)
                  : e == 31 ? (m ? NAN : INFINITY)
                            : std::ldexp(static_cast<float>(m | 0x400), e - 25);
  return (h & 0x8000) ? -v : v;
}

// Element `half` (0: low 16 bits) of a fragment register, as float.
template <bool kBf16>
inline float frag_elem(uint32_t reg, int half) {
  const uint16_t bits = static_cast<uint16_t>(reg >> (16 * half));
  return kBf16 ? bf16_bits_to_float(bits) : fp16_bits_to_float(bits);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32, d = a @ b + d.
template <bool kBf16>
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  struct Regs {
    uint32_t a[4], b[2];
  } mine{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}};
  const auto* slots = warp_exchange_words(&mine, sizeof(mine));
  auto regs = [&](int lane) {
    Regs r;
    memcpy(&r, slots[lane], sizeof(r));
    return r;
  };
  // A[r][k]: lane (r % 8) * 4 + (k % 8) / 2, register r / 8 + 2 * (k / 8), half k % 2.
  // B[k][n]: lane n * 4 + (k % 8) / 2, register k / 8, half k % 2.
  const int lane = state().cur->lane, g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int r = g + 8 * (i / 2), n = 2 * t + i % 2;
    float acc = d[i];
    for (int k = 0; k < 16; ++k) {
      const float x = frag_elem<kBf16>(regs((r % 8) * 4 + (k % 8) / 2).a[r / 8 + 2 * (k / 8)], k % 2);
      const float y = frag_elem<kBf16>(regs(n * 4 + (k % 8) / 2).b[k / 8], k % 2);
      acc += x * y;  // exact product of two 16-bit values
    }
    d[i] = acc;
  }
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
  const uint64_t mine = reinterpret_cast<uintptr_t>(row);
  const auto* slots = warp_exchange_words(&mine, sizeof(mine));
  const int lane = state().cur->lane;
  auto elem = [&](int matrix, int i, int j) {  // element [i][j] of the 8 x 8 matrix
    const auto* p = reinterpret_cast<const unsigned char*>(static_cast<uintptr_t>(slots[matrix * 8 + i][0]));
    uint16_t v;
    memcpy(&v, p + 2 * j, sizeof(v));
    return static_cast<uint32_t>(v);
  };
  for (int m = 0; m < 4; ++m) {
    const int i = lane / 4, j = 2 * (lane % 4);
    r[m] = trans ? elem(m, j, i) | elem(m, j + 1, i) << 16 : elem(m, i, j) | elem(m, i, j + 1) << 16;
  }
}

// ---------------------------------------------------------------- cp.async

inline void cp_async_16(void* dst, const void* src, bool fill) {
  Fiber* f = state().cur;
  f->copies.push_back({dst, fill ? src : nullptr, f->copy_groups});
}

inline void cp_async_commit() { ++state().cur->copy_groups; }

// Completes the copies of every group but the newest n committed ones.
inline void cp_async_wait(int n) {
  Fiber* f = state().cur;
  std::vector<AsyncCopy> left;
  for (const AsyncCopy& c : f->copies) {
    if (c.group + n < f->copy_groups) {
      if (c.src)
        memcpy(c.dst, c.src, 16);
      else
        memset(c.dst, 0, 16);
    } else {
      left.push_back(c);
    }
  }
  f->copies.swap(left);
}

inline void fiber_exit() {
  State& s = state();
  Block& b = s.block;
  Fiber* f = s.cur;
  if (!f->copies.empty()) {
    std::fprintf(stderr, "emulation: thread %d of block %u exits with cp.async copies in flight\n",
                 f->warp * 32 + f->lane, s.block_idx.x);
    std::abort();
  }
  f->done = true;
  for (Barrier* bar : {&b.bar, &b.warps[f->warp].bar}) {
    --bar->live;
    bar->complete();
  }
}

inline void trampoline() {
  state().block.body();
  fiber_exit();
  // returning switches to uc_link (the scheduler)
}

constexpr size_t kStackBytes = 256 * 1024;

// Runs `body` as one block of block_dim threads.
inline void run_block(dim3 block_idx, const std::function<void()>& body, size_t smem_bytes) {
  State& s = state();
  Block& b = s.block;
  const int n = static_cast<int>(s.block_dim.x * s.block_dim.y * s.block_dim.z);
  s.block_idx = block_idx;
  b.body = body;
  b.fibers.assign(n, Fiber{});
  b.warps.assign((n + 31) / 32, Warp{});
  b.bar = Barrier{n, 0, 0};
  b.smem.assign((smem_bytes + 7) / 8 + 2, ~uint64_t{0});  // all-ones bytes: NaN floats
  s.smem = reinterpret_cast<unsigned char*>(b.smem.data());
  s.smem += (16 - reinterpret_cast<uintptr_t>(s.smem) % 16) % 16;
  while (s.stacks.size() < static_cast<size_t>(n)) s.stacks.emplace_back(kStackBytes);
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.tid = dim3(i % s.block_dim.x, (i / s.block_dim.x) % s.block_dim.y,
                 i / (s.block_dim.x * s.block_dim.y));
    f.warp = i / 32;
    f.lane = i % 32;
    ++b.warps[f.warp].bar.live;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = s.stacks[i].data();
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &b.sched;
    makecontext(&f.ctx, trampoline, 0);
  }
  // Each pass resumes the runnable fibers in a fresh pseudo-random order, so
  // that a missing barrier shows: some thread then reads shared memory that
  // another has not written yet (or has already overwritten).
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  uint64_t rng = 0x9E3779B97F4A7C15ull ^ (block_idx.x * 0xBF58476D1CE4E5B9ull);
  while (b.bar.live > 0) {
    bool ran = false;
    for (int i = n - 1; i > 0; --i) {
      rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
      std::swap(order[i], order[rng % (i + 1)]);
    }
    for (int idx : order) {
      Fiber& f = b.fibers[idx];
      if (f.done || (f.wait_gen != nullptr && *f.wait_gen == f.wait_value)) continue;
      f.wait_gen = nullptr;
      s.cur = &f;
      swapcontext(&b.sched, &f.ctx);
      ran = true;
    }
    if (!ran) {
      std::fprintf(stderr, "emulation deadlock: block (%u, %u, %u), %d live threads blocked\n",
                   block_idx.x, block_idx.y, block_idx.z, b.bar.live);
      std::abort();
    }
  }
  s.cur = nullptr;
}

// kernel<<<grid, block, smem>>>(args...) on the CPU.
template <typename... P, typename... A>
inline void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem_bytes, A&&... args) {
  State& s = state();
  s.grid_dim = grid;
  s.block_dim = block;
  const std::function<void()> body = [&] { kernel(args...); };
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) run_block(dim3(x, y, z), body, smem_bytes);
}

}  // namespace ls_emu

#define threadIdx (::ls_emu::state().cur->tid)
#define blockIdx (::ls_emu::state().block_idx)
#define blockDim (::ls_emu::state().block_dim)
#define gridDim (::ls_emu::state().grid_dim)

inline void __syncthreads() { ls_emu::syncthreads(); }
inline int __syncthreads_or(int pred) { return ls_emu::syncthreads_or(pred); }
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  return ls_emu::shfl_xor(v, lane_mask);
}
inline int __any_sync(unsigned, int pred) { return ls_emu::ballot(pred != 0) != 0u; }
inline unsigned __ballot_sync(unsigned, int pred) { return ls_emu::ballot(pred != 0); }
inline int __ffs(int x) { return __builtin_ffs(x); }
// Read-only global load: a byte copy (the device instruction has no type).
template <typename T>
inline T __ldg(const T* p) {
  T v;
  memcpy(&v, p, sizeof(T));
  return v;
}
