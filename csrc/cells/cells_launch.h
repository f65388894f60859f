// Pointwise / row-wise launchers of the recurrent cells, one per device. The cells'
// forward and backward (cells.cpp) run the GEMMs through common/gemm.h and call these
// for everything else. Tensors are contiguous 2-D [rows, cols] (see cells_math.h for layouts).
#pragma once

#include <ATen/ATen.h>

namespace dreamer_fast {
namespace cells {

// hy [B,H], workspace [B,4H] <- gi, gh [B,3H], hx [B,H]
void gru_forward_cpu(const at::Tensor& gi, const at::Tensor& gh, const at::Tensor& hx,
                     at::Tensor& hy, at::Tensor& workspace);
// dgi, dgh [B,3H], dh_direct [B,H] <- grad_hy [B,H], workspace [B,4H], hx [B,H]
void gru_backward_cpu(const at::Tensor& grad_hy, const at::Tensor& workspace,
                      const at::Tensor& hx, at::Tensor& dgi, at::Tensor& dgh,
                      at::Tensor& dh_direct);
// hy [B,H], stats [B,2] (acc dtype) <- parts [B,3H], hx [B,H], gamma/beta [3H]
void ln_gru_forward_cpu(const at::Tensor& parts, const at::Tensor& hx, const at::Tensor& gamma,
                        const at::Tensor& beta, double eps, double update_bias, at::Tensor& hy,
                        at::Tensor& stats);
// dy_sum, dy_xhat_sum [3H] (acc dtype): the column sums of dy and dy ⊙ x̂ (the
// LayerNorm bias / weight gradients); dparts [B,3H], dh_direct [B,H]
void ln_gru_backward_cpu(const at::Tensor& grad_hy, const at::Tensor& parts,
                         const at::Tensor& hx, const at::Tensor& gamma, const at::Tensor& beta,
                         const at::Tensor& stats, double update_bias, at::Tensor& dy_sum,
                         at::Tensor& dy_xhat_sum, at::Tensor& dparts, at::Tensor& dh_direct);

// hy [B,D] <- parts [B,3D] (block layout, see cells_math.h), hx [B,D]
void block_gru_forward_cpu(const at::Tensor& parts, const at::Tensor& hx, int64_t blocks,
                           double update_bias, at::Tensor& hy);
// dparts [B,3D], dh_direct [B,D]
void block_gru_backward_cpu(const at::Tensor& grad_hy, const at::Tensor& parts,
                            const at::Tensor& hx, int64_t blocks, double update_bias,
                            at::Tensor& dparts, at::Tensor& dh_direct);

#ifdef DREAMER_FAST_WITH_CUDA
void block_gru_forward_cuda(const at::Tensor& parts, const at::Tensor& hx, int64_t blocks,
                            double update_bias, at::Tensor& hy);
void block_gru_backward_cuda(const at::Tensor& grad_hy, const at::Tensor& parts,
                             const at::Tensor& hx, int64_t blocks, double update_bias,
                             at::Tensor& dparts, at::Tensor& dh_direct);
void gru_forward_cuda(const at::Tensor& gi, const at::Tensor& gh, const at::Tensor& hx,
                      at::Tensor& hy, at::Tensor& workspace);
void gru_backward_cuda(const at::Tensor& grad_hy, const at::Tensor& workspace,
                       const at::Tensor& hx, at::Tensor& dgi, at::Tensor& dgh,
                       at::Tensor& dh_direct);
void ln_gru_forward_cuda(const at::Tensor& parts, const at::Tensor& hx, const at::Tensor& gamma,
                         const at::Tensor& beta, double eps, double update_bias, at::Tensor& hy,
                         at::Tensor& stats);
void ln_gru_backward_cuda(const at::Tensor& grad_hy, const at::Tensor& parts,
                          const at::Tensor& hx, const at::Tensor& gamma, const at::Tensor& beta,
                          const at::Tensor& stats, double update_bias, at::Tensor& dy_sum,
                          at::Tensor& dy_xhat_sum, at::Tensor& dparts, at::Tensor& dh_direct);
#endif

}  // namespace cells
}  // namespace dreamer_fast
