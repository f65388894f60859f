// Plain-C++ interface between cells_cuda.cpp (torch side) and cells_cuda_kernels.cu
// (kernels, compiled by nvcc without torch headers). Pointers are device pointers to
// contiguous arrays in the layouts of cells_math.h; `acc` arrays (stats, dy, dy_xhat)
// are float for float/half/bfloat16 and double for double. Each returns
// cudaGetLastError() after its launch.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/cuda_dtype.h"

namespace dreamer_fast {
namespace cuda {

cudaError_t gru_forward(Dtype dtype, const void* gi, const void* gh, const void* hx, void* hy,
                        void* workspace, int64_t B, int64_t H, cudaStream_t stream);
cudaError_t gru_backward(Dtype dtype, const void* grad_hy, const void* workspace,
                         const void* hx, void* dgi, void* dgh, void* dh_direct, int64_t B,
                         int64_t H, cudaStream_t stream);
cudaError_t ln_gru_forward(Dtype dtype, const void* parts, const void* hx, const void* gamma,
                           const void* beta, double eps, double update_bias, void* hy,
                           void* stats, int64_t B, int64_t H, cudaStream_t stream);
cudaError_t ln_gru_backward(Dtype dtype, const void* grad_hy, const void* parts,
                            const void* hx, const void* gamma, const void* beta,
                            const void* stats, double update_bias, void* dy, void* dy_xhat,
                            void* dparts, void* dh_direct, int64_t B, int64_t H,
                            cudaStream_t stream);

cudaError_t block_gru_forward(Dtype dtype, const void* parts, const void* hx, double update_bias,
                              void* hy, int64_t B, int64_t D, int64_t Dg, cudaStream_t stream);
cudaError_t block_gru_backward(Dtype dtype, const void* grad_hy, const void* parts,
                               const void* hx, double update_bias, void* dparts,
                               void* dh_direct, int64_t B, int64_t D, int64_t Dg,
                               cudaStream_t stream);

}  // namespace cuda
}  // namespace dreamer_fast
