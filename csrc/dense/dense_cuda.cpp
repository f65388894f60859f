// Torch side of the dense-layer epilogue launches (compiled only with CUDA kernels).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "common/cuda_glue.h"
#include "dense/dense.h"
#include "dense/dense_cuda.h"

namespace dreamer_fast {
namespace dense {

namespace {
const void* ptr_or_null(const std::optional<at::Tensor>& t, std::optional<at::Tensor>& keep) {
  if (!t) return nullptr;
  keep = t->contiguous();
  return keep->const_data_ptr();
}
}  // namespace

void epilogue_forward_cuda(const at::Tensor& z, const Params& p, at::Tensor& out,
                           at::Tensor& stats) {
  std::optional<at::Tensor> w, b;
  check_launch("linear_norm_act",
               cuda::norm_act_forward(kernel_dtype("linear_norm_act", z.scalar_type()),
                                      z.const_data_ptr(), ptr_or_null(p.norm_weight, w),
                                      ptr_or_null(p.norm_bias, b), z.size(0), z.size(1), p.norm,
                                      p.act, p.eps, out.mutable_data_ptr(),
                                      stats.mutable_data_ptr(), current_stream()));
}

void epilogue_backward_cuda(const at::Tensor& dout, const at::Tensor& z, const at::Tensor& stats,
                            const Params& p, at::Tensor* dy_sum, at::Tensor* dy_xhat_sum,
                            at::Tensor& dz) {
  std::optional<at::Tensor> w, b;
  // the row kernel writes dy / dy ⊙ x̂ per row; their column sums are reduced after it
  const auto acc = at::toOpMathType(z.scalar_type());
  at::Tensor dy_rows, dyx_rows;
  at::Tensor* dy = dy_sum ? &(dy_rows = at::empty(z.sizes(), z.options().dtype(acc))) : nullptr;
  at::Tensor* dy_xhat =
      dy_xhat_sum ? &(dyx_rows = at::empty(z.sizes(), z.options().dtype(acc))) : nullptr;
  check_launch("linear_norm_act_backward",
               cuda::norm_act_backward(
                   kernel_dtype("linear_norm_act_backward", z.scalar_type()), dout.const_data_ptr(),
                   z.const_data_ptr(), ptr_or_null(p.norm_weight, w), ptr_or_null(p.norm_bias, b),
                   stats.const_data_ptr(), z.size(0), z.size(1), p.norm, p.act,
                   dy ? dy->mutable_data_ptr() : nullptr,
                   dy_xhat ? dy_xhat->mutable_data_ptr() : nullptr, dz.mutable_data_ptr(),
                   current_stream()));
  if (dy_sum) at::sum_out(*dy_sum, dy_rows, 0);
  if (dy_xhat_sum) at::sum_out(*dy_xhat_sum, dyx_rows, 0);
}

}  // namespace dense
}  // namespace dreamer_fast
