// Host emulation of the CUDA subset our kernel files (csrc/<family>/*_cuda_kernels.cu)
// use, so that those files themselves compile with the C++ compiler and their kernels
// run on the CPU (the test-only module dreamer_fast._cuda_emu, csrc/emu/).
//
// Included (instead of <cuda_runtime.h>) by common/cuda_common.cuh when
// DREAMER_FAST_CUDA_EMU is defined. What it supplies:
//  * the qualifiers: the toolkit's host_defines.h (pulled in by cuda_fp16.h) already
//    turns __global__ / __device__ / __host__ into nothing and __forceinline__ into
//    always_inline for a host compiler; __launch_bounds__ is added here, and
//    __shared__ becomes a block-wide static (blocks run one after another on one OS
//    thread, so a static is exactly "one copy per block");
//  * threadIdx, blockIdx, blockDim, gridDim (set by the scheduler before it resumes a
//    thread);
//  * __syncwarp, __shfl_sync / __shfl_xor_sync / __shfl_up_sync / __shfl_down_sync and
//    __syncthreads with CUDA's semantics for the lanes named in `mask`;
//  * the runtime calls the launchers make (cudaGetLastError, cudaPeekAtLastError,
//    cudaGetErrorString; emu_runtime.cpp) and the types (cudaError_t, cudaStream_t,
//    dim3, uint3) and half / bfloat16 (__half, __nv_bfloat16 and their host-callable
//    conversions) from the toolkit's own headers;
//  * run_grid, what cuda::launch_kernel (cuda_common.cuh) calls in place of <<<>>>.
//
// Execution model: the blocks of a grid run one after another. Inside a block every
// CUDA thread is a fiber (its own stack) on the calling OS thread; a fiber runs until
// it reaches an exchange (a shuffle, __syncwarp, __syncthreads) or returns. When no
// fiber can run, the scheduler completes every exchange whose participants have all
// arrived (each lane named in the mask waiting at the same exchange: same operation,
// mask and width, and for shuffles the same call site), and resumes them. So the lanes
// of a warp run in lockstep at every exchange, shuffles read the values the other lanes
// had at that point, and a lane that exits, diverges or names an absent lane is
// reported as a launch failure (cudaGetLastError) naming the file and line, where a GPU
// would give undefined results.
//
// Between exchanges the fibers of a block run in a configurable order (set_schedule:
// ascending, descending, or a seeded shuffle per round). A kernel that lets one lane
// read what another lane writes without an exchange in between is a race on a GPU; here
// it gives results that depend on that order, which the tests compare.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#undef __shared__
#define __shared__ static thread_local

// The built-in coordinates of the running thread (one set per OS thread: the scheduler
// rewrites them before resuming each fiber).
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace dreamer_fast {
namespace emu {

enum class Op : int { kSyncwarp, kShfl, kShflXor, kShflUp, kShflDown, kSyncthreads };

// Waits at an exchange of the calling fiber: `bits` is its value (shuffles), `arg` the
// lane / lane mask / delta, `width` the segment width. Returns the value it reads.
uint64_t exchange(Op op, unsigned mask, uint64_t bits, int arg, int width, const char* file,
                  int line);

// Runs body(payload) as every thread of the grid (blocks in order, see above). A launch
// configuration the hardware rejects, or a failure inside the kernel, sets the error that
// the next cudaGetLastError() returns.
void run_grid(dim3 grid, dim3 block, void (*body)(const void*), const void* payload);

// Between-exchange order of the fibers: 0 ascending thread index, 1 descending, 2 a
// shuffle drawn from `seed` for every round.
void set_schedule(int mode, uint64_t seed);
int schedule_mode();

// Counters since the last reset (launches, blocks, threads, completed exchanges and the
// lanes that took part in them), for tests that assert a kernel really exchanged.
struct Counters {
  uint64_t launches, blocks, threads, exchanges, exchange_lanes, max_exchange_lanes;
};
Counters counters();
void reset_counters();

template <typename T>
inline T exchange_value(Op op, unsigned mask, T v, int arg, int width, const char* file,
                        int line) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value,
                "emulated shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = exchange(op, mask, bits, arg, width, file, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace emu
}  // namespace dreamer_fast

// The call site (file, line) is the default argument, evaluated where the kernel calls.
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  ::dreamer_fast::emu::exchange(::dreamer_fast::emu::Op::kSyncwarp, mask, 0, 0, 32, file, line);
}
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::dreamer_fast::emu::exchange(::dreamer_fast::emu::Op::kSyncthreads, 0xffffffffu, 0, 0, 32,
                                file, line);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::dreamer_fast::emu::exchange_value(::dreamer_fast::emu::Op::kShfl, mask, var, src_lane,
                                             width, file, line);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                         const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::dreamer_fast::emu::exchange_value(::dreamer_fast::emu::Op::kShflXor, mask, var,
                                             lane_mask, width, file, line);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                        const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::dreamer_fast::emu::exchange_value(::dreamer_fast::emu::Op::kShflUp, mask, var,
                                             static_cast<int>(delta), width, file, line);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::dreamer_fast::emu::exchange_value(::dreamer_fast::emu::Op::kShflDown, mask, var,
                                             static_cast<int>(delta), width, file, line);
}
