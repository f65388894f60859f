// CUDA kernels of the recurrent cells. GRU gates: one thread per (row, unit).
// LayerNorm GRU: one warp per row (the LayerNorm reductions are warp shuffles).
// The math is cells_math.h, shared with the CPU launcher.
#include "cells/cells_cuda.h"
#include "cells/cells_math.h"
#include "common/cuda_common.cuh"

namespace dreamer_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    gru_forward_kernel(const scalar_t* __restrict__ gi, const scalar_t* __restrict__ gh,
                       const scalar_t* __restrict__ hx, scalar_t* __restrict__ hy,
                       scalar_t* __restrict__ workspace, int64_t B, int64_t H) {
  using Cvt = CudaCvt<scalar_t>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * H) return;
  cells::gru_forward_element<Cvt, scalar_t, typename Cvt::acc_t>(gi, gh, hx, hy, workspace, i / H,
                                                               i % H, H);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    gru_backward_kernel(const scalar_t* __restrict__ grad_hy,
                        const scalar_t* __restrict__ workspace,
                        const scalar_t* __restrict__ hx, scalar_t* __restrict__ dgi,
                        scalar_t* __restrict__ dgh, scalar_t* __restrict__ dh_direct, int64_t B,
                        int64_t H) {
  using Cvt = CudaCvt<scalar_t>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * H) return;
  cells::gru_backward_element<Cvt, scalar_t, typename Cvt::acc_t>(grad_hy, workspace, hx, dgi,
                                                                dgh, dh_direct, i / H, i % H, H);
}

template <typename scalar_t, typename acc_t = typename CudaCvt<scalar_t>::acc_t>
__global__ void __launch_bounds__(kThreads)
    ln_gru_forward_kernel(const scalar_t* __restrict__ parts, const scalar_t* __restrict__ hx,
                          const scalar_t* __restrict__ gamma, const scalar_t* __restrict__ beta,
                          acc_t eps, acc_t update_bias, scalar_t* __restrict__ hy,
                          acc_t* __restrict__ stats, int64_t B, int64_t H) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= B) return;  // whole warps exit together: the shuffles stay convergent
  const WarpLanes lanes{static_cast<int>(threadIdx.x % 32)};
  cells::ln_gru_forward_row<CudaCvt<scalar_t>>(parts + row * 3 * H, hx + row * H, gamma, beta,
                                             eps, update_bias, H, hy + row * H, stats + 2 * row,
                                             lanes);
}

template <typename scalar_t, typename acc_t = typename CudaCvt<scalar_t>::acc_t>
__global__ void __launch_bounds__(kThreads) ln_gru_backward_kernel(
    const scalar_t* __restrict__ grad_hy, const scalar_t* __restrict__ parts,
    const scalar_t* __restrict__ hx, const scalar_t* __restrict__ gamma,
    const scalar_t* __restrict__ beta, const acc_t* __restrict__ stats, acc_t update_bias,
    acc_t* __restrict__ dy, acc_t* __restrict__ dy_xhat, scalar_t* __restrict__ dparts,
    scalar_t* __restrict__ dh_direct, int64_t B, int64_t H) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= B) return;
  const WarpLanes lanes{static_cast<int>(threadIdx.x % 32)};
  cells::ln_gru_backward_row<CudaCvt<scalar_t>>(
      grad_hy + row * H, parts + row * 3 * H, hx + row * H, gamma, beta, stats + 2 * row,
      update_bias, H, dy + row * 3 * H, dy_xhat + row * 3 * H, dparts + row * 3 * H,
      dh_direct + row * H, lanes);
}

template <typename scalar_t, typename acc_t = typename CudaCvt<scalar_t>::acc_t>
__global__ void __launch_bounds__(kThreads)
    block_gru_forward_kernel(const scalar_t* __restrict__ parts, const scalar_t* __restrict__ hx,
                             acc_t update_bias, scalar_t* __restrict__ hy, int64_t B, int64_t D,
                             int64_t Dg) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * D) return;
  cells::block_gru_forward_element<CudaCvt<scalar_t>, scalar_t, acc_t>(parts, hx, hy, update_bias,
                                                                     i / D, i % D, D, Dg);
}

template <typename scalar_t, typename acc_t = typename CudaCvt<scalar_t>::acc_t>
__global__ void __launch_bounds__(kThreads) block_gru_backward_kernel(
    const scalar_t* __restrict__ grad_hy, const scalar_t* __restrict__ parts,
    const scalar_t* __restrict__ hx, acc_t update_bias, scalar_t* __restrict__ dparts,
    scalar_t* __restrict__ dh_direct, int64_t B, int64_t D, int64_t Dg) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * D) return;
  cells::block_gru_backward_element<CudaCvt<scalar_t>, scalar_t, acc_t>(
      grad_hy, parts, hx, dparts, dh_direct, update_bias, i / D, i % D, D, Dg);
}

}  // namespace

cudaError_t block_gru_forward(Dtype dtype, const void* parts, const void* hx, double update_bias,
                              void* hy, int64_t B, int64_t D, int64_t Dg, cudaStream_t stream) {
  if (B * D == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    using acc_t = typename CudaCvt<s>::acc_t;
    launch_kernel(block_gru_forward_kernel<s>, blocks_for(B * D, kThreads), kThreads, stream,
        static_cast<const s*>(parts), static_cast<const s*>(hx), static_cast<acc_t>(update_bias),
        static_cast<s*>(hy), B, D, Dg);
  });
}

cudaError_t block_gru_backward(Dtype dtype, const void* grad_hy, const void* parts,
                               const void* hx, double update_bias, void* dparts,
                               void* dh_direct, int64_t B, int64_t D, int64_t Dg,
                               cudaStream_t stream) {
  if (B * D == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    using acc_t = typename CudaCvt<s>::acc_t;
    launch_kernel(block_gru_backward_kernel<s>, blocks_for(B * D, kThreads), kThreads, stream,
        static_cast<const s*>(grad_hy), static_cast<const s*>(parts), static_cast<const s*>(hx),
        static_cast<acc_t>(update_bias), static_cast<s*>(dparts), static_cast<s*>(dh_direct), B,
        D, Dg);
  });
}

cudaError_t gru_forward(Dtype dtype, const void* gi, const void* gh, const void* hx, void* hy,
                        void* workspace, int64_t B, int64_t H, cudaStream_t stream) {
  if (B * H == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    launch_kernel(gru_forward_kernel<s>, blocks_for(B * H, kThreads), kThreads, stream,
        static_cast<const s*>(gi), static_cast<const s*>(gh), static_cast<const s*>(hx),
        static_cast<s*>(hy), static_cast<s*>(workspace), B, H);
  });
}

cudaError_t gru_backward(Dtype dtype, const void* grad_hy, const void* workspace,
                         const void* hx, void* dgi, void* dgh, void* dh_direct, int64_t B,
                         int64_t H, cudaStream_t stream) {
  if (B * H == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    launch_kernel(gru_backward_kernel<s>, blocks_for(B * H, kThreads), kThreads, stream,
        static_cast<const s*>(grad_hy), static_cast<const s*>(workspace),
        static_cast<const s*>(hx), static_cast<s*>(dgi), static_cast<s*>(dgh),
        static_cast<s*>(dh_direct), B, H);
  });
}

cudaError_t ln_gru_forward(Dtype dtype, const void* parts, const void* hx, const void* gamma,
                           const void* beta, double eps, double update_bias, void* hy,
                           void* stats, int64_t B, int64_t H, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;  // H == 0 still writes the rows' stats, as on the CPU
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    using acc_t = typename CudaCvt<s>::acc_t;
    launch_kernel(ln_gru_forward_kernel<s>, blocks_for(B, kWarpsPerBlock), kThreads, stream,
        static_cast<const s*>(parts), static_cast<const s*>(hx), static_cast<const s*>(gamma),
        static_cast<const s*>(beta), static_cast<acc_t>(eps), static_cast<acc_t>(update_bias),
        static_cast<s*>(hy), static_cast<acc_t*>(stats), B, H);
  });
}

cudaError_t ln_gru_backward(Dtype dtype, const void* grad_hy, const void* parts,
                            const void* hx, const void* gamma, const void* beta,
                            const void* stats, double update_bias, void* dy, void* dy_xhat,
                            void* dparts, void* dh_direct, int64_t B, int64_t H,
                            cudaStream_t stream) {
  if (B * H == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    using acc_t = typename CudaCvt<s>::acc_t;
    launch_kernel(ln_gru_backward_kernel<s>, blocks_for(B, kWarpsPerBlock), kThreads, stream,
        static_cast<const s*>(grad_hy), static_cast<const s*>(parts),
        static_cast<const s*>(hx), static_cast<const s*>(gamma), static_cast<const s*>(beta),
        static_cast<const acc_t*>(stats), static_cast<acc_t>(update_bias),
        static_cast<acc_t*>(dy), static_cast<acc_t*>(dy_xhat), static_cast<s*>(dparts),
        static_cast<s*>(dh_direct), B, H);
  });
}

}  // namespace cuda
}  // namespace dreamer_fast
