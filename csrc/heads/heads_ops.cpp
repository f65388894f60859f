// The distribution-head ops: argument checks, allocation, and one launch per
// direction on the tensors' device (heads_launch.h; math in heads_math.h). The same
// functions serve CPU and CUDA tensors. Autograd and fake kernels are registered from
// Python (dreamer_fast/ops/heads.py).
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <optional>

#include "common/device_launch.h"
#include "heads/heads_checks.h"
#include "heads/heads_launch.h"

namespace dreamer_fast {
namespace {

using at::Tensor;

Tensor contiguous_or_undefined(const std::optional<Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->contiguous() : Tensor();
}

Tensor empty_contiguous(const Tensor& like) {
  return at::empty_like(like, at::MemoryFormat::Contiguous);
}

heads::GaussianSpec gaussian_spec(const char* op, double min_std, const std::string& std_act,
                                  const std::string& mean_act,
                                  const std::string& min_std_mode) {
  heads::GaussianSpec h;
  h.min_std = min_std;
  h.std_act = heads::gaussian_act_code(op, "std_act", std_act, heads::kGaussianStdActNames);
  h.mean_act = heads::gaussian_act_code(op, "mean_act", mean_act, heads::kGaussianMeanActNames);
  h.min_std_mode = heads::gaussian_act_code(op, "min_std_mode", min_std_mode,
                                            heads::kGaussianMinStdModeNames);
  return h;
}

std::tuple<Tensor, Tensor, Tensor> gaussian_sample(const Tensor& stats, const Tensor& noise,
                                                   double min_std, const std::string& std_act,
                                                   const std::string& mean_act,
                                                   const std::string& min_std_mode) {
  const char* op = "gaussian_sample";
  check_gaussian_args(op, stats, noise, min_std);
  const heads::GaussianSpec h = gaussian_spec(op, min_std, std_act, mean_act, min_std_mode);
  const c10::OptionalDeviceGuard guard(stats.device());
  const Tensor st = stats.contiguous(), nz = noise.contiguous();
  Tensor sample = empty_contiguous(nz), mean = empty_contiguous(nz), std_ = empty_contiguous(nz);
  DF_DEVICE_LAUNCH(heads, gaussian_forward, st.device(), st, nz, h, sample, mean, std_);
  return {sample, mean, std_};
}

std::tuple<Tensor, Tensor> gaussian_sample_backward(const std::optional<Tensor>& grad_sample,
                                                    const std::optional<Tensor>& grad_mean,
                                                    const std::optional<Tensor>& grad_std,
                                                    const Tensor& stats, const Tensor& noise,
                                                    double min_std, const std::string& std_act,
                                                    const std::string& mean_act,
                                                    const std::string& min_std_mode) {
  const char* op = "gaussian_sample_backward";
  check_gaussian_args(op, stats, noise, min_std);
  const heads::GaussianSpec h = gaussian_spec(op, min_std, std_act, mean_act, min_std_mode);
  check_optional_head_tensor(op, "grad_sample", grad_sample, noise.sizes(), "stats", stats);
  check_optional_head_tensor(op, "grad_mean", grad_mean, noise.sizes(), "stats", stats);
  check_optional_head_tensor(op, "grad_std", grad_std, noise.sizes(), "stats", stats);
  const c10::OptionalDeviceGuard guard(stats.device());
  const Tensor st = stats.contiguous(), nz = noise.contiguous();
  Tensor g_stats = empty_contiguous(st), g_noise = empty_contiguous(nz);
  DF_DEVICE_LAUNCH(heads, gaussian_backward, st.device(), contiguous_or_undefined(grad_sample),
                  contiguous_or_undefined(grad_mean), contiguous_or_undefined(grad_std), st, nz,
                  h, g_stats, g_noise);
  return {g_stats, g_noise};
}

std::tuple<Tensor, Tensor> categorical_sample(const Tensor& logits, const Tensor& uniform,
                                              double unimix) {
  const char* op = "categorical_sample";
  check_categorical_logits(op, logits, unimix);
  check_head_tensor(op, "uniform", uniform, logits.sizes().slice(0, logits.dim() - 1), "logits",
                    logits);
  const c10::OptionalDeviceGuard guard(logits.device());
  const Tensor lg = logits.contiguous(), un = uniform.contiguous();
  Tensor sample = empty_contiguous(lg), probs = empty_contiguous(lg);
  DF_DEVICE_LAUNCH(heads, categorical_forward, lg.device(), lg, un, unimix, probs, sample);
  return {sample, probs};
}

Tensor categorical_sample_backward(const std::optional<Tensor>& grad_sample,
                                   const std::optional<Tensor>& grad_probs, const Tensor& logits,
                                   double unimix) {
  const char* op = "categorical_sample_backward";
  check_categorical_logits(op, logits, unimix);
  check_optional_head_tensor(op, "grad_sample", grad_sample, logits.sizes(), "logits", logits);
  check_optional_head_tensor(op, "grad_probs", grad_probs, logits.sizes(), "logits", logits);
  const c10::OptionalDeviceGuard guard(logits.device());
  const Tensor lg = logits.contiguous();
  Tensor g_logits = empty_contiguous(lg);
  DF_DEVICE_LAUNCH(heads, categorical_backward, lg.device(), contiguous_or_undefined(grad_sample),
                  contiguous_or_undefined(grad_probs), lg, unimix, g_logits);
  return g_logits;
}

}  // namespace

// Schemas of the head ops. Shapes:
//   gaussian_sample:    stats [..., 2S], noise [..., S] -> sample, mean, std [..., S]
//                       (std_act: softplus|abs|sigmoid|sigmoid2, mean_act: none|tanh5,
//                       min_std_mode: add|clamp)
//   categorical_sample: logits [..., G, K], uniform [..., G] -> sample, probs [..., G, K]
// Backward ops take the upstream gradient of every output, each optional (None =
// that output got no gradient).
TORCH_LIBRARY_FRAGMENT(dreamer_fast, m) {
  m.def(
      "gaussian_sample(Tensor stats, Tensor noise, float min_std, str std_act='softplus', "
      "str mean_act='none', str min_std_mode='add') -> (Tensor, Tensor, Tensor)");
  m.def(
      "gaussian_sample_backward(Tensor? grad_sample, Tensor? grad_mean, Tensor? grad_std, "
      "Tensor stats, Tensor noise, float min_std, str std_act='softplus', "
      "str mean_act='none', str min_std_mode='add') -> (Tensor, Tensor)");
  m.def("categorical_sample(Tensor logits, Tensor uniform, float unimix) -> (Tensor, Tensor)");
  m.def(
      "categorical_sample_backward(Tensor? grad_sample, Tensor? grad_probs, Tensor logits, "
      "float unimix) -> Tensor");
}

TORCH_LIBRARY_IMPL(dreamer_fast, CPU, m) {
  m.impl("gaussian_sample", &gaussian_sample);
  m.impl("gaussian_sample_backward", &gaussian_sample_backward);
  m.impl("categorical_sample", &categorical_sample);
  m.impl("categorical_sample_backward", &categorical_sample_backward);
}

#ifdef DREAMER_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(dreamer_fast, CUDA, m) {
  m.impl("gaussian_sample", &gaussian_sample);
  m.impl("gaussian_sample_backward", &gaussian_sample_backward);
  m.impl("categorical_sample", &categorical_sample);
  m.impl("categorical_sample_backward", &categorical_sample_backward);
}
#endif

}  // namespace dreamer_fast
