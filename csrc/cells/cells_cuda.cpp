// Torch side of the recurrent-cell CUDA launches: dtype mapping, the current stream,
// and a check of every launch. Compiled only with the CUDA kernels.
#include <ATen/ATen.h>

#include "cells/cells_cuda.h"
#include "cells/cells_launch.h"
#include "common/cuda_glue.h"

namespace dreamer_fast {
namespace cells {

void gru_forward_cuda(const at::Tensor& gi, const at::Tensor& gh, const at::Tensor& hx,
                      at::Tensor& hy, at::Tensor& workspace) {
  check_launch("gru_cell", cuda::gru_forward(kernel_dtype("gru_cell", hx.scalar_type()),
                                             gi.const_data_ptr(), gh.const_data_ptr(),
                                             hx.const_data_ptr(), hy.mutable_data_ptr(),
                                             workspace.mutable_data_ptr(), hx.size(0),
                                             hx.size(1), current_stream()));
}

void gru_backward_cuda(const at::Tensor& grad_hy, const at::Tensor& workspace,
                       const at::Tensor& hx, at::Tensor& dgi, at::Tensor& dgh,
                       at::Tensor& dh_direct) {
  check_launch("gru_cell_backward",
               cuda::gru_backward(kernel_dtype("gru_cell_backward", hx.scalar_type()),
                                  grad_hy.const_data_ptr(), workspace.const_data_ptr(),
                                  hx.const_data_ptr(), dgi.mutable_data_ptr(),
                                  dgh.mutable_data_ptr(), dh_direct.mutable_data_ptr(),
                                  hx.size(0), hx.size(1), current_stream()));
}

void ln_gru_forward_cuda(const at::Tensor& parts, const at::Tensor& hx, const at::Tensor& gamma,
                         const at::Tensor& beta, double eps, double update_bias, at::Tensor& hy,
                         at::Tensor& stats) {
  check_launch("ln_gru_cell",
               cuda::ln_gru_forward(kernel_dtype("ln_gru_cell", hx.scalar_type()),
                                    parts.const_data_ptr(), hx.const_data_ptr(),
                                    gamma.const_data_ptr(), beta.const_data_ptr(), eps,
                                    update_bias, hy.mutable_data_ptr(), stats.mutable_data_ptr(),
                                    hx.size(0), hx.size(1), current_stream()));
}

void ln_gru_backward_cuda(const at::Tensor& grad_hy, const at::Tensor& parts,
                          const at::Tensor& hx, const at::Tensor& gamma, const at::Tensor& beta,
                          const at::Tensor& stats, double update_bias, at::Tensor& dy_sum,
                          at::Tensor& dy_xhat_sum, at::Tensor& dparts, at::Tensor& dh_direct) {
  // the row kernel writes dy / dy ⊙ x̂ per row; their column sums are reduced after it
  at::Tensor dy = at::empty(dparts.sizes(), dparts.options().dtype(dy_sum.scalar_type()));
  at::Tensor dy_xhat = at::empty_like(dy);
  check_launch("ln_gru_cell_backward",
               cuda::ln_gru_backward(kernel_dtype("ln_gru_cell_backward", hx.scalar_type()),
                                     grad_hy.const_data_ptr(), parts.const_data_ptr(),
                                     hx.const_data_ptr(), gamma.const_data_ptr(),
                                     beta.const_data_ptr(), stats.const_data_ptr(), update_bias,
                                     dy.mutable_data_ptr(), dy_xhat.mutable_data_ptr(),
                                     dparts.mutable_data_ptr(), dh_direct.mutable_data_ptr(),
                                     hx.size(0), hx.size(1), current_stream()));
  at::sum_out(dy_sum, dy, 0);
  at::sum_out(dy_xhat_sum, dy_xhat, 0);
}

void block_gru_forward_cuda(const at::Tensor& parts, const at::Tensor& hx, int64_t blocks,
                            double update_bias, at::Tensor& hy) {
  check_launch("block_gru_cell",
               cuda::block_gru_forward(kernel_dtype("block_gru_cell", hx.scalar_type()),
                                       parts.const_data_ptr(), hx.const_data_ptr(), update_bias,
                                       hy.mutable_data_ptr(), hx.size(0), hx.size(1),
                                       hx.size(1) / blocks, current_stream()));
}

void block_gru_backward_cuda(const at::Tensor& grad_hy, const at::Tensor& parts,
                             const at::Tensor& hx, int64_t blocks, double update_bias,
                             at::Tensor& dparts, at::Tensor& dh_direct) {
  check_launch("block_gru_cell_backward",
               cuda::block_gru_backward(kernel_dtype("block_gru_cell_backward", hx.scalar_type()),
                                        grad_hy.const_data_ptr(), parts.const_data_ptr(),
                                        hx.const_data_ptr(), update_bias,
                                        dparts.mutable_data_ptr(), dh_direct.mutable_data_ptr(),
                                        hx.size(0), hx.size(1), hx.size(1) / blocks,
                                        current_stream()));
}

}  // namespace cells
}  // namespace dreamer_fast
