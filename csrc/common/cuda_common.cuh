// Helpers shared by the .cu kernel files (CUDA headers only, no torch).
//
// The kernel files also compile with the C++ compiler against a host emulation of the
// CUDA subset they use (emu/cuda_emu.h, when DREAMER_FAST_CUDA_EMU is defined; the
// test-only module dreamer_fast._cuda_emu), so every launch goes through launch_kernel
// below instead of the <<<>>> syntax.
#pragma once

#if defined(DREAMER_FAST_CUDA_EMU)
#include "emu/cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <utility>

#include "common/cuda_dtype.h"

namespace dreamer_fast {
namespace cuda {

// Storage <-> accumulation conversions (acc_t: float, or double for double).
template <typename scalar_t>
struct CudaCvt;
template <>
struct CudaCvt<float> {
  using acc_t = float;
  static __device__ __forceinline__ float load(float x) { return x; }
  static __device__ __forceinline__ float store(float x) { return x; }
};
template <>
struct CudaCvt<double> {
  using acc_t = double;
  static __device__ __forceinline__ double load(double x) { return x; }
  static __device__ __forceinline__ double store(double x) { return x; }
};
template <>
struct CudaCvt<__half> {
  using acc_t = float;
  static __device__ __forceinline__ float load(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half store(float x) { return __float2half_rn(x); }
};
template <>
struct CudaCvt<__nv_bfloat16> {
  using acc_t = float;
  static __device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 store(float x) {
    return __float2bfloat16_rn(x);
  }
};

// The 32 lanes of a warp share one row (see the Lanes policy in cells_math.h).
struct WarpLanes {
  int lane;
  static constexpr int count = 32;
  template <typename T>
  __device__ __forceinline__ T sum(T v) const {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
  }
  __device__ __forceinline__ void sync() const { __syncwarp(); }
};

// Launches `kernel` over `grid` x `block` threads on `stream` with `args` converted to
// its parameters: under nvcc the ordinary launch (kernel<<<grid, block, 0, stream>>>);
// in the host emulation the grid runs on the calling thread before this returns
// (emu::run_grid). Either way the launch's error is left for cudaGetLastError().
template <typename... Params, typename... Args>
inline void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                          Args&&... args) {
#if defined(DREAMER_FAST_CUDA_EMU)
  (void)stream;
  // kernel parameters are copies, as on the device; each emulated thread gets its own
  using Kernel = void (*)(Params...);
  struct Payload {
    Kernel kernel;
    std::tuple<std::decay_t<Params>...> params;
  };
  const Payload payload{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  emu::run_grid(grid, block, [](const void* p) {
    const auto* pl = static_cast<const Payload*>(p);
    std::apply(pl->kernel, pl->params);
  }, &payload);
#else
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
#endif
}

// Calls fn(scalar_t{}) with the C++ type matching `dtype`; returns the launch error.
template <typename Fn>
inline cudaError_t dispatch_dtype(Dtype dtype, const Fn& fn) {
  switch (dtype) {
    case Dtype::kFloat: fn(float{}); break;
    case Dtype::kDouble: fn(double{}); break;
    case Dtype::kHalf: fn(__half{}); break;
    case Dtype::kBFloat16: fn(__nv_bfloat16{}); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

// Blocks of `per_block` work items needed for `n` items (callers that may exceed the
// grid limit check the result before launching).
inline int64_t blocks_for(int64_t n, int64_t per_block) { return (n + per_block - 1) / per_block; }

}  // namespace cuda
}  // namespace dreamer_fast
