// CUDA kernels of the dense-layer epilogue: one warp per row; math in dense_math.h.
#include "common/cuda_common.cuh"
#include "dense/dense_cuda.h"
#include "dense/dense_math.h"

namespace dreamer_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;

template <typename scalar_t, typename acc_t = typename CudaCvt<scalar_t>::acc_t>
__global__ void __launch_bounds__(kThreads)
    norm_act_forward_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ w,
                            const scalar_t* __restrict__ b, int64_t B, int64_t N, int norm,
                            int act, acc_t eps, scalar_t* __restrict__ out,
                            acc_t* __restrict__ stats) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= B) return;  // whole warps exit together
  const WarpLanes lanes{static_cast<int>(threadIdx.x % 32)};
  layer::norm_act_forward_row<CudaCvt<scalar_t>>(z + row * N, w, b, N, norm, act, eps,
                                                 out + row * N, stats + 2 * row, lanes);
}

template <typename scalar_t, typename acc_t = typename CudaCvt<scalar_t>::acc_t>
__global__ void __launch_bounds__(kThreads)
    norm_act_backward_kernel(const scalar_t* __restrict__ dout, const scalar_t* __restrict__ z,
                             const scalar_t* __restrict__ w, const scalar_t* __restrict__ b,
                             const acc_t* __restrict__ stats, int64_t B, int64_t N, int norm,
                             int act, acc_t* __restrict__ dy, acc_t* __restrict__ dy_xhat,
                             scalar_t* __restrict__ dz) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= B) return;
  const WarpLanes lanes{static_cast<int>(threadIdx.x % 32)};
  layer::norm_act_backward_row<CudaCvt<scalar_t>>(
      dout + row * N, z + row * N, w, b, stats + 2 * row, N, norm, act,
      dy ? dy + row * N : nullptr, dy_xhat ? dy_xhat + row * N : nullptr, dz + row * N, lanes);
}

}  // namespace

cudaError_t norm_act_forward(Dtype dtype, const void* z, const void* w, const void* b,
                             int64_t B, int64_t N, int norm, int act, double eps, void* out,
                             void* stats, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;  // N == 0 still writes the rows' stats, as on the CPU
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    using acc_t = typename CudaCvt<s>::acc_t;
    launch_kernel(norm_act_forward_kernel<s>, blocks_for(B, kWarpsPerBlock), kThreads, stream,
        static_cast<const s*>(z), static_cast<const s*>(w), static_cast<const s*>(b), B, N, norm,
        act, static_cast<acc_t>(eps), static_cast<s*>(out), static_cast<acc_t*>(stats));
  });
}

cudaError_t norm_act_backward(Dtype dtype, const void* dout, const void* z, const void* w,
                              const void* b, const void* stats, int64_t B, int64_t N, int norm,
                              int act, void* dy, void* dy_xhat, void* dz, cudaStream_t stream) {
  if (B * N == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    using acc_t = typename CudaCvt<s>::acc_t;
    launch_kernel(norm_act_backward_kernel<s>, blocks_for(B, kWarpsPerBlock), kThreads, stream,
        static_cast<const s*>(dout), static_cast<const s*>(z), static_cast<const s*>(w),
        static_cast<const s*>(b), static_cast<const acc_t*>(stats), B, N, norm, act,
        static_cast<acc_t*>(dy), static_cast<acc_t*>(dy_xhat), static_cast<s*>(dz));
  });
}

}  // namespace cuda
}  // namespace dreamer_fast
