// CUDA kernels of the scan ops: one thread per batch column, looping over time.
// Thread n touches element t * N + n, so each time step's loads and stores are
// coalesced across the warp. The recurrences come from scan_math.h (W = 1 tile).
// Half and bfloat16 are loaded/stored in storage type and accumulated in float.
#include "common/cuda_common.cuh"
#include "scan/scan_cuda.h"
#include "scan/scan_math.h"

namespace dreamer_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    reverse_scan_forward_kernel(const scalar_t* __restrict__ inputs,
                                const scalar_t* __restrict__ decay,
                                const scalar_t* __restrict__ init, scalar_t* __restrict__ out,
                                int64_t T, int64_t N) {
  using Cvt = CudaCvt<scalar_t>;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  scan::reverse_scan_forward_tile<1, Cvt, scalar_t, typename Cvt::acc_t>(inputs, decay, init,
                                                                         out, T, N, n, 1);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) reverse_scan_backward_kernel(
    const scalar_t* __restrict__ gout, const scalar_t* __restrict__ decay,
    const scalar_t* __restrict__ init, const scalar_t* __restrict__ out,
    scalar_t* __restrict__ ginputs, scalar_t* __restrict__ gdecay,
    scalar_t* __restrict__ ginit, int64_t T, int64_t N) {
  using Cvt = CudaCvt<scalar_t>;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  scan::reverse_scan_backward_tile<1, Cvt, scalar_t, typename Cvt::acc_t>(
      gout, decay, init, out, ginputs, gdecay, ginit, T, N, n, 1);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) lambda_return_forward_kernel(
    const scalar_t* __restrict__ reward, const scalar_t* __restrict__ value,
    const scalar_t* __restrict__ pcont, const scalar_t* __restrict__ bootstrap,
    scalar_t* __restrict__ out, typename CudaCvt<scalar_t>::acc_t lambda, int64_t T,
    int64_t N) {
  using Cvt = CudaCvt<scalar_t>;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  scan::lambda_return_forward_tile<1, Cvt, scalar_t, typename Cvt::acc_t>(
      reward, value, pcont, bootstrap, out, lambda, T, N, n, 1);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) lambda_return_backward_kernel(
    const scalar_t* __restrict__ gout, const scalar_t* __restrict__ value,
    const scalar_t* __restrict__ pcont, const scalar_t* __restrict__ bootstrap,
    const scalar_t* __restrict__ out, scalar_t* __restrict__ greward,
    scalar_t* __restrict__ gvalue, scalar_t* __restrict__ gpcont,
    scalar_t* __restrict__ gbootstrap, typename CudaCvt<scalar_t>::acc_t lambda, int64_t T,
    int64_t N) {
  using Cvt = CudaCvt<scalar_t>;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  scan::lambda_return_backward_tile<1, Cvt, scalar_t, typename Cvt::acc_t>(
      gout, value, pcont, bootstrap, out, greward, gvalue, gpcont, gbootstrap, lambda, T, N,
      n, 1);
}

inline dim3 grid_for(int64_t N) { return dim3(static_cast<unsigned>(blocks_for(N, kThreads))); }

}  // namespace

cudaError_t reverse_scan_forward(Dtype dtype, const void* inputs, const void* decay,
                                 const void* init, void* out, int64_t T, int64_t N,
                                 cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    launch_kernel(reverse_scan_forward_kernel<s>, grid_for(N), kThreads, stream,
        static_cast<const s*>(inputs), static_cast<const s*>(decay),
        static_cast<const s*>(init), static_cast<s*>(out), T, N);
  });
}

cudaError_t reverse_scan_backward(Dtype dtype, const void* gout, const void* decay,
                                  const void* init, const void* out, void* ginputs,
                                  void* gdecay, void* ginit, int64_t T, int64_t N,
                                  cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    launch_kernel(reverse_scan_backward_kernel<s>, grid_for(N), kThreads, stream,
        static_cast<const s*>(gout), static_cast<const s*>(decay),
        static_cast<const s*>(init), static_cast<const s*>(out), static_cast<s*>(ginputs),
        static_cast<s*>(gdecay), static_cast<s*>(ginit), T, N);
  });
}

cudaError_t lambda_return_forward(Dtype dtype, const void* reward, const void* value,
                                  const void* pcont, const void* bootstrap, void* out,
                                  double lambda, int64_t T, int64_t N, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    using acc_t = typename CudaCvt<s>::acc_t;
    launch_kernel(lambda_return_forward_kernel<s>, grid_for(N), kThreads, stream,
        static_cast<const s*>(reward), static_cast<const s*>(value),
        static_cast<const s*>(pcont), static_cast<const s*>(bootstrap), static_cast<s*>(out),
        static_cast<acc_t>(lambda), T, N);
  });
}

cudaError_t lambda_return_backward(Dtype dtype, const void* gout, const void* value,
                                   const void* pcont, const void* bootstrap, const void* out,
                                   void* greward, void* gvalue, void* gpcont,
                                   void* gbootstrap, double lambda, int64_t T, int64_t N,
                                   cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    using acc_t = typename CudaCvt<s>::acc_t;
    launch_kernel(lambda_return_backward_kernel<s>, grid_for(N), kThreads, stream,
        static_cast<const s*>(gout), static_cast<const s*>(value),
        static_cast<const s*>(pcont), static_cast<const s*>(bootstrap),
        static_cast<const s*>(out), static_cast<s*>(greward), static_cast<s*>(gvalue),
        static_cast<s*>(gpcont), static_cast<s*>(gbootstrap), static_cast<acc_t>(lambda), T,
        N);
  });
}

}  // namespace cuda
}  // namespace dreamer_fast
