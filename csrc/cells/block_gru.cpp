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
// The forward and backward are the cells' (cells.cpp), shared with the sequence ops. The
// broadcast of x to every block is never materialised: the x rows of Wh1 are one
// [3U, D] GEMM. Saved for backward (the `saved` list): a, the (z, stats) of the three
// input layers, x, (out, z, stats) of every hidden layer, and parts.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "cells/cells.h"
#include "common/checks.h"
#include "common/grads.h"

namespace dreamer_fast {
namespace {

using at::Tensor;
constexpr const char* kOp = "block_gru_cell";

struct Shapes {
  int64_t B, D, G, Dg, U, S, A, L;
};

void check_tensor(const char* name, const Tensor& t, const Tensor& like,
                  at::IntArrayRef shape) {
  dreamer_fast::check_tensor(kOp, name, t, like, shape);
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

// The op's tensors as one parameter list in the cells' order (cells.h).
std::vector<Tensor> cell_params(at::TensorList in_params, at::TensorList hidden_params,
                                const Tensor& gru_weight, const Tensor& gru_bias) {
  std::vector<Tensor> P(in_params.begin(), in_params.end());
  P.insert(P.end(), hidden_params.begin(), hidden_params.end());
  P.push_back(gru_weight);
  P.push_back(gru_bias);
  return P;
}

cells::Cell block_gru(const Shapes& s, int64_t act, double eps) {
  cells::Cell c;
  c.kind = cells::kBlockGru;
  c.blocks = s.G;
  c.layers = s.L;
  c.act = static_cast<int>(act);
  c.eps = eps;
  return c;
}

// The op's saved list is the cell's without its state inputs (deter and stoch, which
// the backward gets as arguments).
constexpr int64_t kStateSlots = 2;

std::tuple<Tensor, std::vector<Tensor>> block_gru_cell(
    const Tensor& deter_in, const Tensor& stoch, const Tensor& action, at::TensorList in_params,
    at::TensorList hidden_params, const Tensor& gru_weight, const Tensor& gru_bias,
    int64_t blocks, int64_t act, double eps) {
  const Shapes s = check_args(deter_in, stoch, action, in_params, hidden_params, gru_weight,
                              gru_bias, blocks);
  TORCH_CHECK(eps > 0, kOp, ": `eps` must be > 0, got ", eps);
  const c10::OptionalDeviceGuard guard(deter_in.device());
  const std::vector<Tensor> P = cell_params(in_params, hidden_params, gru_weight, gru_bias);
  std::vector<Tensor> saved;
  Tensor hy = cells::forward(P, block_gru(s, act, eps), Tensor(), deter_in.contiguous(), stoch,
                             action, &saved);
  saved.erase(saved.begin(), saved.begin() + kStateSlots);
  return {hy, saved};
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>, Tensor, Tensor>
block_gru_cell_backward(const Tensor& grad_deter, at::TensorList saved, const Tensor& deter_in,
                        const Tensor& stoch, const Tensor& action, at::TensorList in_params,
                        at::TensorList hidden_params, const Tensor& gru_weight,
                        const Tensor& gru_bias, int64_t blocks, int64_t act, double eps) {
  const Shapes s = check_args(deter_in, stoch, action, in_params, hidden_params, gru_weight,
                              gru_bias, blocks);
  const cells::Cell c = block_gru(s, act, eps);
  const int64_t n_saved = cells::saved_count(c) - kStateSlots;
  TORCH_CHECK(static_cast<int64_t>(saved.size()) == n_saved, kOp, "_backward: `saved` must hold ",
              n_saved, " tensors, got ", saved.size());
  const c10::OptionalDeviceGuard guard(deter_in.device());
  const std::vector<Tensor> P = cell_params(in_params, hidden_params, gru_weight, gru_bias);
  std::vector<Tensor> sv{deter_in.contiguous(), stoch};
  sv.insert(sv.end(), saved.begin(), saved.end());
  ImmediateGrads g(P.size());
  const cells::InputGrads d = cells::backward(P, c, sv.data(), grad_deter, g);
  std::vector<Tensor> d_in, d_hidden;
  for (int64_t i = 0; i < 9; ++i) d_in.push_back(g.take(i));
  for (int64_t i = 0; i < 3 * s.L; ++i) d_hidden.push_back(g.take(9 + i));
  const int64_t wg = 9 + 3 * s.L;
  return {d.h, d.stoch, cells::action_grad(d.a, action), d_in, d_hidden, g.take(wg),
          g.take(wg + 1)};
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
