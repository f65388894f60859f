// Plain-C++ interface to the dense-layer epilogue kernels (dense_cuda_kernels.cu).
// Device pointers, contiguous [B, N] rows; w / b / dy / dy_xhat may be null.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/cuda_dtype.h"

namespace dreamer_fast {
namespace cuda {

cudaError_t norm_act_forward(Dtype dtype, const void* z, const void* w, const void* b,
                             int64_t B, int64_t N, int norm, int act, double eps, void* out,
                             void* stats, cudaStream_t stream);
cudaError_t norm_act_backward(Dtype dtype, const void* dout, const void* z, const void* w,
                              const void* b, const void* stats, int64_t B, int64_t N, int norm,
                              int act, void* dy, void* dy_xhat, void* dz, cudaStream_t stream);

}  // namespace cuda
}  // namespace dreamer_fast
