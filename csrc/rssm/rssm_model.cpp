// RSSM / actor building blocks (see rssm_model.h).
#include "rssm/rssm_model.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "cells/cells_launch.h"
#include "common/device_launch.h"
#include "common/gemm.h"
#include "dense/dense_math.h"
#include "heads/heads_launch.h"

namespace dreamer_fast {
namespace rssm {

namespace {

// Reads the (has_bias, norm, act) triples of `n` dense layers, assigning tensor indices.
std::vector<DenseRef> read_layers(const char* op, at::IntArrayRef ints, size_t& pos, int64_t n,
                                  int64_t& next_tensor, double eps) {
  std::vector<DenseRef> layers;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(pos + 3 <= ints.size(), op, ": `spec` is too short for its layers");
    DenseRef r;
    const bool has_bias = ints[pos] != 0;
    r.norm = static_cast<int>(ints[pos + 1]);
    r.act = static_cast<int>(ints[pos + 2]);
    r.eps = eps;
    pos += 3;
    TORCH_CHECK(r.norm >= layer::kNone && r.norm <= layer::kRms, op, ": unknown norm code ",
                r.norm);
    TORCH_CHECK(r.act >= layer::kIdentity && r.act <= layer::kSigmoid, op,
                ": unknown act code ", r.act);
    r.w = next_tensor++;
    if (has_bias) r.b = next_tensor++;
    if (r.norm != layer::kNone) r.nw = next_tensor++;
    if (r.norm == layer::kLayer) r.nb = next_tensor++;
    layers.push_back(r);
  }
  return layers;
}

void check_params(const char* op, at::TensorList params, int64_t expected) {
  TORCH_CHECK(static_cast<int64_t>(params.size()) == expected, op, ": expected ", expected,
              " parameter tensors for this spec, got ", params.size());
  for (size_t i = 1; i < params.size(); ++i) {
    TORCH_CHECK(params[i].scalar_type() == params[0].scalar_type() &&
                    params[i].device() == params[0].device(),
                op, ": parameter ", i, " is ", params[i].scalar_type(), " on ",
                params[i].device(), ", parameter 0 is ", params[0].scalar_type(), " on ",
                params[0].device());
  }
}

// The row concatenation of 2-D pieces. Pieces that are consecutive row blocks of one
// contiguous buffer (per-step slices of a [T, B, F] sequence buffer) come back as one
// view of that buffer, without a copy.
Tensor cat_rows(const std::vector<Tensor>& ts) {
  if (ts.size() == 1) return ts[0];
  const Tensor& first = ts[0];
  bool adjacent = first.dim() == 2 && first.is_contiguous();
  int64_t rows = 0;
  for (size_t i = 0; adjacent && i < ts.size(); ++i) {
    const Tensor& t = ts[i];
    adjacent = t.dim() == 2 && t.is_contiguous() && t.size(1) == first.size(1) &&
               t.is_alias_of(first) &&
               t.storage_offset() == first.storage_offset() + rows * first.size(1);
    rows += t.size(0);
  }
  if (adjacent) return first.as_strided({rows, first.size(1)}, {first.size(1), 1});
  return at::cat(ts);
}

// The column concatenation of 2-D pieces [C, n_i]. Pieces that are consecutive column
// blocks of one row-major buffer (the steps of a transposed sequence buffer [C, T·B])
// come back as one view of that buffer, without a copy.
Tensor cat_cols(const std::vector<Tensor>& ts) {
  if (ts.size() == 1) return ts[0];
  const Tensor& first = ts[0];
  bool adjacent = first.dim() == 2 && first.stride(1) == 1;
  int64_t cols = 0;
  for (size_t i = 0; adjacent && i < ts.size(); ++i) {
    const Tensor& t = ts[i];
    adjacent = t.dim() == 2 && t.stride(1) == 1 && t.size(0) == first.size(0) &&
               t.stride(0) == first.stride(0) && t.is_alias_of(first) &&
               t.storage_offset() == first.storage_offset() + cols;
    cols += t.size(1);
  }
  if (adjacent) return first.as_strided({first.size(0), cols}, {first.stride(0), 1});
  return at::cat(ts, 1);
}

}  // namespace

Spec parse_rssm(const char* op, at::TensorList params, at::IntArrayRef ints,
                at::ArrayRef<double> floats) {
  TORCH_CHECK(ints.size() >= 10, op, ": `spec` must start with 10 ints, got ", ints.size());
  TORCH_CHECK(floats.size() == 5, op, ": `fspec` must hold 5 floats, got ", floats.size());
  Spec s;
  s.cell = static_cast<int>(ints[0]);
  s.classes = ints[1];
  s.stoch = ints[2];
  s.blocks = ints[3];
  s.dynlayers = ints[4];
  s.cell_act = static_cast<int>(ints[5]);
  s.cell_bias = ints[6] != 0;
  TORCH_CHECK(s.cell >= kGru && s.cell <= kBlockGru, op, ": unknown cell code ", s.cell);
  TORCH_CHECK(s.stoch >= 1 && s.classes >= 0 && s.blocks >= 1 && s.dynlayers >= 1, op,
              ": bad latent/block sizes in `spec`");
  const double eps = floats[0];
  s.cell_eps = floats[1];
  s.update_bias = floats[2];
  s.unimix = floats[3];
  s.min_std = floats[4];
  size_t pos = 10;
  int64_t next = 0;
  s.img_in = read_layers(op, ints, pos, ints[7], next, eps);
  TORCH_CHECK((s.cell == kBlockGru) == s.img_in.empty(), op,
              ": gru/ln_gru cells need one input layer, block_gru none");
  s.cell_first = next;
  if (s.cell == kGru) next += s.cell_bias ? 4 : 2;
  if (s.cell == kLnGru) next += 3;
  if (s.cell == kBlockGru) next += 9 + 3 * s.dynlayers + 2;
  s.img_out = read_layers(op, ints, pos, ints[8], next, eps);
  s.obs_out = read_layers(op, ints, pos, ints[9], next, eps);
  TORCH_CHECK(!s.img_out.empty() && !s.obs_out.empty(), op,
              ": the prior and posterior MLPs need at least their output layer");
  TORCH_CHECK(pos == ints.size(), op, ": `spec` has ", ints.size() - pos, " trailing ints");
  check_params(op, params, next);
  return s;
}

ActorSpec parse_actor(const char* op, at::TensorList params, at::IntArrayRef ints,
                      at::ArrayRef<double> floats) {
  TORCH_CHECK(ints.size() >= 3, op, ": `actor_spec` must start with 3 ints, got ", ints.size());
  TORCH_CHECK(floats.size() == 6, op, ": `actor_fspec` must hold 6 floats, got ",
              floats.size());
  ActorSpec a;
  a.head = static_cast<int>(ints[0]);
  a.actions = ints[1];
  TORCH_CHECK(a.head >= kTanhNormal && a.head <= kCategorical, op, ": unknown actor head ",
              a.head);
  size_t pos = 3;
  int64_t next = 0;
  a.layers = read_layers(op, ints, pos, ints[2], next, floats[0]);
  TORCH_CHECK(!a.layers.empty(), op, ": the actor needs at least its output layer");
  TORCH_CHECK(pos == ints.size(), op, ": `actor_spec` has trailing ints");
  check_params(op, params, next);
  a.min_std = floats[1];
  a.max_std = floats[2];
  a.std_offset = floats[3];
  a.mean_scale = floats[4];
  a.unimix = floats[5];
  return a;
}

// ---- layout ----------------------------------------------------------------------------

void copy_transposed(const Tensor& dst, const Tensor& src) {
  TORCH_INTERNAL_ASSERT(src.dim() == 2 && dst.dim() == 2 && dst.size(0) == src.size(1) &&
                        dst.size(1) == src.size(0));
  const bool blocked = src.device().is_cpu() && dst.device().is_cpu() && src.is_contiguous() &&
                       dst.stride(1) == 1 && src.scalar_type() == dst.scalar_type() &&
                       (src.scalar_type() == at::kFloat || src.scalar_type() == at::kDouble);
  if (!blocked) {
    dst.copy_(src.t());
    return;
  }
  RECORD_FUNCTION("dreamer_fast::launch::copy_transposed", std::vector<c10::IValue>());
  const int64_t R = src.size(0), C = src.size(1), ld = dst.stride(0);
  // kTile x kTile tiles: a tile's source rows stay in L1 while its columns are written
  // out as contiguous destination rows. ATen's copy of the transposed view walks whole
  // source columns instead (debug rollout, the actor's 45 transposes per backward:
  // 2.1 ms with ATen's copy, 1.4 ms tiled).
  constexpr int64_t kTile = 16;
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "copy_transposed", [&] {
    const scalar_t* s = src.const_data_ptr<scalar_t>();
    scalar_t* d = dst.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, (R + kTile - 1) / kTile, 16, [&](int64_t t0, int64_t t1) {
      for (int64_t r0 = t0 * kTile; r0 < std::min(R, t1 * kTile); r0 += kTile) {
        const int64_t r1 = std::min(R, r0 + kTile);
        for (int64_t c0 = 0; c0 < C; c0 += kTile) {
          const int64_t c1 = std::min(C, c0 + kTile);
          for (int64_t c = c0; c < c1; ++c)
            for (int64_t r = r0; r < r1; ++r) d[c * ld + r] = s[r * C + c];
        }
      }
    });
  });
}

// ---- Grads ---------------------------------------------------------------------------

Tensor& Grads::dst(int64_t idx) {
  if (!out_[idx].defined()) out_[idx] = at::zeros_like(params_[idx]);
  return out_[idx];
}

void Grads::record(int64_t idx, Kind kind, int64_t off, const Tensor& a, const Tensor& b,
                   int64_t G) {
  if (!wanted_) return;
  Entry& e = entries_[{idx, kind, off}];
  e.a.push_back(a);
  if (b.defined()) e.b.push_back(b);
  e.G = G;
}

void Grads::accumulate(Tensor& dst, Kind kind, int64_t off, const Tensor& a, const Tensor& b,
                       int64_t G) {
  switch (kind) {
    case kMm: {
      const Tensor g = gemm::mm(a.t(), b);  // [N, cols]
      dst.narrow(1, off, g.size(1)).add_(g);
      break;
    }
    case kRowSum:
      dst.add_(a.sum(0));
      break;
    case kMmT: {  // a = dz^T [N, rows]
      const Tensor g = gemm::mm(a, b);
      dst.narrow(1, off, g.size(1)).add_(g);
      break;
    }
    case kRowSumT:
      dst.add_(a.sum(1));
      break;
    case kBlock: {
      const int64_t R = a.size(0);
      const Tensor dyb = a.reshape({R, G, -1}).transpose(0, 1);
      const Tensor xb = b.reshape({R, G, -1}).transpose(0, 1);
      const Tensor g = at::bmm(xb.transpose(1, 2), dyb);  // [G, in_g, out_g]
      dst.narrow(1, off, g.size(1)).add_(g);
      break;
    }
    case kBlockX: {
      const int64_t rows = b.size(1);
      const Tensor g = gemm::mm(b.t(), a).reshape({rows, G, -1}).permute({1, 0, 2});
      dst.narrow(1, off, rows).add_(g);
      break;
    }
  }
}

void Grads::mm(int64_t idx, const Tensor& dz, const Tensor& x, int64_t col0) {
  record(idx, kMm, col0, dz, x, 1);
}

void Grads::rowsum(int64_t idx, const Tensor& dz) { record(idx, kRowSum, 0, dz, Tensor(), 1); }

void Grads::mm_t(int64_t idx, const Tensor& dzT, const Tensor& x, int64_t col0) {
  record(idx, kMmT, col0, dzT, x, 1);
}

void Grads::rowsum_t(int64_t idx, const Tensor& dzT) {
  record(idx, kRowSumT, 0, dzT, Tensor(), 1);
}

void Grads::block(int64_t idx, const Tensor& dy, const Tensor& x, int64_t G, int64_t row0) {
  record(idx, kBlock, row0, dy, x, G);
}

void Grads::block_x(int64_t idx, const Tensor& dz, const Tensor& x, int64_t G, int64_t row0) {
  record(idx, kBlockX, row0, dz, x, G);
}

void Grads::add(int64_t idx, const Tensor& g) {
  // a finished gradient (norm weights): nothing to concatenate, add at once
  if (wanted_) dst(idx).add_(g);
}

std::vector<Tensor> Grads::finish() {
  TORCH_INTERNAL_ASSERT(wanted_, "Grads::finish on gradients nobody wanted");
  // One dz list often feeds several products in a row (the column blocks of one weight,
  // then its bias: the map orders a weight's entries before its bias's): it is
  // concatenated once and, for oneDNN, transposed once.
  struct Shared {
    const void* first = nullptr;
    size_t n = 0;
    Tensor rows, rows_t;
  } shared;
  for (auto& [key, e] : entries_) {
    const auto [idx, kind, off] = key;
    // Backward passes record their steps last-to-first; in first-to-last order the
    // saved inputs that are steps of one forward buffer are adjacent row blocks, which
    // cat_rows then reads as one view. (Both lists flip together: pairs stay matched.)
    std::reverse(e.a.begin(), e.a.end());
    std::reverse(e.b.begin(), e.b.end());
    const void* first = e.a.front().unsafeGetTensorImpl();
    const bool transposed = kind == kMmT || kind == kRowSumT;
    if (first != shared.first || e.a.size() != shared.n)
      shared = {first, e.a.size(), transposed ? cat_cols(e.a) : cat_rows(e.a)};
    Tensor a = shared.rows;
    const Tensor b = e.b.empty() ? Tensor() : cat_rows(e.b);
    if (kind == kMm && gemm::uses_onednn(a.t(), b)) {
      if (!shared.rows_t.defined()) shared.rows_t = a.t().contiguous();
      a = shared.rows_t.t();  // its transpose, the product's left operand, is contiguous
    }
    accumulate(dst(idx), static_cast<Kind>(kind), off, a, b, e.G);
  }
  entries_.clear();
  for (size_t i = 0; i < params_.size(); ++i) dst(static_cast<int64_t>(i));
  return std::move(out_);
}

// ---- dense layers -----------------------------------------------------------------

dense::Params layer_params(at::TensorList P, const DenseRef& r) {
  dense::Params p;
  p.weight = P[r.w];
  if (r.b >= 0) p.bias = P[r.b];
  if (r.nw >= 0) p.norm_weight = P[r.nw];
  if (r.nb >= 0) p.norm_bias = P[r.nb];
  p.norm = r.norm;
  p.act = r.act;
  p.eps = r.eps;
  return p;
}

Tensor layer_forward(at::TensorList P, const DenseRef& r, const Tensor& x,
                     std::vector<Tensor>* saved, const Tensor& out) {
  const dense::Forward f = dense::forward(x, layer_params(P, r), out);
  if (saved) saved->insert(saved->end(), {x, f.z, f.stats});
  return f.out;
}

Tensor layer_epilogue(at::TensorList P, const DenseRef& r, const Tensor& z, const Tensor& x,
                      std::vector<Tensor>* saved, const Tensor& out) {
  const dense::Forward f = dense::apply_epilogue(z, layer_params(P, r), out);
  if (saved) saved->insert(saved->end(), {x, f.z, f.stats});
  return f.out;
}

Tensor layer_backward_dz(at::TensorList P, const DenseRef& r, const LayerSaved& s,
                         const Tensor& dout, Grads& g) {
  const dense::Params p = layer_params(P, r);
  const dense::Forward f{Tensor(), s.z, s.stats};
  Tensor dnw, dnb;
  Tensor dz = dense::backward_epilogue(dout, f, p, r.nw >= 0 && g.wanted() ? &dnw : nullptr,
                                       r.nb >= 0 && g.wanted() ? &dnb : nullptr);
  if (dnw.defined()) g.add(r.nw, dnw);
  if (dnb.defined()) g.add(r.nb, dnb);
  return dz;
}

Tensor layer_backward(at::TensorList P, const DenseRef& r, const LayerSaved& s,
                      const Tensor& dout, Grads& g, bool need_dx) {
  const Tensor dz = layer_backward_dz(P, r, s, dout, g);
  g.mm(r.w, dz, s.x);
  if (r.b >= 0) g.rowsum(r.b, dz);
  return need_dx ? gemm::mm(dz, P[r.w]) : Tensor();
}

// ---- cells -----------------------------------------------------------------------------

namespace {

Tensor block_linear(const Tensor& x, const Tensor& W) {
  const int64_t B = x.size(0), G = W.size(0), in_g = W.size(1), out_g = W.size(2);
  return at::bmm(x.reshape({B, G, in_g}).transpose(0, 1), W).transpose(0, 1).reshape(
      {B, G * out_g});
}

Tensor block_linear_dx(const Tensor& dy, const Tensor& W) {
  const int64_t B = dy.size(0), G = W.size(0), in_g = W.size(1), out_g = W.size(2);
  return at::bmm(dy.reshape({B, G, out_g}).transpose(0, 1), W.transpose(1, 2))
      .transpose(0, 1)
      .reshape({B, G * in_g});
}

DenseRef rms_ref(int64_t w, int act, double eps) {
  DenseRef r;
  r.w = w;
  r.b = w + 1;
  r.nw = w + 2;
  r.norm = layer::kRms;
  r.act = act;
  r.eps = eps;
  return r;
}

}  // namespace

int64_t cell_saved_count(const Spec& s) {
  if (s.cell == kGru) return 3;
  if (s.cell == kLnGru) return 4;
  return 11 + 3 * s.dynlayers;
}

std::vector<int64_t> cell_weight_input_slots(const Spec& s) {
  if (s.cell != kBlockGru) return {0};  // x (cell_forward: {x, deter, ws / parts, stats})
  std::vector<int64_t> slots{9};  // xcat, then each hidden layer's output
  for (int64_t l = 0; l < s.dynlayers; ++l) slots.push_back(10 + 3 * l);
  return slots;
}

Tensor cell_forward(at::TensorList P, const Spec& s, const Tensor& x, const Tensor& deter,
                    const Tensor& stoch, const Tensor& action, std::vector<Tensor>* saved,
                    const Tensor& out) {
  const int64_t c = s.cell_first;
  const int64_t B = deter.size(0), D = deter.size(1);
  Tensor hy = out.defined() ? out : at::empty({B, D}, deter.options());
  TORCH_INTERNAL_ASSERT(hy.is_contiguous() && hy.size(0) == B && hy.size(1) == D);
  if (s.cell == kGru) {
    const Tensor gi = s.cell_bias ? gemm::addmm(P[c + 2], x, P[c].t()) : gemm::mm(x, P[c].t());
    const Tensor gh =
        s.cell_bias ? gemm::addmm(P[c + 3], deter, P[c + 1].t()) : gemm::mm(deter, P[c + 1].t());
    Tensor ws = at::empty({B, 4 * D}, deter.options());
    DF_DEVICE_LAUNCH(cells, gru_forward, deter, gi, gh, deter, hy, ws);
    if (saved) saved->insert(saved->end(), {x, deter, ws});
    return hy;
  }
  if (s.cell == kLnGru) {
    const int64_t I = x.size(1);
    const Tensor& W = P[c];
    // one GEMM on cat([x, h]) rather than two into the same output: at the small batch
    // of a posterior step (B = 16) the second pass over the output costs as much as
    // the copy of the inputs
    Tensor parts = gemm::mm(at::cat({x, deter}, 1), W.t());
    Tensor stats = at::empty({B, 2}, deter.options().dtype(at::toOpMathType(deter.scalar_type())));
    DF_DEVICE_LAUNCH(cells, ln_gru_forward, deter, parts, deter, P[c + 1], P[c + 2], s.cell_eps,
                  s.update_bias, hy, stats);
    if (saved) saved->insert(saved->end(), {x, deter, parts, stats});
    return hy;
  }
  // block GRU (see block_gru.cpp for the equations)
  const int64_t G = s.blocks, Dg = D / G, L = s.dynlayers;
  const Tensor an = action / action.abs().clamp_min(1.0);
  if (saved) saved->insert(saved->end(), {deter, stoch, an});
  const Tensor inputs[3] = {deter, stoch, an};
  std::vector<Tensor> xs;
  for (int i = 0; i < 3; ++i) {
    const dense::Forward f =
        dense::forward(inputs[i], layer_params(P, rms_ref(c + 3 * i, s.cell_act, s.cell_eps)));
    xs.push_back(f.out);
    if (saved) saved->insert(saved->end(), {f.z, f.stats});
  }
  const Tensor xcat = at::cat(xs, 1);
  const int64_t U3 = xcat.size(1);
  if (saved) saved->push_back(xcat);
  Tensor h;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t w = c + 9 + 3 * l;
    const Tensor& W = P[w];
    Tensor z;
    if (l == 0) {
      z = block_linear(deter, W.narrow(1, 0, Dg));
      gemm::addmm_(z, xcat, W.narrow(1, Dg, U3).permute({1, 0, 2}).reshape({U3, D}));
    } else {
      z = block_linear(h, W);
    }
    z.add_(P[w + 1]);
    const dense::Forward f =
        dense::apply_epilogue(z, layer_params(P, rms_ref(w, s.cell_act, s.cell_eps)));
    h = f.out;
    if (saved) saved->insert(saved->end(), {f.out, f.z, f.stats});
  }
  const int64_t wg = c + 9 + 3 * L;
  Tensor parts = block_linear(h, P[wg]);
  parts.add_(P[wg + 1]);
  if (saved) saved->push_back(parts);
  DF_DEVICE_LAUNCH(cells, block_gru_forward, deter, parts, deter, G, -1.0, hy);
  return hy;
}

CellGrads cell_backward(at::TensorList P, const Spec& s, const Tensor* sv,
                        const Tensor& d_out_in, Grads& g) {
  const int64_t c = s.cell_first;
  const Tensor d_out = d_out_in.contiguous();
  CellGrads r;
  if (s.cell == kGru) {
    const Tensor &x = sv[0], &h = sv[1], &ws = sv[2];
    const int64_t B = h.size(0), H = h.size(1);
    Tensor dgi = at::empty({B, 3 * H}, h.options()), dgh = at::empty({B, 3 * H}, h.options());
    Tensor dh = at::empty({B, H}, h.options());
    DF_DEVICE_LAUNCH(cells, gru_backward, h, d_out, ws, h, dgi, dgh, dh);
    r.x = gemm::mm(dgi, P[c]);
    gemm::addmm_(dh, dgh, P[c + 1]);
    r.deter = dh;
    g.mm(c, dgi, x);
    g.mm(c + 1, dgh, h);
    if (s.cell_bias) {
      g.rowsum(c + 2, dgi);
      g.rowsum(c + 3, dgh);
    }
    return r;
  }
  if (s.cell == kLnGru) {
    const Tensor &x = sv[0], &h = sv[1], &parts = sv[2], &stats = sv[3];
    // I from the weight, not from x: x is an empty placeholder when the forward kept no
    // inputs for world-model weight gradients (only Grads::mm reads it)
    const int64_t B = h.size(0), H = h.size(1), I = P[c].size(1) - H;
    const auto acc = at::toOpMathType(h.scalar_type());
    Tensor dy_sum = at::empty({3 * H}, h.options().dtype(acc));
    Tensor dy_xhat_sum = at::empty({3 * H}, h.options().dtype(acc));
    Tensor dparts = at::empty({B, 3 * H}, h.options());
    Tensor dh = at::empty({B, H}, h.options());
    DF_DEVICE_LAUNCH(cells, ln_gru_backward, h, d_out, parts, h, P[c + 1], P[c + 2], stats,
                  s.update_bias, dy_sum, dy_xhat_sum, dparts, dh);
    const Tensor& W = P[c];
    const Tensor d_in = gemm::mm(dparts, W);  // [B, I + H] in one GEMM
    r.x = d_in.narrow(1, 0, I);
    dh.add_(d_in.narrow(1, I, H));
    r.deter = dh;
    g.mm(c, dparts, x, 0);
    g.mm(c, dparts, h, I);
    g.add(c + 1, dy_xhat_sum.to(h.scalar_type()));
    g.add(c + 2, dy_sum.to(h.scalar_type()));
    return r;
  }
  // block GRU
  const int64_t L = s.dynlayers;
  const Tensor &deter = sv[0], &stoch = sv[1], &an = sv[2];
  const Tensor& xcat = sv[9];
  const Tensor& parts = sv[10 + 3 * L];
  const int64_t B = deter.size(0), D = deter.size(1), G = s.blocks, Dg = D / G;
  // widths from the weights: xcat and the hidden outputs are empty placeholders when
  // the forward kept no inputs for weight gradients (only Grads reads them)
  const int64_t U = P[c].size(0), U3 = 3 * U;
  Tensor dparts = at::empty_like(parts);
  Tensor d_deter = at::empty({B, D}, deter.options());
  DF_DEVICE_LAUNCH(cells, block_gru_backward, deter, d_out, parts, deter, G, -1.0, dparts, d_deter);
  const int64_t wg = c + 9 + 3 * L;
  const Tensor& h_last = sv[10 + 3 * (L - 1)];
  g.rowsum(wg + 1, dparts);
  g.block(wg, dparts, h_last, G);
  Tensor dh = block_linear_dx(dparts, P[wg]);
  Tensor dx;
  for (int64_t l = L - 1; l >= 0; --l) {
    const int64_t w = c + 9 + 3 * l;
    const DenseRef ref = rms_ref(w, s.cell_act, s.cell_eps);
    const LayerSaved ls{Tensor(), sv[10 + 3 * l + 1], sv[10 + 3 * l + 2]};
    const Tensor dz = layer_backward_dz(P, ref, ls, dh, g);
    g.rowsum(w + 1, dz);
    const Tensor& W = P[w];
    if (l == 0) {
      g.block(w, dz, deter, G, 0);
      d_deter.add_(block_linear_dx(dz, W.narrow(1, 0, Dg)));
      g.block_x(w, dz, xcat, G, Dg);
      dx = gemm::mm(dz, W.narrow(1, Dg, U3).permute({1, 0, 2}).reshape({U3, D}).t());
    } else {
      const Tensor& h_prev = sv[10 + 3 * (l - 1)];
      g.block(w, dz, h_prev, G);
      dh = block_linear_dx(dz, W);
    }
  }
  const Tensor inputs[3] = {deter, stoch, an};
  Tensor d_inputs[3];
  for (int i = 0; i < 3; ++i) {
    const DenseRef ref = rms_ref(c + 3 * i, s.cell_act, s.cell_eps);
    const LayerSaved ls{inputs[i], sv[3 + 2 * i], sv[4 + 2 * i]};
    d_inputs[i] = layer_backward(P, ref, ls, dx.narrow(1, i * U, U), g, true);
  }
  d_deter.add_(d_inputs[0]);
  r.deter = d_deter;
  r.stoch = d_inputs[1];
  // a = action / max(1, |action|), the divisor held constant: recover it from an.
  r.action = d_inputs[2];  // scaled by the caller, which has the raw action
  return r;
}

// ---- latent heads ------------------------------------------------------------------

HeadOut latent_forward(const Spec& s, const Tensor& stats_in, const Tensor& noise_in) {
  const Tensor stats = stats_in.contiguous(), noise = noise_in.contiguous();
  const int64_t R = stats.size(0), S = s.stoch;
  HeadOut o;
  if (s.classes) {
    const int64_t K = s.classes;
    const Tensor lg = stats.view({R * S, K});
    Tensor probs = at::empty_like(lg), sample = at::empty_like(lg);
    DF_DEVICE_LAUNCH(heads, categorical_forward, lg, lg, noise.view({R * S}), s.unimix, probs,
                  sample);
    o.sample = sample.view({R, S * K});
    o.a = stats;
    return o;
  }
  o.sample = at::empty({R, S}, stats.options());
  o.a = at::empty({R, S}, stats.options());
  o.b = at::empty({R, S}, stats.options());
  DF_DEVICE_LAUNCH(heads, gaussian_forward, stats, stats, noise, s.min_std, o.sample, o.a, o.b);
  return o;
}

Tensor latent_backward(const Spec& s, const Tensor& stats_in, const Tensor& noise_in,
                       const Tensor& g_sample, const Tensor& g_a, const Tensor& g_b) {
  const Tensor stats = stats_in.contiguous(), noise = noise_in.contiguous();
  const int64_t R = stats.size(0), S = s.stoch;
  if (s.classes) {
    const int64_t K = s.classes;
    // d logits = (straight-through sample grad through the softmax) + d logit output
    Tensor d;
    if (g_sample.defined()) {
      const Tensor lg = stats.view({R * S, K});
      d = at::empty_like(lg);
      DF_DEVICE_LAUNCH(heads, categorical_backward, lg, g_sample.contiguous().view({R * S, K}),
                       Tensor(), lg, s.unimix, d);
      d = d.view({R, S * K});
    }
    if (g_a.defined()) {
      const Tensor ga = g_a.reshape({R, S * K});
      d = d.defined() ? d.add_(ga) : ga;
    }
    return d.defined() ? d : at::zeros({R, S * K}, stats.options());
  }
  if (!g_sample.defined() && !g_a.defined() && !g_b.defined()) return at::zeros_like(stats);
  auto c = [](const Tensor& t) { return t.defined() ? t.contiguous() : Tensor(); };
  Tensor g_stats = at::empty_like(stats), g_noise = at::empty_like(noise);
  DF_DEVICE_LAUNCH(heads, gaussian_backward, stats, c(g_sample), c(g_a), c(g_b), stats, noise,
                s.min_std, g_stats, g_noise);
  return g_stats;
}

// ---- actor heads --------------------------------------------------------------------

namespace {

heads::NormalActionSpec normal_head(const ActorSpec& a) {
  heads::NormalActionSpec h;
  h.tanh_normal = a.head == kTanhNormal;
  h.min_std = a.min_std;
  h.std_range = a.max_std - a.min_std;
  h.std_offset = a.std_offset;
  h.mean_scale = a.mean_scale;
  return h;
}

}  // namespace

Tensor action_forward(const ActorSpec& a, const Tensor& raw, const Tensor& noise) {
  if (a.head == kCategorical) {
    const Tensor lg = raw.contiguous();
    Tensor probs = at::empty_like(lg), sample = at::empty_like(lg);
    DF_DEVICE_LAUNCH(heads, categorical_forward, lg, lg, noise.contiguous().view({-1}), a.unimix,
                  probs, sample);
    return sample;
  }
  Tensor action = at::empty({raw.size(0), a.actions}, raw.options());
  DF_DEVICE_LAUNCH(heads, normal_action_forward, raw, raw.contiguous(), noise.contiguous(),
                   normal_head(a), action);
  return action;
}

Tensor action_backward(const ActorSpec& a, const Tensor& raw, const Tensor& noise,
                       const Tensor& g_action) {
  const int64_t A = a.actions;
  if (a.head == kCategorical) {
    const Tensor lg = raw.contiguous();
    Tensor gl = at::empty_like(lg);
    DF_DEVICE_LAUNCH(heads, categorical_backward, lg, g_action.contiguous(), Tensor(), lg,
                  a.unimix, gl);
    return gl;
  }
  Tensor g_raw = at::empty({raw.size(0), 2 * A}, raw.options());
  DF_DEVICE_LAUNCH(heads, normal_action_backward, raw, raw.contiguous(), noise.contiguous(),
                   g_action.contiguous(), normal_head(a), g_raw);
  return g_raw;
}

}  // namespace rssm
}  // namespace dreamer_fast
