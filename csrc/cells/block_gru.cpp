// The DreamerV3 block GRU core (danijar/dreamerv3 rssm.py `_core`, NM512/r2dreamer
// `Deter`) as one op with one fused backward. Notation: B batch, D deter, G blocks,
// Dg = D / G, U hidden, S flat stoch, A action size, L >= 1 hidden block layers.
//
//   a  = action / max(1, |action|)            (divisor treated as a constant)
//   x0 = act(rms(deter W0^T + b0) s0)          [B, U]
//   x1 = act(rms(stoch W1^T + b1) s1)          [B, U]
//   x2 = act(rms(a     W2^T + b2) s2)          [B, U]
//   x  = cat(x0, x1, x2)                        [B, 3U]
//   layer 1:  z_g = [deter_g, x] Wh1[g] + bh1_g    (block g's input is its deter slice
//             and the whole x; Wh1 [G, Dg + 3U, Dg], rows ordered (deter_g, x))
//   layer l>1: z_g = h_g Whl[g] + bhl_g             (Whl [G, Dg, Dg])
//             h = act(rms(z) sl)  over all D units
//   parts_g = h_g Wg[g] + bg_g                      (Wg [G, Dg, 3 Dg]) -> [B, 3D]
//   gates per block: (reset, cand, update) = parts_g split in three (cells_math.h)
//   deter' = σ(update − 1) ⊙ tanh(σ(reset) ⊙ cand) + (1 − σ(update − 1)) ⊙ deter
//
// The broadcast of x to every block is never materialised: the x rows of Wh1 are one
// [3U, D] GEMM. Saved for backward (the `saved` list): a, x, the (z, stats) of the
// three input layers, (out, z, stats) of every hidden layer, and parts.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "cells/cells_launch.h"
#include "common/device_launch.h"
#include "common/gemm.h"
#include "dense/dense.h"
#include "dense/dense_math.h"

namespace dreamer_fast {
namespace {

using at::Tensor;
constexpr const char* kOp = "block_gru_cell";
constexpr double kUpdateBias = -1.0;

// y [B, G * out_g] = block-diagonal x [B, G * in_g] times W [G, in_g, out_g]
Tensor block_linear(const Tensor& x, const Tensor& W) {
  const int64_t B = x.size(0), G = W.size(0), in_g = W.size(1), out_g = W.size(2);
  return at::bmm(x.reshape({B, G, in_g}).transpose(0, 1), W).transpose(0, 1).reshape(
      {B, G * out_g});
}

// Gradients of block_linear: (dx [B, G in_g], dW [G, in_g, out_g]).
std::pair<Tensor, Tensor> block_linear_backward(const Tensor& dy, const Tensor& x,
                                                const Tensor& W, bool need_dx) {
  const int64_t B = x.size(0), G = W.size(0), in_g = W.size(1), out_g = W.size(2);
  const Tensor dyb = dy.reshape({B, G, out_g}).transpose(0, 1);  // [G, B, out_g]
  const Tensor xb = x.reshape({B, G, in_g}).transpose(0, 1);     // [G, B, in_g]
  Tensor dW = at::bmm(xb.transpose(1, 2), dyb);
  Tensor dx;
  if (need_dx) dx = at::bmm(dyb, W.transpose(1, 2)).transpose(0, 1).reshape({B, G * in_g});
  return {dx, dW};
}

struct Shapes {
  int64_t B, D, G, Dg, U, S, A, L;
};

dense::Params rms_params(const Tensor& W, const Tensor& b, const Tensor& s, int act, double eps) {
  dense::Params p;
  p.weight = W;
  p.bias = b;
  p.norm_weight = s;
  p.norm = layer::kRms;
  p.act = act;
  p.eps = eps;
  return p;
}

void check_tensor(const char* name, const Tensor& t, const Tensor& like,
                  at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, kOp, ": `", name, "` must have shape ", shape, ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), kOp, ": `", name, "` has dtype ",
              t.scalar_type(), ", expected ", like.scalar_type());
  TORCH_CHECK(t.device() == like.device(), kOp, ": `", name, "` is on ", t.device(),
              ", expected ", like.device());
}

Shapes check_args(const Tensor& deter, const Tensor& stoch, const Tensor& action,
                  at::TensorList in_params, at::TensorList hidden_params,
                  const Tensor& gru_weight, const Tensor& gru_bias, int64_t blocks) {
  TORCH_CHECK(deter.dim() == 2, kOp, ": `deter` must be 2-D [B, D], got ", deter.sizes());
  TORCH_CHECK(at::isFloatingType(deter.scalar_type()), kOp,
              ": `deter` must be a floating-point tensor, got ", deter.scalar_type());
  Shapes s;
  s.B = deter.size(0);
  s.D = deter.size(1);
  s.G = blocks;
  TORCH_CHECK(blocks >= 1 && s.D % blocks == 0, kOp, ": `blocks`=", blocks,
              " must divide deter size ", s.D);
  s.Dg = s.D / s.G;
  TORCH_CHECK(stoch.dim() == 2 && stoch.size(0) == s.B, kOp, ": `stoch` must be [", s.B,
              ", S] (flattened), got ", stoch.sizes());
  TORCH_CHECK(action.dim() == 2 && action.size(0) == s.B, kOp, ": `action` must be [", s.B,
              ", A], got ", action.sizes());
  s.S = stoch.size(1);
  s.A = action.size(1);
  check_tensor("stoch", stoch, deter, stoch.sizes());
  check_tensor("action", action, deter, action.sizes());
  TORCH_CHECK(in_params.size() == 9, kOp,
              ": `in_params` must hold 9 tensors (W, b, scale for deter, stoch, action), got ",
              in_params.size());
  TORCH_CHECK(in_params[0].dim() == 2, kOp, ": `in_params[0]` must be [U, D]");
  s.U = in_params[0].size(0);
  const int64_t in_sizes[3] = {s.D, s.S, s.A};
  const char* names[9] = {"in_params[0] (deter weight)", "in_params[1]", "in_params[2]",
                          "in_params[3] (stoch weight)", "in_params[4]", "in_params[5]",
                          "in_params[6] (action weight)", "in_params[7]", "in_params[8]"};
  for (int i = 0; i < 3; ++i) {
    check_tensor(names[3 * i], in_params[3 * i], deter, {s.U, in_sizes[i]});
    check_tensor(names[3 * i + 1], in_params[3 * i + 1], deter, {s.U});
    check_tensor(names[3 * i + 2], in_params[3 * i + 2], deter, {s.U});
  }
  TORCH_CHECK(!hidden_params.empty() && hidden_params.size() % 3 == 0, kOp,
              ": `hidden_params` must hold 3 tensors (W, b, scale) per hidden layer, at least "
              "one layer, got ", hidden_params.size());
  s.L = static_cast<int64_t>(hidden_params.size() / 3);
  for (int64_t l = 0; l < s.L; ++l) {
    const int64_t in_g = l == 0 ? s.Dg + 3 * s.U : s.Dg;
    check_tensor("hidden_params (block weight)", hidden_params[3 * l], deter, {s.G, in_g, s.Dg});
    check_tensor("hidden_params (bias)", hidden_params[3 * l + 1], deter, {s.D});
    check_tensor("hidden_params (norm scale)", hidden_params[3 * l + 2], deter, {s.D});
  }
  check_tensor("gru_weight", gru_weight, deter, {s.G, s.Dg, 3 * s.Dg});
  check_tensor("gru_bias", gru_bias, deter, {3 * s.D});
  return s;
}

// The x rows of the first hidden layer's block weight as one [3U, D] matrix.
Tensor first_layer_x_weight(const Tensor& W1, const Shapes& s) {
  return W1.narrow(1, s.Dg, 3 * s.U).permute({1, 0, 2}).reshape({3 * s.U, s.D});
}

Tensor launch_gates(const Tensor& parts, const Tensor& deter, int64_t blocks) {
  Tensor hy = at::empty_like(deter, at::MemoryFormat::Contiguous);
  DF_DEVICE_LAUNCH(cells, block_gru_forward, deter, parts, deter, blocks, kUpdateBias, hy);
  return hy;
}

std::tuple<Tensor, std::vector<Tensor>> block_gru_cell(
    const Tensor& deter_in, const Tensor& stoch, const Tensor& action, at::TensorList in_params,
    at::TensorList hidden_params, const Tensor& gru_weight, const Tensor& gru_bias,
    int64_t blocks, int64_t act, double eps) {
  const Shapes s = check_args(deter_in, stoch, action, in_params, hidden_params, gru_weight,
                              gru_bias, blocks);
  TORCH_CHECK(eps > 0, kOp, ": `eps` must be > 0, got ", eps);
  const c10::OptionalDeviceGuard guard(deter_in.device());
  const Tensor deter = deter_in.contiguous();
  const int a = static_cast<int>(act);
  const Tensor an = action / action.abs().clamp_min(1.0);
  const Tensor inputs[3] = {deter, stoch, an};
  std::vector<Tensor> saved = {an};
  std::vector<Tensor> xs;
  for (int i = 0; i < 3; ++i) {
    dense::Forward f = dense::forward(
        inputs[i], rms_params(in_params[3 * i], in_params[3 * i + 1], in_params[3 * i + 2], a,
                              eps));
    xs.push_back(f.out);
    saved.push_back(f.z);
    saved.push_back(f.stats);
  }
  const Tensor x = at::cat(xs, 1);
  saved.push_back(x);
  Tensor h;
  for (int64_t l = 0; l < s.L; ++l) {
    const Tensor& W = hidden_params[3 * l];
    Tensor z;
    if (l == 0) {
      z = block_linear(deter, W.narrow(1, 0, s.Dg).contiguous());
      gemm::addmm_(z, x, first_layer_x_weight(W, s));
    } else {
      z = block_linear(h, W);
    }
    z.add_(hidden_params[3 * l + 1]);
    dense::Params p = rms_params(W, hidden_params[3 * l + 1], hidden_params[3 * l + 2], a, eps);
    dense::Forward f = dense::apply_epilogue(z, p);
    h = f.out;
    saved.push_back(f.out);
    saved.push_back(f.z);
    saved.push_back(f.stats);
  }
  Tensor parts = block_linear(h, gru_weight);
  parts.add_(gru_bias);
  saved.push_back(parts);
  return {launch_gates(parts, deter, blocks), saved};
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>, Tensor, Tensor>
block_gru_cell_backward(const Tensor& grad_deter, at::TensorList saved, const Tensor& deter_in,
                        const Tensor& stoch, const Tensor& action, at::TensorList in_params,
                        at::TensorList hidden_params, const Tensor& gru_weight,
                        const Tensor& gru_bias, int64_t blocks, int64_t act, double eps) {
  const Shapes s = check_args(deter_in, stoch, action, in_params, hidden_params, gru_weight,
                              gru_bias, blocks);
  TORCH_CHECK(static_cast<int64_t>(saved.size()) == 9 + 3 * s.L, kOp,
              "_backward: `saved` must hold ", 9 + 3 * s.L, " tensors, got ", saved.size());
  const c10::OptionalDeviceGuard guard(deter_in.device());
  const Tensor deter = deter_in.contiguous();
  const int a = static_cast<int>(act);
  const Tensor& an = saved[0];
  const Tensor& x = saved[7];
  const Tensor& parts = saved[8 + 3 * s.L];

  // Gates.
  Tensor dparts = at::empty_like(parts);
  Tensor d_deter = at::empty_like(deter);
  const Tensor g = grad_deter.contiguous();
  DF_DEVICE_LAUNCH(cells, block_gru_backward, deter, g, parts, deter, blocks, kUpdateBias, dparts,
                   d_deter);
  // GRU block linear.
  const Tensor h_last = saved[8 + 3 * (s.L - 1)];
  Tensor d_gru_bias = dparts.sum(0);
  auto [dh, d_gru_weight] = block_linear_backward(dparts, h_last, gru_weight, true);

  // Hidden layers, last to first.
  std::vector<Tensor> d_hidden(3 * s.L);
  Tensor dx;
  for (int64_t l = s.L - 1; l >= 0; --l) {
    const Tensor& W = hidden_params[3 * l];
    dense::Params p = rms_params(W, hidden_params[3 * l + 1], hidden_params[3 * l + 2], a, eps);
    dense::Forward f{saved[8 + 3 * l], saved[8 + 3 * l + 1], saved[8 + 3 * l + 2]};
    Tensor d_scale;
    Tensor dz = dense::backward_epilogue(dh, f, p, &d_scale, nullptr);
    d_hidden[3 * l + 1] = dz.sum(0);
    d_hidden[3 * l + 2] = d_scale;
    if (l == 0) {
      // z = block_linear(deter, W[:, :Dg]) + x Wx + b
      auto [d_deter_blk, dW_deter] =
          block_linear_backward(dz, deter, W.narrow(1, 0, s.Dg).contiguous(), true);
      d_deter.add_(d_deter_blk);
      dx = gemm::mm(dz, first_layer_x_weight(W, s).t());                  // [B, 3U]
      Tensor dWx = gemm::mm(x.t(), dz).reshape({3 * s.U, s.G, s.Dg}).permute({1, 0, 2});
      d_hidden[3 * l] = at::cat({dW_deter, dWx}, 1);
    } else {
      const Tensor h_prev = saved[8 + 3 * (l - 1)];
      auto [dh_prev, dW] = block_linear_backward(dz, h_prev, W, true);
      d_hidden[3 * l] = dW;
      dh = dh_prev;
    }
  }

  // Input layers.
  const Tensor inputs[3] = {deter, stoch, an};
  std::vector<Tensor> d_in(9);
  Tensor d_inputs[3];
  for (int i = 0; i < 3; ++i) {
    dense::Params p = rms_params(in_params[3 * i], in_params[3 * i + 1], in_params[3 * i + 2], a,
                                 eps);
    dense::Forward f{Tensor(), saved[1 + 2 * i], saved[2 + 2 * i]};
    dense::Grads gr = dense::backward(dx.narrow(1, i * s.U, s.U), inputs[i], f, p, true);
    d_in[3 * i] = gr.weight;
    d_in[3 * i + 1] = gr.bias;
    d_in[3 * i + 2] = gr.norm_weight;
    d_inputs[i] = gr.input;
  }
  d_deter.add_(d_inputs[0]);
  // a = action / max(1, |action|) with the divisor held constant.
  Tensor d_action = d_inputs[2] / action.abs().clamp_min(1.0);
  return {d_deter, d_inputs[1], d_action, d_in, d_hidden, d_gru_weight, d_gru_bias};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dreamer_fast, m) {
  // act: see linear_norm_act (1 = silu). All norms are RMSNorm with `eps`.
  m.def(
      "block_gru_cell(Tensor deter, Tensor stoch, Tensor action, Tensor[] in_params, "
      "Tensor[] hidden_params, Tensor gru_weight, Tensor gru_bias, int blocks, int act, "
      "float eps) -> (Tensor, Tensor[])");
  m.def(
      "block_gru_cell_backward(Tensor grad_deter, Tensor[] saved, Tensor deter, Tensor stoch, "
      "Tensor action, Tensor[] in_params, Tensor[] hidden_params, Tensor gru_weight, "
      "Tensor gru_bias, int blocks, int act, float eps) -> (Tensor, Tensor, Tensor, Tensor[], "
      "Tensor[], Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dreamer_fast, CPU, m) {
  m.impl("block_gru_cell", &block_gru_cell);
  m.impl("block_gru_cell_backward", &block_gru_cell_backward);
}

#ifdef DREAMER_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(dreamer_fast, CUDA, m) {
  m.impl("block_gru_cell", &block_gru_cell);
  m.impl("block_gru_cell_backward", &block_gru_cell_backward);
}
#endif

}  // namespace dreamer_fast
