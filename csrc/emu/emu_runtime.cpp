// The scheduler of the host emulation (see cuda_emu.h): fibers for the threads of a
// block, the exchanges that keep the lanes of a warp in lockstep, the launch checks,
// and the error state behind cudaGetLastError / cudaGetErrorString.
//
// Fibers are ucontext contexts on mmap'ed stacks with a guard page below each. Under
// AddressSanitizer every switch is announced to it (__sanitizer_start_switch_fiber /
// __sanitizer_finish_switch_fiber), so it tracks which stack is live; a stack whose
// fiber was abandoned by a failed launch is unpoisoned before it is used again.
#include "emu/cuda_emu.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <atomic>
#include <cstdio>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define DF_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DF_EMU_ASAN 1
#endif
#endif
#ifdef DF_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace dreamer_fast {
namespace emu {
namespace {

// Kernel frames are small; ASan's redzones make them several times larger.
#ifdef DF_EMU_ASAN
constexpr size_t kStackBytes = size_t(1) << 20;
#else
constexpr size_t kStackBytes = size_t(256) << 10;
#endif
constexpr size_t kGuardBytes = 1 << 16;  // PROT_NONE below the stack: an overflow faults
constexpr unsigned kFullMask = 0xffffffffu;

enum class State { kReady, kWaiting, kDone };

struct Fiber {
  ucontext_t ctx;
  char* mem = nullptr;  // guard + stack
  void* fake_stack = nullptr;
  State state = State::kDone;
  uint3 tid{};
  int lane = 0;
  // the exchange it waits at
  Op op = Op::kSyncwarp;
  unsigned mask = 0;
  int arg = 0, width = 32;
  uint64_t value = 0, result = 0;
  const char* file = "";
  int line = 0;
};

struct Runner {
  ucontext_t sched;
  std::vector<Fiber*> fibers;  // stable addresses: a ucontext must not move
  Fiber* current = nullptr;
  bool running = false;
  void (*body)(const void*) = nullptr;
  const void* payload = nullptr;
  bool failed = false;
  std::string error;
  bool dirty_stacks = false;
  uint64_t rounds = 0;
  void* sched_fake = nullptr;
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  ~Runner() {
    for (Fiber* f : fibers) {
      munmap(f->mem, kGuardBytes + kStackBytes);
      delete f;
    }
  }
};

thread_local Runner tl_runner;
thread_local cudaError_t tl_error = cudaSuccess;
thread_local std::string tl_message;

std::atomic<int> g_mode{0};
std::atomic<uint64_t> g_seed{0};
std::atomic<uint64_t> c_launches{0}, c_blocks{0}, c_threads{0}, c_exchanges{0},
    c_exchange_lanes{0}, c_max_lanes{0};

const char* op_name(Op op) {
  switch (op) {
    case Op::kSyncwarp: return "__syncwarp";
    case Op::kShfl: return "__shfl_sync";
    case Op::kShflXor: return "__shfl_xor_sync";
    case Op::kShflUp: return "__shfl_up_sync";
    case Op::kShflDown: return "__shfl_down_sync";
    case Op::kSyncthreads: return "__syncthreads";
  }
  return "?";
}

std::string where(const Fiber& f) {
  const char* file = std::strstr(f.file, "csrc/");  // the path within the project
  char buf[512];
  std::snprintf(buf, sizeof buf, "%s (mask 0x%08x, width %d) at %s:%d", op_name(f.op), f.mask,
                f.width, file ? file : f.file, f.line);
  return buf;
}

void fail(Runner& r, const std::string& msg) {
  if (!r.failed) {
    r.failed = true;
    char head[128];
    std::snprintf(head, sizeof head, "emulated kernel failed in block (%u, %u, %u): ", blockIdx.x,
                  blockIdx.y, blockIdx.z);
    r.error = head + msg;
  }
}

void fiber_main() {
  Runner& r = tl_runner;
#ifdef DF_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &r.sched_bottom, &r.sched_size);
#endif
  r.body(r.payload);
  r.current->state = State::kDone;
#ifdef DF_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, r.sched_bottom, r.sched_size);  // this fiber ends
#endif
  setcontext(&r.sched);
}

void resume(Runner& r, Fiber* f) {
  r.current = f;
  threadIdx = f->tid;
#ifdef DF_EMU_ASAN
  __sanitizer_start_switch_fiber(&r.sched_fake, f->mem + kGuardBytes, kStackBytes);
#endif
  swapcontext(&r.sched, &f->ctx);
#ifdef DF_EMU_ASAN
  __sanitizer_finish_switch_fiber(r.sched_fake, nullptr, nullptr);
#endif
  r.current = nullptr;
}

Fiber* new_fiber() {
  auto* f = new Fiber;
  void* mem = mmap(nullptr, kGuardBytes + kStackBytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) {
    delete f;
    return nullptr;
  }
  mprotect(mem, kGuardBytes, PROT_NONE);
  f->mem = static_cast<char*>(mem);
  return f;
}

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The lane a shuffle of lane `l` reads (CUDA's rules for a segment of `width` lanes).
int source_lane(const Fiber& f, int l) {
  const int w = f.width, seg = l & ~(w - 1);
  int src = l;
  switch (f.op) {
    case Op::kShfl: src = seg + (f.arg & (w - 1)); break;
    case Op::kShflXor: src = l ^ (f.arg & 31); break;
    case Op::kShflUp: src = l - f.arg; break;
    case Op::kShflDown: src = l + f.arg; break;
    default: break;
  }
  if (f.op != Op::kShfl && (src < seg || src >= seg + w)) {
    // xor into a later segment and up/down past the segment read the own value; xor
    // into an earlier segment reads it
    if (!(f.op == Op::kShflXor && src >= 0 && src < seg)) src = l;
  }
  return src;
}

bool same_exchange(const Fiber& a, const Fiber& b) {
  if (a.op != b.op || a.mask != b.mask || a.width != b.width) return false;
  if (a.op == Op::kSyncwarp) return true;  // __syncwarp may meet at different call sites
  return a.line == b.line && std::strcmp(a.file, b.file) == 0;
}

// Completes every warp exchange whose lanes have all arrived, then __syncthreads when
// every live thread waits at it. Returns whether anything was released.
bool resolve(Runner& r, unsigned n) {
  bool released = false;
  for (unsigned base = 0; base < n; base += 32) {
    const unsigned count = std::min(32u, n - base);
    for (unsigned l = 0; l < count; ++l) {
      Fiber& f = *r.fibers[base + l];
      if (f.state != State::kWaiting || f.op == Op::kSyncthreads) continue;
      const unsigned M = f.mask;
      bool complete = true;
      for (unsigned k = 0; k < 32 && complete; ++k) {
        if (!((M >> k) & 1u)) continue;
        if (k >= count) {
          fail(r, "lane " + std::to_string(l) + " of warp " + std::to_string(base / 32) +
                      " waits at " + where(f) + ", whose mask names lane " +
                      std::to_string(k) + ", but the warp has only " + std::to_string(count) +
                      " threads");
          return false;
        }
        const Fiber& g = *r.fibers[base + k];
        if (g.state == State::kDone) {
          fail(r, "lane " + std::to_string(k) + " of warp " + std::to_string(base / 32) +
                      " exited while lane " + std::to_string(l) + " waits for it at " +
                      where(f));
          return false;
        }
        if (g.state != State::kWaiting || !same_exchange(f, g)) complete = false;
      }
      if (!complete) continue;
      uint64_t lanes = 0;
      for (unsigned k = 0; k < 32; ++k) {
        if (!((M >> k) & 1u)) continue;
        Fiber& g = *r.fibers[base + k];
        if (g.op != Op::kSyncwarp) {
          const int src = source_lane(g, static_cast<int>(k));
          if (!((M >> src) & 1u)) {
            fail(r, "lane " + std::to_string(k) + " reads lane " + std::to_string(src) +
                        ", which is not in the mask, at " + where(g));
            return false;
          }
          g.result = r.fibers[base + src]->value;
        }
        ++lanes;
      }
      for (unsigned k = 0; k < 32; ++k)
        if ((M >> k) & 1u) r.fibers[base + k]->state = State::kReady;
      c_exchanges.fetch_add(1, std::memory_order_relaxed);
      c_exchange_lanes.fetch_add(lanes, std::memory_order_relaxed);
      uint64_t prev = c_max_lanes.load(std::memory_order_relaxed);
      while (prev < lanes && !c_max_lanes.compare_exchange_weak(prev, lanes)) {
      }
      released = true;
    }
  }
  if (released) return true;
  bool any_live = false, all_at_block = true;
  for (unsigned i = 0; i < n; ++i) {
    const Fiber& f = *r.fibers[i];
    if (f.state == State::kDone) continue;
    any_live = true;
    if (!(f.state == State::kWaiting && f.op == Op::kSyncthreads)) all_at_block = false;
  }
  if (any_live && all_at_block) {
    for (unsigned i = 0; i < n; ++i)
      if (r.fibers[i]->state == State::kWaiting) r.fibers[i]->state = State::kReady;
    c_exchanges.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  if (any_live) {
    std::string msg = "the threads of the block wait at exchanges that cannot complete "
                      "(divergent lanes):";
    int shown = 0;
    for (unsigned i = 0; i < n && shown < 6; ++i) {
      const Fiber& f = *r.fibers[i];
      if (f.state != State::kWaiting) continue;
      msg += " thread " + std::to_string(i) + " at " + where(f) + ";";
      ++shown;
    }
    fail(r, msg);
  }
  return false;
}

bool run_block(Runner& r, unsigned n) {
  while (r.fibers.size() < n) {
    Fiber* f = new_fiber();
    if (!f) {
      fail(r, "could not allocate a fiber stack");
      return false;
    }
    r.fibers.push_back(f);
  }
#ifdef DF_EMU_ASAN
  if (r.dirty_stacks) {
    for (Fiber* f : r.fibers) ASAN_UNPOISON_MEMORY_REGION(f->mem + kGuardBytes, kStackBytes);
    r.dirty_stacks = false;
  }
#endif
  const unsigned bx = blockDim.x, by = blockDim.y;
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = *r.fibers[i];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.mem + kGuardBytes;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
    f.state = State::kReady;
    f.fake_stack = nullptr;
    f.tid = uint3{i % bx, (i / bx) % by, i / (bx * by)};
    f.lane = static_cast<int>(i % 32);
  }
  const int mode = g_mode.load(std::memory_order_relaxed);
  std::vector<unsigned> order(n);
  uint64_t rng = g_seed.load(std::memory_order_relaxed) ^ (c_blocks.load() * 0x2545f4914f6cdd1dull);
  for (;;) {
    for (unsigned i = 0; i < n; ++i) order[i] = mode == 1 ? n - 1 - i : i;
    if (mode == 2)
      for (unsigned i = n; i > 1; --i) std::swap(order[i - 1], order[splitmix(rng) % i]);
    ++r.rounds;
    for (unsigned i : order) {
      Fiber* f = r.fibers[i];
      if (f->state != State::kReady) continue;
      resume(r, f);
      if (r.failed) return false;
    }
    if (!resolve(r, n)) return !r.failed;
  }
}

}  // namespace

uint64_t exchange(Op op, unsigned mask, uint64_t bits, int arg, int width, const char* file,
                  int line) {
  Runner& r = tl_runner;
  Fiber* f = r.current;
  if (f == nullptr) {
    std::fprintf(stderr, "dreamer_fast cuda emulation: %s called outside a kernel\n",
                 op_name(op));
    std::abort();
  }
  f->op = op;
  f->mask = mask;
  f->arg = arg;
  f->width = width;
  f->value = bits;
  f->file = file;
  f->line = line;
  f->state = State::kWaiting;
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    fail(r, "width " + std::to_string(width) + " is not a power of two in [1, 32] at " +
                where(*f));
  } else if (op != Op::kSyncthreads && !((mask >> f->lane) & 1u)) {
    fail(r, "lane " + std::to_string(f->lane) + " is not in the mask of " + where(*f));
  }
#ifdef DF_EMU_ASAN
  __sanitizer_start_switch_fiber(&f->fake_stack, r.sched_bottom, r.sched_size);
#endif
  swapcontext(&f->ctx, &r.sched);
#ifdef DF_EMU_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, &r.sched_bottom, &r.sched_size);
#endif
  return f->result;
}

void run_grid(dim3 grid, dim3 block, void (*body)(const void*), const void* payload) {
  Runner& r = tl_runner;
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (r.running) {
    std::fprintf(stderr, "dreamer_fast cuda emulation: a kernel launched a kernel\n");
    std::abort();
  }
  if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 ||
      block.z > 64 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    tl_error = cudaErrorInvalidConfiguration;
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "invalid configuration argument (emulated launch: grid (%u, %u, %u), block "
                  "(%u, %u, %u))",
                  grid.x, grid.y, grid.z, block.x, block.y, block.z);
    tl_message = buf;
    return;
  }
  r.running = true;
  r.body = body;
  r.payload = payload;
  r.failed = false;
  r.error.clear();
  gridDim = grid;
  blockDim = block;
  c_launches.fetch_add(1, std::memory_order_relaxed);
  bool ok = true;
  for (unsigned z = 0; z < grid.z && ok; ++z)
    for (unsigned y = 0; y < grid.y && ok; ++y)
      for (unsigned x = 0; x < grid.x && ok; ++x) {
        blockIdx = uint3{x, y, z};
        c_blocks.fetch_add(1, std::memory_order_relaxed);
        c_threads.fetch_add(threads, std::memory_order_relaxed);
        ok = run_block(r, static_cast<unsigned>(threads));
      }
  r.running = false;
  if (!ok) {
    r.dirty_stacks = true;  // abandoned fibers left their frames on the stacks
    tl_error = cudaErrorLaunchFailure;
    tl_message = r.error;
  }
}

void set_schedule(int mode, uint64_t seed) {
  g_mode.store(mode, std::memory_order_relaxed);
  g_seed.store(seed, std::memory_order_relaxed);
}

int schedule_mode() { return g_mode.load(std::memory_order_relaxed); }

Counters counters() {
  return {c_launches.load(), c_blocks.load(), c_threads.load(), c_exchanges.load(),
          c_exchange_lanes.load(), c_max_lanes.load()};
}

void reset_counters() {
  c_launches = 0;
  c_blocks = 0;
  c_threads = 0;
  c_exchanges = 0;
  c_exchange_lanes = 0;
  c_max_lanes = 0;
}

}  // namespace emu
}  // namespace dreamer_fast

// The runtime calls of the launchers. Only this module defines them (it links no CUDA
// runtime); the module's symbols are hidden, so a process that also loads the real
// runtime keeps its own.
extern "C" cudaError_t cudaGetLastError(void) {
  const cudaError_t e = dreamer_fast::emu::tl_error;
  dreamer_fast::emu::tl_error = cudaSuccess;
  return e;
}

extern "C" cudaError_t cudaPeekAtLastError(void) { return dreamer_fast::emu::tl_error; }

extern "C" const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration:
    case cudaErrorLaunchFailure:
      return dreamer_fast::emu::tl_message.empty() ? "unspecified launch failure"
                                                   : dreamer_fast::emu::tl_message.c_str();
    default: return "emulated CUDA error";
  }
}
