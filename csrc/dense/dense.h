// A dense layer `act(norm(x W^T + b))` as C++ building blocks: the GEMM through gemm.h,
// the epilogue in one fused row kernel (dense_math.h), and the matching backward.
// Used by the linear_norm_act op and by the composite ops (block GRU, RSSM steps).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "common/grads.h"

namespace dreamer_fast {
namespace dense {

struct Params {
  at::Tensor weight;                     // [N, I]
  std::optional<at::Tensor> bias;        // [N]
  std::optional<at::Tensor> norm_weight; // [N]  (layer / rms)
  std::optional<at::Tensor> norm_bias;   // [N]  (layer)
  int norm = 0;                          // layer::Norm
  int act = 0;                           // layer::Act
  double eps = 1e-3;
};

struct Forward {
  at::Tensor out;    // [B, N]  act(norm(z))
  at::Tensor z;      // [B, N]  x W^T + b (saved for backward)
  at::Tensor stats;  // [B, 2]  (mean, rstd) in the accumulation dtype
};

// Checks shapes/dtypes/devices of `p` against x [B, I]; `op` names the caller.
void check(const char* op, const at::Tensor& x, const Params& p);

// `out` (optional, contiguous [B, N]): where the layer's output goes (a step of a
// sequence buffer, so that the steps need no concatenation later); f.out is then `out`.
Forward forward(const at::Tensor& x, const Params& p, const at::Tensor& out = at::Tensor());

// The epilogue alone, on a linear output z [B, N] computed by the caller
// (p.weight / p.bias are not used). `out` as for `forward`.
Forward apply_epilogue(const at::Tensor& z, const Params& p,
                       const at::Tensor& out = at::Tensor());

// dz only (the gradient w.r.t. the linear output), plus the norm parameter grads.
at::Tensor backward_epilogue(const at::Tensor& dout, const Forward& saved, const Params& p,
                             at::Tensor* d_norm_weight, at::Tensor* d_norm_bias);

// ---- a layer of an op's parameter list ------------------------------------------------

// The layer's tensors as indices into the op's parameter list P (-1 = absent).
struct Layer {
  int64_t w = -1, b = -1, nw = -1, nb = -1;
  int norm = 0, act = 0;
  double eps = 1e-3;
};
// What a layer's backward reads: its input x, linear output z and row stats.
struct LayerSaved {
  at::Tensor x, z, stats;
};

Params layer_params(at::TensorList P, const Layer& r);
// out = layer(x); appends (x, z, stats) to `saved` when given. `out` as for `forward`.
at::Tensor layer_forward(at::TensorList P, const Layer& r, const at::Tensor& x,
                         std::vector<at::Tensor>* saved, const at::Tensor& out = at::Tensor());
// The epilogue on a precomputed linear output z (bias already added); appends
// (x, z, stats) like layer_forward.
at::Tensor layer_epilogue(at::TensorList P, const Layer& r, const at::Tensor& z,
                          const at::Tensor& x, std::vector<at::Tensor>* saved,
                          const at::Tensor& out = at::Tensor());
// dz of a layer (the gradient at its linear output); gives `g` the norm parameter grads.
at::Tensor layer_backward_dz(at::TensorList P, const Layer& r, const LayerSaved& s,
                             const at::Tensor& dout, GradSink& g);
// Full layer backward: gives `g` dW and db; returns dx when `need_dx`.
at::Tensor layer_backward(at::TensorList P, const Layer& r, const LayerSaved& s,
                          const at::Tensor& dout, GradSink& g, bool need_dx);

// Launchers of the epilogue row kernels (dense_cpu.cpp / dense_cuda.cpp).
void epilogue_forward_cpu(const at::Tensor& z, const Params& p, at::Tensor& out,
                          at::Tensor& stats);
// dy_sum / dy_xhat_sum (each optional): [N] in the accumulation dtype, receive the
// column sums of dy and dy ⊙ x̂ (the norm bias / weight gradients).
void epilogue_backward_cpu(const at::Tensor& dout, const at::Tensor& z, const at::Tensor& stats,
                           const Params& p, at::Tensor* dy_sum, at::Tensor* dy_xhat_sum,
                           at::Tensor& dz);
#ifdef DREAMER_FAST_WITH_CUDA
void epilogue_forward_cuda(const at::Tensor& z, const Params& p, at::Tensor& out,
                           at::Tensor& stats);
void epilogue_backward_cuda(const at::Tensor& dout, const at::Tensor& z, const at::Tensor& stats,
                            const Params& p, at::Tensor* dy_sum, at::Tensor* dy_xhat_sum,
                            at::Tensor& dz);
#endif

}  // namespace dense
}  // namespace dreamer_fast
