// The recurrent-cell ops: GEMMs through gemm.h (cuBLAS / oneDNN / BLAS), everything pointwise
// or row-wise in one fused launch per direction (cells_launch.h, math in cells_math.h).
// The same functions serve CPU and CUDA tensors; only the launch differs.
//
// Autograd and fake kernels are registered from Python (dreamer_fast/ops/cells.py).
// The forward ops also return what their backward needs ("workspace"), which the
// Python wrappers do not expose.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "cells/cells_launch.h"
#include "common/device_launch.h"
#include "common/gemm.h"

namespace dreamer_fast {
namespace {

using at::Tensor;

void check_matrix(const char* op, const char* name, const Tensor& t, const Tensor& like,
                  int64_t rows, int64_t cols) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, op, ": `", name,
              "` must have shape [", rows, ", ", cols, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": `", name, "` has dtype ",
              t.scalar_type(), ", expected ", like.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": `", name, "` is on ", t.device(),
              ", expected ", like.device());
}

void check_vector(const char* op, const char* name, const Tensor& t, const Tensor& like,
                  int64_t size) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == size, op, ": `", name, "` must have shape [", size,
              "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": `", name, "` has dtype ",
              t.scalar_type(), ", expected ", like.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": `", name, "` is on ", t.device(),
              ", expected ", like.device());
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
  const int64_t B = input.size(0), I = input.size(1), H = hx.size(1);
  check_matrix(op, "weight_ih", w_ih, input, 3 * H, I);
  check_matrix(op, "weight_hh", w_hh, input, 3 * H, H);
  if (b_ih) check_vector(op, "bias_ih", *b_ih, input, 3 * H);
  if (b_hh) check_vector(op, "bias_hh", *b_hh, input, 3 * H);
  const c10::OptionalDeviceGuard guard(input.device());
  const Tensor gi = b_ih ? gemm::addmm(*b_ih, input, w_ih.t()) : gemm::mm(input, w_ih.t());
  const Tensor gh = b_hh ? gemm::addmm(*b_hh, hx, w_hh.t()) : gemm::mm(hx, w_hh.t());
  const Tensor h = hx.contiguous();
  Tensor hy = at::empty({B, H}, input.options());
  Tensor workspace = at::empty({B, 4 * H}, input.options());
  DF_DEVICE_LAUNCH(cells, gru_forward, input.device(), gi.contiguous(), gh.contiguous(), h, hy, workspace);
  return {hy, workspace};
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
  Tensor dgi = at::empty({B, 3 * H}, input.options());
  Tensor dgh = at::empty({B, 3 * H}, input.options());
  Tensor dh = at::empty({B, H}, input.options());
  DF_DEVICE_LAUNCH(cells, gru_backward, input.device(), grad_hy.contiguous(), workspace.contiguous(),
            hx.contiguous(), dgi, dgh, dh);
  Tensor dx = gemm::mm(dgi, w_ih);
  gemm::addmm_(dh, dgh, w_hh);
  Tensor dw_ih = gemm::mm(dgi.t(), input);
  Tensor dw_hh = gemm::mm(dgh.t(), hx);
  Tensor db_ih = dgi.sum(0);
  Tensor db_hh = dgh.sum(0);
  return {dx, dh, dw_ih, dw_hh, db_ih, db_hh};
}

// ---- LayerNorm GRU (DreamerV2) ------------------------------------------------------

void check_ln_gru(const char* op, const Tensor& input, const Tensor& hx, const Tensor& weight,
                  const Tensor& norm_weight, const Tensor& norm_bias) {
  check_input_and_state(op, input, hx);
  const int64_t I = input.size(1), H = hx.size(1);
  check_matrix(op, "weight", weight, input, 3 * H, I + H);
  check_vector(op, "norm_weight", norm_weight, input, 3 * H);
  check_vector(op, "norm_bias", norm_bias, input, 3 * H);
}

std::tuple<Tensor, Tensor, Tensor> ln_gru_cell(const Tensor& input, const Tensor& hx,
                                               const Tensor& weight, const Tensor& norm_weight,
                                               const Tensor& norm_bias, double update_bias,
                                               double eps) {
  const char* op = "ln_gru_cell";
  check_ln_gru(op, input, hx, weight, norm_weight, norm_bias);
  TORCH_CHECK(eps > 0, op, ": `eps` must be > 0, got ", eps);
  const int64_t B = input.size(0), H = hx.size(1);
  const c10::OptionalDeviceGuard guard(input.device());
  // parts = cat([x, h]) @ W.T as one GEMM (cheaper than two passes over the output)
  Tensor parts = gemm::mm(at::cat({input, hx}, 1), weight.t());
  Tensor hy = at::empty({B, H}, input.options());
  Tensor stats = at::empty({B, 2}, input.options().dtype(at::toOpMathType(input.scalar_type())));
  DF_DEVICE_LAUNCH(cells, ln_gru_forward, input.device(), parts, hx.contiguous(), norm_weight.contiguous(),
            norm_bias.contiguous(), eps, update_bias, hy, stats);
  return {hy, parts, stats};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> ln_gru_cell_backward(
    const Tensor& grad_hy, const Tensor& parts, const Tensor& stats, const Tensor& input,
    const Tensor& hx, const Tensor& weight, const Tensor& norm_weight, const Tensor& norm_bias,
    double update_bias) {
  const char* op = "ln_gru_cell_backward";
  check_ln_gru(op, input, hx, weight, norm_weight, norm_bias);
  const int64_t B = input.size(0), I = input.size(1), H = hx.size(1);
  check_matrix(op, "grad_hy", grad_hy, input, B, H);
  check_matrix(op, "parts", parts, input, B, 3 * H);
  const auto acc = at::toOpMathType(input.scalar_type());
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == B && stats.size(1) == 2 &&
                  stats.scalar_type() == acc && stats.device() == input.device(),
              op, ": `stats` must be [", B, ", 2] of ", acc, " on ", input.device(), ", got ",
              stats.sizes(), " ", stats.scalar_type());
  const c10::OptionalDeviceGuard guard(input.device());
  Tensor dy_sum = at::empty({3 * H}, input.options().dtype(acc));
  Tensor dy_xhat_sum = at::empty({3 * H}, input.options().dtype(acc));
  Tensor dparts = at::empty({B, 3 * H}, input.options());
  Tensor dh = at::empty({B, H}, input.options());
  DF_DEVICE_LAUNCH(cells, ln_gru_backward, input.device(), grad_hy.contiguous(), parts.contiguous(),
            hx.contiguous(), norm_weight.contiguous(), norm_bias.contiguous(),
            stats.contiguous(), update_bias, dy_sum, dy_xhat_sum, dparts, dh);
  const Tensor d_in = gemm::mm(dparts, weight);
  Tensor dx = d_in.narrow(1, 0, I).contiguous();
  dh.add_(d_in.narrow(1, I, H));
  Tensor dweight = gemm::mm(dparts.t(), at::cat({input, hx}, 1));
  Tensor dgamma = dy_xhat_sum.to(input.scalar_type());
  Tensor dbeta = dy_sum.to(input.scalar_type());
  return {dx, dh, dweight, dgamma, dbeta};
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
      "ln_gru_cell(Tensor input, Tensor hx, Tensor weight, Tensor norm_weight, "
      "Tensor norm_bias, float update_bias, float eps) -> (Tensor hy, Tensor parts, "
      "Tensor stats)");
  m.def(
      "ln_gru_cell_backward(Tensor grad_hy, Tensor parts, Tensor stats, Tensor input, "
      "Tensor hx, Tensor weight, Tensor norm_weight, Tensor norm_bias, float update_bias) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
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
