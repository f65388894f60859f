// The single-step GRU ops gru_cell and ln_gru_cell: argument checks around the cells'
// one implementation (cells.h), which the sequence ops share. The same functions serve
// CPU and CUDA tensors; only the launch differs.
//
// Autograd and fake kernels are registered from Python (dreamer_fast/ops/cells.py).
// The forward ops also return what their backward needs ("workspace"), which the
// Python wrappers do not expose.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "cells/cells.h"
#include "common/checks.h"
#include "common/grads.h"

namespace dreamer_fast {
namespace {

using at::Tensor;

void check_matrix(const char* op, const char* name, const Tensor& t, const Tensor& like,
                  int64_t rows, int64_t cols) {
  check_tensor(op, name, t, like, {rows, cols});
}

void check_vector(const char* op, const char* name, const Tensor& t, const Tensor& like,
                  int64_t size) {
  check_tensor(op, name, t, like, {size});
}

void check_input_and_state(const char* op, const Tensor& input, const Tensor& hx) {
  TORCH_CHECK(input.dim() == 2, op, ": `input` must be 2-D [B, I], got ", input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op,
              ": `input` must be a floating-point tensor, got ", input.scalar_type());
  TORCH_CHECK(hx.dim() == 2 && hx.size(0) == input.size(0), op, ": `hx` must have shape [",
              input.size(0), ", H], got ", hx.sizes());
  check_matrix(op, "hx", hx, input, input.size(0), hx.size(1));
}

// ---- torch.nn.GRUCell -------------------------------------------------------------

std::tuple<Tensor, Tensor> gru_cell(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                    const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                    const std::optional<Tensor>& b_hh) {
  const char* op = "gru_cell";
  check_input_and_state(op, input, hx);
  const int64_t I = input.size(1), H = hx.size(1);
  check_matrix(op, "weight_ih", w_ih, input, 3 * H, I);
  check_matrix(op, "weight_hh", w_hh, input, 3 * H, H);
  if (b_ih) check_vector(op, "bias_ih", *b_ih, input, 3 * H);
  if (b_hh) check_vector(op, "bias_hh", *b_hh, input, 3 * H);
  const c10::OptionalDeviceGuard guard(input.device());
  std::vector<Tensor> P{w_ih, w_hh};  // then the biases that are present
  if (b_ih) P.push_back(*b_ih);
  if (b_hh) P.push_back(*b_hh);
  cells::Cell c;
  c.kind = cells::kGru;
  c.bias_ih = b_ih.has_value();
  c.bias_hh = b_hh.has_value();
  std::vector<Tensor> saved;
  Tensor hy = cells::forward(P, c, input, hx, Tensor(), Tensor(), &saved);
  return {hy, saved[cells::slot::kWorkspace]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_cell_backward(
    const Tensor& grad_hy, const Tensor& workspace, const Tensor& input, const Tensor& hx,
    const Tensor& w_ih, const Tensor& w_hh) {
  const char* op = "gru_cell_backward";
  check_input_and_state(op, input, hx);
  const int64_t B = input.size(0), I = input.size(1), H = hx.size(1);
  check_matrix(op, "grad_hy", grad_hy, input, B, H);
  check_matrix(op, "workspace", workspace, input, B, 4 * H);
  check_matrix(op, "weight_ih", w_ih, input, 3 * H, I);
  check_matrix(op, "weight_hh", w_hh, input, 3 * H, H);
  const c10::OptionalDeviceGuard guard(input.device());
  // the op returns both bias gradients whether or not the forward had the biases (the
  // backward reads no bias: they stay undefined here)
  const std::vector<Tensor> P{w_ih, w_hh, Tensor(), Tensor()};
  cells::Cell c;
  c.kind = cells::kGru;
  const Tensor saved[3] = {input, hx, workspace};
  ImmediateGrads g(P.size());
  const cells::InputGrads d = cells::backward(P, c, saved, grad_hy, g);
  return {d.x, d.h, g.take(0), g.take(1), g.take(2), g.take(3)};
}

// ---- LayerNorm GRU (DreamerV2) ------------------------------------------------------

cells::Cell ln_gru(double eps, double update_bias, bool norm, bool state_first) {
  cells::Cell c;
  c.kind = cells::kLnGru;
  c.eps = eps;
  c.update_bias = update_bias;
  c.norm = norm;
  c.state_first = state_first;
  return c;
}

// Both norm tensors or neither (the GRU without its LayerNorm). Returns whether the
// cell has the norm.
bool check_ln_gru(const char* op, const Tensor& input, const Tensor& hx, const Tensor& weight,
                  const std::optional<Tensor>& norm_weight,
                  const std::optional<Tensor>& norm_bias) {
  check_input_and_state(op, input, hx);
  const int64_t I = input.size(1), H = hx.size(1);
  check_matrix(op, "weight", weight, input, 3 * H, I + H);
  const bool has_w = norm_weight.has_value() && norm_weight->defined();
  const bool has_b = norm_bias.has_value() && norm_bias->defined();
  TORCH_CHECK(has_w == has_b, op, ": `norm_weight` and `norm_bias` must both be given (the "
              "LayerNorm) or both be None (no norm)");
  if (has_w) {
    check_vector(op, "norm_weight", *norm_weight, input, 3 * H);
    check_vector(op, "norm_bias", *norm_bias, input, 3 * H);
  }
  return has_w;
}

std::vector<Tensor> ln_gru_params(const Tensor& weight, bool norm,
                                  const std::optional<Tensor>& norm_weight,
                                  const std::optional<Tensor>& norm_bias) {
  if (!norm) return {weight};
  return {weight, *norm_weight, *norm_bias};
}

std::tuple<Tensor, Tensor, Tensor> ln_gru_cell(const Tensor& input, const Tensor& hx,
                                               const Tensor& weight,
                                               const std::optional<Tensor>& norm_weight,
                                               const std::optional<Tensor>& norm_bias,
                                               double update_bias, double eps,
                                               bool state_first) {
  const char* op = "ln_gru_cell";
  const bool norm = check_ln_gru(op, input, hx, weight, norm_weight, norm_bias);
  TORCH_CHECK(eps > 0, op, ": `eps` must be > 0, got ", eps);
  const c10::OptionalDeviceGuard guard(input.device());
  const std::vector<Tensor> P = ln_gru_params(weight, norm, norm_weight, norm_bias);
  const cells::Cell c = ln_gru(eps, update_bias, norm, state_first);
  std::vector<Tensor> saved;
  Tensor hy = cells::forward(P, c, input, hx, Tensor(), Tensor(), &saved);
  return {hy, saved[cells::slot::kParts], saved[cells::slot::kStats]};
}

// Without the norm, the norm gradients are empty [0] tensors (None in Python).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> ln_gru_cell_backward(
    const Tensor& grad_hy, const Tensor& parts, const Tensor& stats, const Tensor& input,
    const Tensor& hx, const Tensor& weight, const std::optional<Tensor>& norm_weight,
    const std::optional<Tensor>& norm_bias, double update_bias, bool state_first) {
  const char* op = "ln_gru_cell_backward";
  const bool norm = check_ln_gru(op, input, hx, weight, norm_weight, norm_bias);
  const int64_t B = input.size(0), H = hx.size(1);
  check_matrix(op, "grad_hy", grad_hy, input, B, H);
  check_matrix(op, "parts", parts, input, B, 3 * H);
  const auto acc = at::toOpMathType(input.scalar_type());
  const int64_t n_stats = norm ? 2 : 0;
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == B && stats.size(1) == n_stats &&
                  stats.scalar_type() == acc && stats.device() == input.device(),
              op, ": `stats` must be [", B, ", ", n_stats, "] of ", acc, " on ", input.device(),
              ", got ", stats.sizes(), " ", stats.scalar_type());
  const c10::OptionalDeviceGuard guard(input.device());
  const std::vector<Tensor> P = ln_gru_params(weight, norm, norm_weight, norm_bias);
  // the backward reads no eps (stats hold rstd)
  const cells::Cell c = ln_gru(1e-3, update_bias, norm, state_first);
  const Tensor saved[4] = {input, hx, parts, stats};
  ImmediateGrads g(P.size());
  const cells::InputGrads d = cells::backward(P, c, saved, grad_hy, g);
  if (!norm) {
    const Tensor none = at::empty({0}, input.options());
    return {d.x.contiguous(), d.h, g.take(0), none, none.clone()};
  }
  return {d.x.contiguous(), d.h, g.take(0), g.take(1), g.take(2)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dreamer_fast, m) {
  // All cell ops take 2-D [B, features] tensors; the Python wrappers flatten batch dims.
  m.def(
      "gru_cell(Tensor input, Tensor hx, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
      "Tensor? bias_hh) -> (Tensor hy, Tensor workspace)");
  m.def(
      "gru_cell_backward(Tensor grad_hy, Tensor workspace, Tensor input, Tensor hx, "
      "Tensor weight_ih, Tensor weight_hh) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "ln_gru_cell(Tensor input, Tensor hx, Tensor weight, Tensor? norm_weight, "
      "Tensor? norm_bias, float update_bias, float eps, bool state_first=False) -> "
      "(Tensor hy, Tensor parts, Tensor stats)");
  m.def(
      "ln_gru_cell_backward(Tensor grad_hy, Tensor parts, Tensor stats, Tensor input, "
      "Tensor hx, Tensor weight, Tensor? norm_weight, Tensor? norm_bias, float update_bias, "
      "bool state_first=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dreamer_fast, CPU, m) {
  m.impl("gru_cell", &gru_cell);
  m.impl("gru_cell_backward", &gru_cell_backward);
  m.impl("ln_gru_cell", &ln_gru_cell);
  m.impl("ln_gru_cell_backward", &ln_gru_cell_backward);
}

#ifdef DREAMER_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(dreamer_fast, CUDA, m) {
  m.impl("gru_cell", &gru_cell);
  m.impl("gru_cell_backward", &gru_cell_backward);
  m.impl("ln_gru_cell", &ln_gru_cell);
  m.impl("ln_gru_cell_backward", &ln_gru_cell_backward);
}
#endif

}  // namespace dreamer_fast
