// Plain-C++ interface between the torch-side CUDA entry points (scan_cuda.cpp) and
// the kernels (scan_cuda_kernels.cu). Only CUDA runtime types cross it, so the .cu
// file compiles with nvcc alone, without torch headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/cuda_dtype.h"

namespace dreamer_fast {
namespace cuda {

// All pointers are device pointers to contiguous time-major [T, N] (sequences) or
// [N] (init/bootstrap) arrays of `dtype`. Each returns cudaGetLastError() after the
// launch (cudaSuccess when N == 0 and nothing was launched).
cudaError_t reverse_scan_forward(Dtype dtype, const void* inputs, const void* decay,
                                 const void* init, void* out, int64_t T, int64_t N,
                                 cudaStream_t stream);
cudaError_t reverse_scan_backward(Dtype dtype, const void* gout, const void* decay,
                                  const void* init, const void* out, void* ginputs,
                                  void* gdecay, void* ginit, int64_t T, int64_t N,
                                  cudaStream_t stream);
cudaError_t lambda_return_forward(Dtype dtype, const void* reward, const void* value,
                                  const void* pcont, const void* bootstrap, void* out,
                                  double lambda, int64_t T, int64_t N, cudaStream_t stream);
cudaError_t lambda_return_backward(Dtype dtype, const void* gout, const void* value,
                                   const void* pcont, const void* bootstrap, const void* out,
                                   void* greward, void* gvalue, void* gpcont,
                                   void* gbootstrap, double lambda, int64_t T, int64_t N,
                                   cudaStream_t stream);

}  // namespace cuda
}  // namespace dreamer_fast
