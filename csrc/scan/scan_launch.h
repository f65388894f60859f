// Launchers of the scan kernels, one per device (scan_cpu.cpp, scan_cuda.cpp); the ops
// themselves (checks, allocation) are in scan_ops.cpp. Tensors are contiguous,
// time-major [T, N] (sequences) or [N] (init / bootstrap).
#pragma once

#include <ATen/ATen.h>

namespace dreamer_fast {
namespace scan {

void reverse_scan_forward_cpu(const at::Tensor& inputs, const at::Tensor& decay,
                              const at::Tensor& init, at::Tensor& out, int64_t T, int64_t N);
void reverse_scan_backward_cpu(const at::Tensor& grad, const at::Tensor& decay,
                               const at::Tensor& init, const at::Tensor& out,
                               at::Tensor& ginputs, at::Tensor& gdecay, at::Tensor& ginit,
                               int64_t T, int64_t N);
void lambda_return_forward_cpu(const at::Tensor& reward, const at::Tensor& value,
                               const at::Tensor& pcont, const at::Tensor& bootstrap,
                               double lambda, at::Tensor& out, int64_t T, int64_t N);
void lambda_return_backward_cpu(const at::Tensor& grad, const at::Tensor& value,
                                const at::Tensor& pcont, const at::Tensor& bootstrap,
                                const at::Tensor& out, double lambda, at::Tensor& greward,
                                at::Tensor& gvalue, at::Tensor& gpcont, at::Tensor& gbootstrap,
                                int64_t T, int64_t N);

#ifdef DREAMER_FAST_WITH_CUDA
void reverse_scan_forward_cuda(const at::Tensor& inputs, const at::Tensor& decay,
                               const at::Tensor& init, at::Tensor& out, int64_t T, int64_t N);
void reverse_scan_backward_cuda(const at::Tensor& grad, const at::Tensor& decay,
                                const at::Tensor& init, const at::Tensor& out,
                                at::Tensor& ginputs, at::Tensor& gdecay, at::Tensor& ginit,
                                int64_t T, int64_t N);
void lambda_return_forward_cuda(const at::Tensor& reward, const at::Tensor& value,
                                const at::Tensor& pcont, const at::Tensor& bootstrap,
                                double lambda, at::Tensor& out, int64_t T, int64_t N);
void lambda_return_backward_cuda(const at::Tensor& grad, const at::Tensor& value,
                                 const at::Tensor& pcont, const at::Tensor& bootstrap,
                                 const at::Tensor& out, double lambda, at::Tensor& greward,
                                 at::Tensor& gvalue, at::Tensor& gpcont, at::Tensor& gbootstrap,
                                 int64_t T, int64_t N);
#endif

}  // namespace scan
}  // namespace dreamer_fast
