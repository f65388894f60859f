// Dense layer building blocks (see dense.h) and the linear_norm_act op.
#include "dense/dense.h"

#include <ATen/OpMathType.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "common/device_launch.h"
#include "common/gemm.h"
#include "dense/dense_math.h"

namespace dreamer_fast {
namespace dense {

using at::Tensor;

namespace {

void check_vec(const char* op, const char* name, const Tensor& t, const Tensor& like, int64_t n) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, op, ": `", name, "` must have shape [", n,
              "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": `", name, "` has dtype ",
              t.scalar_type(), ", expected ", like.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": `", name, "` is on ", t.device(),
              ", expected ", like.device());
}

bool has_epilogue(const Params& p) { return p.norm != layer::kNone || p.act != layer::kIdentity; }

}  // namespace

void check(const char* op, const Tensor& x, const Params& p) {
  TORCH_CHECK(x.dim() == 2, op, ": `input` must be 2-D [B, I], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op,
              ": `input` must be a floating-point tensor, got ", x.scalar_type());
  const Tensor& w = p.weight;
  TORCH_CHECK(w.dim() == 2 && w.size(1) == x.size(1), op, ": `weight` must have shape [N, ",
              x.size(1), "] (I from `input`), got ", w.sizes());
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), op, ": `weight` has dtype ", w.scalar_type(),
              ", expected ", x.scalar_type());
  TORCH_CHECK(w.device() == x.device(), op, ": `weight` is on ", w.device(), ", expected ",
              x.device());
  const int64_t N = w.size(0);
  if (p.bias) check_vec(op, "bias", *p.bias, x, N);
  if (p.norm_weight) check_vec(op, "norm_weight", *p.norm_weight, x, N);
  if (p.norm_bias) check_vec(op, "norm_bias", *p.norm_bias, x, N);
  TORCH_CHECK(p.norm >= layer::kNone && p.norm <= layer::kRms, op, ": unknown norm code ",
              p.norm);
  TORCH_CHECK(p.act >= layer::kIdentity && p.act <= layer::kSigmoid, op, ": unknown act code ",
              p.act);
  TORCH_CHECK(p.norm != layer::kRms || !p.norm_bias, op,
              ": RMSNorm has no `norm_bias` (got one)");
  TORCH_CHECK(p.norm != layer::kNone || (!p.norm_weight && !p.norm_bias), op,
              ": `norm_weight`/`norm_bias` given but norm is none");
  TORCH_CHECK(p.norm == layer::kNone || p.eps > 0, op, ": `eps` must be > 0, got ", p.eps);
}

namespace {

// `out` if given (checked against the shape it must have), else a new tensor like `like`.
Tensor output_like(const Tensor& like, const Tensor& out, const char* what) {
  if (!out.defined()) return at::empty_like(like, at::MemoryFormat::Contiguous);
  TORCH_INTERNAL_ASSERT(out.is_contiguous() && out.sizes() == like.sizes() &&
                            out.scalar_type() == like.scalar_type(),
                        what, ": the output buffer must be contiguous ", like.sizes());
  return out;
}

}  // namespace

Forward apply_epilogue(const Tensor& z, const Params& p, const Tensor& out) {
  Forward f;
  f.z = z.contiguous();
  f.stats = at::empty({z.size(0), 2}, z.options().dtype(at::toOpMathType(z.scalar_type())));
  if (!has_epilogue(p)) {
    f.out = out.defined() ? output_like(f.z, out, "apply_epilogue").copy_(f.z) : f.z;
    f.stats.zero_();
    return f;
  }
  f.out = output_like(f.z, out, "apply_epilogue");
  DF_DEVICE_LAUNCH(dense, epilogue_forward, z, f.z, p, f.out, f.stats);
  return f;
}

Forward forward(const Tensor& x, const Params& p, const Tensor& out) {
  const Tensor z = p.bias ? gemm::addmm(*p.bias, x, p.weight.t()) : gemm::mm(x, p.weight.t());
  return apply_epilogue(z, p, out);
}

Tensor backward_epilogue(const Tensor& dout, const Forward& saved, const Params& p,
                         Tensor* d_norm_weight, Tensor* d_norm_bias) {
  if (!has_epilogue(p)) return dout.contiguous();
  const auto acc = at::toOpMathType(dout.scalar_type());
  Tensor dy_sum, dy_xhat_sum;  // column sums (accumulation dtype)
  const bool want_w = p.norm_weight.has_value() && d_norm_weight;
  const bool want_b = p.norm_bias.has_value() && d_norm_bias;
  const int64_t N = saved.z.size(1);
  if (want_w) dy_xhat_sum = at::empty({N}, saved.z.options().dtype(acc));
  if (want_b) dy_sum = at::empty({N}, saved.z.options().dtype(acc));
  Tensor dz = at::empty_like(saved.z, at::MemoryFormat::Contiguous);
  Tensor dout_c = dout.contiguous();
  DF_DEVICE_LAUNCH(dense, epilogue_backward, dout, dout_c, saved.z, saved.stats, p,
                   want_b ? &dy_sum : nullptr, want_w ? &dy_xhat_sum : nullptr, dz);
  if (want_w) *d_norm_weight = dy_xhat_sum.to(dout.scalar_type());
  if (want_b) *d_norm_bias = dy_sum.to(dout.scalar_type());
  return dz;
}

Params layer_params(at::TensorList P, const Layer& r) {
  Params p;
  p.weight = P[r.w];
  if (r.b >= 0) p.bias = P[r.b];
  if (r.nw >= 0) p.norm_weight = P[r.nw];
  if (r.nb >= 0) p.norm_bias = P[r.nb];
  p.norm = r.norm;
  p.act = r.act;
  p.eps = r.eps;
  return p;
}

Tensor layer_forward(at::TensorList P, const Layer& r, const Tensor& x,
                     std::vector<Tensor>* saved, const Tensor& out) {
  const Forward f = forward(x, layer_params(P, r), out);
  if (saved) saved->insert(saved->end(), {x, f.z, f.stats});
  return f.out;
}

Tensor layer_epilogue(at::TensorList P, const Layer& r, const Tensor& z, const Tensor& x,
                      std::vector<Tensor>* saved, const Tensor& out) {
  const Forward f = apply_epilogue(z, layer_params(P, r), out);
  if (saved) saved->insert(saved->end(), {x, f.z, f.stats});
  return f.out;
}

Tensor layer_backward_dz(at::TensorList P, const Layer& r, const LayerSaved& s,
                         const Tensor& dout, GradSink& g) {
  const Params p = layer_params(P, r);
  const Forward f{Tensor(), s.z, s.stats};
  Tensor dnw, dnb;
  Tensor dz = backward_epilogue(dout, f, p, r.nw >= 0 && g.wanted() ? &dnw : nullptr,
                                r.nb >= 0 && g.wanted() ? &dnb : nullptr);
  if (dnw.defined()) g.add(r.nw, dnw);
  if (dnb.defined()) g.add(r.nb, dnb);
  return dz;
}

Tensor layer_backward(at::TensorList P, const Layer& r, const LayerSaved& s, const Tensor& dout,
                      GradSink& g, bool need_dx) {
  const Tensor dz = layer_backward_dz(P, r, s, dout, g);
  g.mm(r.w, dz, s.x);
  if (r.b >= 0) g.rowsum(r.b, dz);
  return need_dx ? gemm::mm(dz, P[r.w]) : Tensor();
}

namespace {

Params make_params(const Tensor& weight, const std::optional<Tensor>& bias,
                   const std::optional<Tensor>& norm_weight,
                   const std::optional<Tensor>& norm_bias, int64_t norm, int64_t act,
                   double eps) {
  Params p;
  p.weight = weight;
  p.bias = bias;
  p.norm_weight = norm_weight;
  p.norm_bias = norm_bias;
  p.norm = static_cast<int>(norm);
  p.act = static_cast<int>(act);
  p.eps = eps;
  return p;
}

// An empty [0] tensor stands for "no gradient" (the parameter was None).
Tensor or_empty(const Tensor& t, const Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}

std::tuple<Tensor, Tensor, Tensor> linear_norm_act(const Tensor& input, const Tensor& weight,
                                                   const std::optional<Tensor>& bias,
                                                   const std::optional<Tensor>& norm_weight,
                                                   const std::optional<Tensor>& norm_bias,
                                                   int64_t norm, int64_t act, double eps) {
  const Params p = make_params(weight, bias, norm_weight, norm_bias, norm, act, eps);
  check("linear_norm_act", input, p);
  const c10::OptionalDeviceGuard guard(input.device());
  Forward f = forward(input, p);
  // `out` may alias `z` (no epilogue); outputs of an op must not alias each other.
  if (f.out.is_same(f.z)) f.out = f.z.clone();
  return {f.out, f.z, f.stats};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> linear_norm_act_backward(
    const Tensor& grad_out, const Tensor& z, const Tensor& stats, const Tensor& input,
    const Tensor& weight, const std::optional<Tensor>& bias,
    const std::optional<Tensor>& norm_weight, const std::optional<Tensor>& norm_bias,
    int64_t norm, int64_t act, bool need_input, bool need_params) {
  const Params p = make_params(weight, bias, norm_weight, norm_bias, norm, act, 1.0);
  check("linear_norm_act_backward", input, p);
  const int64_t B = input.size(0), N = weight.size(0);
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == B && grad_out.size(1) == N,
              "linear_norm_act_backward: `grad_out` must be [", B, ", ", N, "], got ",
              grad_out.sizes());
  TORCH_CHECK(z.sizes() == grad_out.sizes(), "linear_norm_act_backward: `z` must be [", B,
              ", ", N, "], got ", z.sizes());
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == B && stats.size(1) == 2,
              "linear_norm_act_backward: `stats` must be [", B, ", 2], got ", stats.sizes());
  // the CUDA launchers read these through untyped pointers: a wrong dtype would be
  // reinterpreted (and `stats` of a half layer read past its end), so check here
  const auto acc = at::toOpMathType(input.scalar_type());
  for (const auto& [name, t, dtype] : {std::make_tuple("grad_out", &grad_out, input.scalar_type()),
                                       std::make_tuple("z", &z, input.scalar_type()),
                                       std::make_tuple("stats", &stats, acc)})
    TORCH_CHECK(t->scalar_type() == dtype && t->device() == input.device(),
                "linear_norm_act_backward: `", name, "` must be ", dtype, " on ",
                input.device(), ", got ", t->scalar_type(), " on ", t->device());
  const c10::OptionalDeviceGuard guard(input.device());
  // the op's parameter list: weight, then the optional tensors that are present
  std::vector<Tensor> P{weight};
  Layer r;
  r.w = 0;
  r.norm = static_cast<int>(norm);
  r.act = static_cast<int>(act);
  for (const auto& [t, idx] : {std::make_pair(&bias, &r.b), std::make_pair(&norm_weight, &r.nw),
                               std::make_pair(&norm_bias, &r.nb)}) {
    if (!t->has_value()) continue;
    *idx = static_cast<int64_t>(P.size());
    P.push_back(**t);
  }
  // an empty [0] tensor for a gradient not computed (a fresh one each: outputs of an op
  // must not alias each other)
  const auto none = [&] { return at::empty({0}, input.options()); };
  if (!need_params) {
    // The parameters are constants of the caller's graph (a frozen head that only passes
    // gradients on): no dW / db GEMMs or column sums, only dz and, if wanted, dx.
    const Forward f{Tensor(), z.contiguous(), stats.contiguous()};
    const Tensor dz = backward_epilogue(grad_out, f, p, nullptr, nullptr);
    return {need_input ? gemm::mm(dz, weight) : none(), none(), none(), none(), none()};
  }
  ImmediateGrads g(P.size());
  const Tensor dx = layer_backward(P, r, LayerSaved{input, z.contiguous(), stats.contiguous()},
                                   grad_out, g, need_input);
  const auto grad = [&](int64_t idx) { return idx >= 0 ? g.take(idx) : Tensor(); };
  return {need_input ? dx : none(), grad(r.w), or_empty(grad(r.b), input),
          or_empty(grad(r.nw), input), or_empty(grad(r.nb), input)};
}

}  // namespace
}  // namespace dense

TORCH_LIBRARY_FRAGMENT(dreamer_fast, m) {
  // norm: 0 none, 1 layer, 2 rms;  act: 0 identity, 1 silu, 2 elu, 3 tanh, 4 gelu, 5 sigmoid.
  m.def(
      "linear_norm_act(Tensor input, Tensor weight, Tensor? bias, Tensor? norm_weight, "
      "Tensor? norm_bias, int norm, int act, float eps) -> (Tensor out, Tensor z, "
      "Tensor stats)");
  m.def(
      "linear_norm_act_backward(Tensor grad_out, Tensor z, Tensor stats, Tensor input, "
      "Tensor weight, Tensor? bias, Tensor? norm_weight, Tensor? norm_bias, int norm, int act, "
      "bool need_input=True, bool need_params=True) -> (Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
}

TORCH_LIBRARY_IMPL(dreamer_fast, CPU, m) {
  m.impl("linear_norm_act", &dense::linear_norm_act);
  m.impl("linear_norm_act_backward", &dense::linear_norm_act_backward);
}

#ifdef DREAMER_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(dreamer_fast, CUDA, m) {
  m.impl("linear_norm_act", &dense::linear_norm_act);
  m.impl("linear_norm_act_backward", &dense::linear_norm_act_backward);
}
#endif

}  // namespace dreamer_fast
