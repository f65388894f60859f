// The recurrent cells' forward and backward (see cells.h).
#include "cells/cells.h"

#include <ATen/OpMathType.h>

#include "cells/cells_launch.h"
#include "common/device_launch.h"
#include "common/gemm.h"
#include "dense/dense_math.h"

namespace dreamer_fast {
namespace cells {

namespace {

// The block GRU's update-gate bias is part of the reference model, not a parameter.
constexpr double kBlockUpdateBias = -1.0;

// y [B, G * out_g] = block-diagonal x [B, G * in_g] times W [G, in_g, out_g]
Tensor block_linear(const Tensor& x, const Tensor& W) {
  const int64_t B = x.size(0), G = W.size(0), in_g = W.size(1), out_g = W.size(2);
  return at::bmm(x.reshape({B, G, in_g}).transpose(0, 1), W).transpose(0, 1).reshape(
      {B, G * out_g});
}

// dx [B, G * in_g] of block_linear from dy [B, G * out_g]
Tensor block_linear_dx(const Tensor& dy, const Tensor& W) {
  const int64_t B = dy.size(0), G = W.size(0), in_g = W.size(1), out_g = W.size(2);
  return at::bmm(dy.reshape({B, G, out_g}).transpose(0, 1), W.transpose(1, 2))
      .transpose(0, 1)
      .reshape({B, G * in_g});
}

// The block GRU's layers are Linear -> RMSNorm -> act: W, b, scale at P[w], P[w+1], P[w+2].
dense::Layer rms_layer(int64_t w, const Cell& c) {
  dense::Layer r;
  r.w = w;
  r.b = w + 1;
  r.nw = w + 2;
  r.norm = layer::kRms;
  r.act = c.act;
  r.eps = c.eps;
  return r;
}

// P indices of the block GRU's tensors.
int64_t block_input_w(const Cell& c, int64_t i) { return c.first + 3 * i; }
int64_t block_hidden_w(const Cell& c, int64_t l) { return c.first + 9 + 3 * l; }
int64_t block_gru_w(const Cell& c) { return c.first + 9 + 3 * c.layers; }

// The rows of the first hidden block weight [G, Dg + 3U, Dg] that read xcat, as one
// [3U, D] matrix: the broadcast of xcat to every block is never materialised.
Tensor first_layer_x_weight(const Tensor& W1, int64_t Dg, int64_t U3, int64_t D) {
  return W1.narrow(1, Dg, U3).permute({1, 0, 2}).reshape({U3, D});
}

}  // namespace

int64_t Cell::param_count() const {
  switch (kind) {
    case kGru: return 2 + bias_ih + bias_hh;
    case kLnGru: return norm ? 3 : 1;
    case kBlockGru: return 9 + 3 * layers + 2;
  }
  return 0;
}

int64_t saved_count(const Cell& c) {
  if (c.kind == kGru) return 3;
  if (c.kind == kLnGru) return 4;
  return slot::block_parts(c.layers) + 1;
}

std::vector<int64_t> state_slots(const Cell& c) {
  if (c.kind == kBlockGru) return {slot::kBlockH, slot::kBlockStoch};
  return {slot::kH};
}

std::vector<int64_t> weight_input_slots(const Cell& c) {
  if (c.kind != kBlockGru) return {slot::kX};
  std::vector<int64_t> slots{slot::kBlockXcat};
  for (int64_t l = 0; l < c.layers; ++l) slots.push_back(slot::block_hidden_out(l));
  return slots;
}

Tensor scaled_action(const Tensor& action) { return action / action.abs().clamp_min(1.0); }
Tensor action_grad(const Tensor& d_a, const Tensor& action) {
  return d_a / action.abs().clamp_min(1.0);
}

Tensor forward(at::TensorList P, const Cell& c, const Tensor& x, const Tensor& h,
               const Tensor& stoch, const Tensor& action, std::vector<Tensor>* saved,
               const Tensor& out) {
  const int64_t f = c.first;
  const int64_t B = h.size(0), D = h.size(1);
  Tensor hy = out.defined() ? out : at::empty({B, D}, h.options());
  TORCH_INTERNAL_ASSERT(hy.is_contiguous() && hy.size(0) == B && hy.size(1) == D);
  const Tensor hc = h.contiguous();
  if (c.kind == kGru) {
    const int64_t b_ih = f + 2, b_hh = f + 2 + c.bias_ih;
    const Tensor gi = c.bias_ih ? gemm::addmm(P[b_ih], x, P[f].t()) : gemm::mm(x, P[f].t());
    const Tensor gh = c.bias_hh ? gemm::addmm(P[b_hh], h, P[f + 1].t()) : gemm::mm(h, P[f + 1].t());
    Tensor ws = at::empty({B, 4 * D}, h.options());
    DF_DEVICE_LAUNCH(cells, gru_forward, h, gi.contiguous(), gh.contiguous(), hc, hy, ws);
    if (saved) saved->insert(saved->end(), {x, h, ws});
    return hy;
  }
  if (c.kind == kLnGru) {
    // one GEMM on cat([x, h]) rather than two into the same output: at the small batch
    // of a posterior step the second pass over the output costs as much as the copy of
    // the inputs
    Tensor parts = gemm::mm(c.state_first ? at::cat({h, x}, 1) : at::cat({x, h}, 1), P[f].t());
    const auto acc = h.options().dtype(at::toOpMathType(h.scalar_type()));
    Tensor stats;
    if (c.norm) {
      stats = at::empty({B, 2}, acc);
      DF_DEVICE_LAUNCH(cells, ln_gru_forward, h, parts, hc, P[f + 1].contiguous(),
                       P[f + 2].contiguous(), c.eps, c.update_bias, hy, stats);
    } else {
      // Without the norm the gates are the block GRU's with one block, whose layout
      // (reset, cand, update) is this cell's: the same kernel, this cell's update bias.
      stats = at::empty({B, 0}, acc);
      DF_DEVICE_LAUNCH(cells, block_gru_forward, h, parts, hc, 1, c.update_bias, hy);
    }
    if (saved) saved->insert(saved->end(), {x, h, parts, stats});
    return hy;
  }
  // block GRU (see block_gru.cpp for the equations)
  const int64_t G = c.blocks, Dg = D / G, L = c.layers;
  const Tensor a = scaled_action(action);
  if (saved) saved->insert(saved->end(), {h, stoch, a});
  const Tensor inputs[3] = {hc, stoch, a};
  std::vector<Tensor> xs;
  for (int64_t i = 0; i < 3; ++i) {
    const dense::Forward fw =
        dense::forward(inputs[i], dense::layer_params(P, rms_layer(block_input_w(c, i), c)));
    xs.push_back(fw.out);
    if (saved) saved->insert(saved->end(), {fw.z, fw.stats});
  }
  const Tensor xcat = at::cat(xs, 1);
  const int64_t U3 = xcat.size(1);
  if (saved) saved->push_back(xcat);
  Tensor hid;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t w = block_hidden_w(c, l);
    const Tensor& W = P[w];
    Tensor z;
    if (l == 0) {
      z = block_linear(hc, W.narrow(1, 0, Dg));
      gemm::addmm_(z, xcat, first_layer_x_weight(W, Dg, U3, D));
    } else {
      z = block_linear(hid, W);
    }
    z.add_(P[w + 1]);
    const dense::Forward fw = dense::apply_epilogue(z, dense::layer_params(P, rms_layer(w, c)));
    hid = fw.out;
    if (saved) saved->insert(saved->end(), {fw.out, fw.z, fw.stats});
  }
  const int64_t wg = block_gru_w(c);
  Tensor parts = block_linear(hid, P[wg]);
  parts.add_(P[wg + 1]);
  if (saved) saved->push_back(parts);
  DF_DEVICE_LAUNCH(cells, block_gru_forward, h, parts, hc, G, kBlockUpdateBias, hy);
  return hy;
}

InputGrads backward(at::TensorList P, const Cell& c, const Tensor* sv, const Tensor& d_out_in,
                    GradSink& g) {
  const int64_t f = c.first;
  const Tensor d_out = d_out_in.contiguous();
  InputGrads r;
  if (c.kind == kGru) {
    const Tensor &x = sv[slot::kX], &h = sv[slot::kH];
    const Tensor ws = sv[slot::kWorkspace].contiguous(), hc = h.contiguous();
    const int64_t B = h.size(0), H = h.size(1);
    Tensor dgi = at::empty({B, 3 * H}, h.options()), dgh = at::empty({B, 3 * H}, h.options());
    Tensor dh = at::empty({B, H}, h.options());
    DF_DEVICE_LAUNCH(cells, gru_backward, h, d_out, ws, hc, dgi, dgh, dh);
    r.x = gemm::mm(dgi, P[f]);
    gemm::addmm_(dh, dgh, P[f + 1]);
    r.h = dh;
    g.mm(f, dgi, x);
    g.mm(f + 1, dgh, h);
    if (c.bias_ih) g.rowsum(f + 2, dgi);
    if (c.bias_hh) g.rowsum(f + 2 + c.bias_ih, dgh);
    return r;
  }
  if (c.kind == kLnGru) {
    const Tensor &x = sv[slot::kX], &h = sv[slot::kH];
    const Tensor parts = sv[slot::kParts].contiguous();
    // I from the weight, not from x: x is an empty placeholder when the forward kept no
    // inputs for weight gradients (only the sink reads it)
    const int64_t B = h.size(0), H = h.size(1), I = P[f].size(1) - H;
    Tensor dparts = at::empty({B, 3 * H}, h.options());
    Tensor dh = at::empty({B, H}, h.options());
    if (c.norm) {
      const Tensor stats = sv[slot::kStats].contiguous();
      const auto acc = at::toOpMathType(h.scalar_type());
      Tensor dy_sum = at::empty({3 * H}, h.options().dtype(acc));
      Tensor dy_xhat_sum = at::empty({3 * H}, h.options().dtype(acc));
      DF_DEVICE_LAUNCH(cells, ln_gru_backward, h, d_out, parts, h.contiguous(),
                       P[f + 1].contiguous(), P[f + 2].contiguous(), stats, c.update_bias,
                       dy_sum, dy_xhat_sum, dparts, dh);
      g.add(f + 1, dy_xhat_sum.to(h.scalar_type()));
      g.add(f + 2, dy_sum.to(h.scalar_type()));
    } else {
      DF_DEVICE_LAUNCH(cells, block_gru_backward, h, d_out, parts, h.contiguous(), 1,
                       c.update_bias, dparts, dh);
    }
    const Tensor d_in = gemm::mm(dparts, P[f]);  // [B, I + H] in one GEMM
    // the input's and the state's columns: cat(x, h), or cat(h, x) with state_first
    const int64_t x0 = c.state_first ? H : 0, h0 = c.state_first ? 0 : I;
    r.x = d_in.narrow(1, x0, I);
    dh.add_(d_in.narrow(1, h0, H));
    r.h = dh;
    g.mm(f, dparts, x, x0);
    g.mm(f, dparts, h, h0);
    return r;
  }
  // block GRU
  const int64_t L = c.layers;
  const Tensor &h = sv[slot::kBlockH], &stoch = sv[slot::kBlockStoch], &a = sv[slot::kBlockA];
  const Tensor& xcat = sv[slot::kBlockXcat];
  const Tensor& parts = sv[slot::block_parts(L)];
  const Tensor hc = h.contiguous();
  const int64_t B = h.size(0), D = h.size(1), G = c.blocks, Dg = D / G;
  // widths from the weights: xcat and the hidden outputs are empty placeholders when
  // the forward kept no inputs for weight gradients (only the sink reads them)
  const int64_t U = P[block_input_w(c, 0)].size(0), U3 = 3 * U;
  Tensor dparts = at::empty_like(parts);
  Tensor dh0 = at::empty({B, D}, h.options());
  DF_DEVICE_LAUNCH(cells, block_gru_backward, h, d_out, parts, hc, G, kBlockUpdateBias, dparts,
                   dh0);
  const int64_t wg = block_gru_w(c);
  g.rowsum(wg + 1, dparts);
  g.block(wg, dparts, sv[slot::block_hidden_out(L - 1)], G);
  Tensor dhid = block_linear_dx(dparts, P[wg]);
  Tensor dx;
  for (int64_t l = L - 1; l >= 0; --l) {
    const int64_t w = block_hidden_w(c, l);
    const dense::LayerSaved ls{Tensor(), sv[slot::block_hidden_z(l)],
                               sv[slot::block_hidden_stats(l)]};
    const Tensor dz = dense::layer_backward_dz(P, rms_layer(w, c), ls, dhid, g);
    g.rowsum(w + 1, dz);
    const Tensor& W = P[w];
    if (l == 0) {
      g.block(w, dz, hc, G, 0);
      dh0.add_(block_linear_dx(dz, W.narrow(1, 0, Dg)));
      g.block_x(w, dz, xcat, G, Dg);
      dx = gemm::mm(dz, first_layer_x_weight(W, Dg, U3, D).t());  // [B, 3U]
    } else {
      g.block(w, dz, sv[slot::block_hidden_out(l - 1)], G);
      dhid = block_linear_dx(dz, W);
    }
  }
  const Tensor inputs[3] = {hc, stoch, a};
  Tensor d_inputs[3];
  for (int64_t i = 0; i < 3; ++i) {
    const dense::LayerSaved ls{inputs[i], sv[slot::block_input_z(i)],
                               sv[slot::block_input_stats(i)]};
    d_inputs[i] = dense::layer_backward(P, rms_layer(block_input_w(c, i), c), ls,
                                        dx.narrow(1, i * U, U), g, true);
  }
  dh0.add_(d_inputs[0]);
  r.h = dh0;
  r.stoch = d_inputs[1];
  r.a = d_inputs[2];
  return r;
}

}  // namespace cells
}  // namespace dreamer_fast
