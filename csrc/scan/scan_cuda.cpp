// Torch side of the scan CUDA launches: the current stream (CUDA-graph-capture safe:
// no sync, no host allocation) and a check of every launch. Compiled only with the
// CUDA kernels.
#include <ATen/ATen.h>

#include "common/cuda_glue.h"
#include "scan/scan_cuda.h"
#include "scan/scan_launch.h"

namespace dreamer_fast {
namespace scan {

void reverse_scan_forward_cuda(const at::Tensor& inputs, const at::Tensor& decay,
                               const at::Tensor& init, at::Tensor& out, int64_t T, int64_t N) {
  const char* op = "reverse_scan";
  check_launch(op, cuda::reverse_scan_forward(kernel_dtype(op, inputs.scalar_type()),
                                              inputs.const_data_ptr(), decay.const_data_ptr(),
                                              init.const_data_ptr(), out.mutable_data_ptr(), T, N,
                                              current_stream()));
}

void reverse_scan_backward_cuda(const at::Tensor& grad, const at::Tensor& decay,
                                const at::Tensor& init, const at::Tensor& out,
                                at::Tensor& ginputs, at::Tensor& gdecay, at::Tensor& ginit,
                                int64_t T, int64_t N) {
  const char* op = "reverse_scan_backward";
  check_launch(op, cuda::reverse_scan_backward(
                       kernel_dtype(op, grad.scalar_type()), grad.const_data_ptr(),
                       decay.const_data_ptr(), init.const_data_ptr(), out.const_data_ptr(),
                       ginputs.mutable_data_ptr(), gdecay.mutable_data_ptr(),
                       ginit.mutable_data_ptr(), T, N, current_stream()));
}

void lambda_return_forward_cuda(const at::Tensor& reward, const at::Tensor& value,
                                const at::Tensor& pcont, const at::Tensor& bootstrap,
                                double lambda, at::Tensor& out, int64_t T, int64_t N) {
  const char* op = "lambda_return";
  check_launch(op, cuda::lambda_return_forward(
                       kernel_dtype(op, reward.scalar_type()), reward.const_data_ptr(),
                       value.const_data_ptr(), pcont.const_data_ptr(), bootstrap.const_data_ptr(),
                       out.mutable_data_ptr(), lambda, T, N, current_stream()));
}

void lambda_return_backward_cuda(const at::Tensor& grad, const at::Tensor& value,
                                 const at::Tensor& pcont, const at::Tensor& bootstrap,
                                 const at::Tensor& out, double lambda, at::Tensor& greward,
                                 at::Tensor& gvalue, at::Tensor& gpcont, at::Tensor& gbootstrap,
                                 int64_t T, int64_t N) {
  const char* op = "lambda_return_backward";
  check_launch(op, cuda::lambda_return_backward(
                       kernel_dtype(op, grad.scalar_type()), grad.const_data_ptr(),
                       value.const_data_ptr(), pcont.const_data_ptr(), bootstrap.const_data_ptr(),
                       out.const_data_ptr(), greward.mutable_data_ptr(), gvalue.mutable_data_ptr(),
                       gpcont.mutable_data_ptr(), gbootstrap.mutable_data_ptr(), lambda, T, N,
                       current_stream()));
}

}  // namespace scan
}  // namespace dreamer_fast
