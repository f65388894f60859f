// Python bindings of every CUDA launcher (the *_cuda functions of the op families'
// *_launch.h / dense.h), each over caller-allocated tensors, for tests that run one
// launcher at a time:
//  * in the host emulation of the kernels (dreamer_fast._cuda_emu, csrc/emu/) over CPU
//    tensors' memory;
//  * in a CUDA build, as dreamer_fast._C.cuda_launchers over CUDA tensors, so that the
//    same test cases run on a device and can be compared with the emulated results.
// Outputs are arguments (as in the launchers): a test fills them with NaN first, so an
// element a kernel fails to write shows up. Optional tensors are None.
#if defined(DREAMER_FAST_WITH_CUDA)

#include <ATen/ATen.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>

#include "cells/cells_launch.h"
#include "dense/dense.h"
#include "heads/heads_launch.h"
#include "scan/scan_launch.h"

namespace dreamer_fast {
namespace {

namespace py = pybind11;
using at::Tensor;
using OptTensor = std::optional<Tensor>;

Tensor or_undefined(const OptTensor& t) { return t ? *t : Tensor(); }

dense::Params epilogue_params(const OptTensor& norm_weight, const OptTensor& norm_bias, int norm,
                              int act, double eps) {
  dense::Params p;
  p.norm_weight = norm_weight;
  p.norm_bias = norm_bias;
  p.norm = norm;
  p.act = act;
  p.eps = eps;
  return p;
}

heads::NormalActionSpec action_spec(bool tanh_normal, double min_std, double std_range,
                                    double std_offset, double mean_scale) {
  heads::NormalActionSpec h;
  h.tanh_normal = tanh_normal;
  h.min_std = min_std;
  h.std_range = std_range;
  h.std_offset = std_offset;
  h.mean_scale = mean_scale;
  return h;
}

}  // namespace

void bind_cuda_launchers(py::module_& m) {
  // ---- scan (scan_launch.h) ----
  m.def("reverse_scan_forward", &scan::reverse_scan_forward_cuda, py::arg("inputs"),
        py::arg("decay"), py::arg("init"), py::arg("out"), py::arg("T"), py::arg("N"));
  m.def("reverse_scan_backward", &scan::reverse_scan_backward_cuda, py::arg("grad"),
        py::arg("decay"), py::arg("init"), py::arg("out"), py::arg("ginputs"), py::arg("gdecay"),
        py::arg("ginit"), py::arg("T"), py::arg("N"));
  m.def("lambda_return_forward", &scan::lambda_return_forward_cuda, py::arg("reward"),
        py::arg("value"), py::arg("pcont"), py::arg("bootstrap"), py::arg("lambda_"),
        py::arg("out"), py::arg("T"), py::arg("N"));
  m.def("lambda_return_backward", &scan::lambda_return_backward_cuda, py::arg("grad"),
        py::arg("value"), py::arg("pcont"), py::arg("bootstrap"), py::arg("out"),
        py::arg("lambda_"), py::arg("greward"), py::arg("gvalue"), py::arg("gpcont"),
        py::arg("gbootstrap"), py::arg("T"), py::arg("N"));
  // ---- cells (cells_launch.h) ----
  m.def("gru_forward", &cells::gru_forward_cuda, py::arg("gi"), py::arg("gh"), py::arg("hx"),
        py::arg("hy"), py::arg("workspace"));
  m.def("gru_backward", &cells::gru_backward_cuda, py::arg("grad_hy"), py::arg("workspace"),
        py::arg("hx"), py::arg("dgi"), py::arg("dgh"), py::arg("dh_direct"));
  m.def("ln_gru_forward", &cells::ln_gru_forward_cuda, py::arg("parts"), py::arg("hx"),
        py::arg("gamma"), py::arg("beta"), py::arg("eps"), py::arg("update_bias"), py::arg("hy"),
        py::arg("stats"));
  m.def("ln_gru_backward", &cells::ln_gru_backward_cuda, py::arg("grad_hy"), py::arg("parts"),
        py::arg("hx"), py::arg("gamma"), py::arg("beta"), py::arg("stats"),
        py::arg("update_bias"), py::arg("dy_sum"), py::arg("dy_xhat_sum"), py::arg("dparts"),
        py::arg("dh_direct"));
  m.def("block_gru_forward", &cells::block_gru_forward_cuda, py::arg("parts"), py::arg("hx"),
        py::arg("blocks"), py::arg("update_bias"), py::arg("hy"));
  m.def("block_gru_backward", &cells::block_gru_backward_cuda, py::arg("grad_hy"),
        py::arg("parts"), py::arg("hx"), py::arg("blocks"), py::arg("update_bias"),
        py::arg("dparts"), py::arg("dh_direct"));
  // ---- dense epilogue (dense.h) ----
  m.def(
      "epilogue_forward",
      [](const Tensor& z, const OptTensor& norm_weight, const OptTensor& norm_bias, int norm,
         int act, double eps, Tensor& out, Tensor& stats) {
        dense::epilogue_forward_cuda(z, epilogue_params(norm_weight, norm_bias, norm, act, eps),
                                     out, stats);
      },
      py::arg("z"), py::arg("norm_weight"), py::arg("norm_bias"), py::arg("norm"), py::arg("act"),
      py::arg("eps"), py::arg("out"), py::arg("stats"));
  m.def(
      "epilogue_backward",
      [](const Tensor& dout, const Tensor& z, const Tensor& stats, const OptTensor& norm_weight,
         const OptTensor& norm_bias, int norm, int act, double eps, OptTensor dy_sum,
         OptTensor dy_xhat_sum, Tensor& dz) {
        dense::epilogue_backward_cuda(dout, z, stats,
                                      epilogue_params(norm_weight, norm_bias, norm, act, eps),
                                      dy_sum ? &*dy_sum : nullptr,
                                      dy_xhat_sum ? &*dy_xhat_sum : nullptr, dz);
      },
      py::arg("dout"), py::arg("z"), py::arg("stats"), py::arg("norm_weight"),
      py::arg("norm_bias"), py::arg("norm"), py::arg("act"), py::arg("eps"), py::arg("dy_sum"),
      py::arg("dy_xhat_sum"), py::arg("dz"));
  // ---- heads (heads_launch.h) ----
  // std_act, mean_act, min_std_mode: heads_math.h's GaussianStdAct / GaussianMeanAct /
  // GaussianMinStdMode codes
  m.def(
      "gaussian_forward",
      [](const Tensor& stats, const Tensor& noise, double min_std, Tensor& sample, Tensor& mean,
         Tensor& std_, int std_act, int mean_act, int min_std_mode) {
        heads::gaussian_forward_cuda(
            stats, noise, heads::GaussianSpec{min_std, std_act, mean_act, min_std_mode}, sample,
            mean, std_);
      },
      py::arg("stats"), py::arg("noise"), py::arg("min_std"), py::arg("sample"), py::arg("mean"),
      py::arg("std"), py::arg("std_act") = 0, py::arg("mean_act") = 0,
      py::arg("min_std_mode") = 0);
  m.def(
      "gaussian_backward",
      [](const OptTensor& g_sample, const OptTensor& g_mean, const OptTensor& g_std,
         const Tensor& stats, const Tensor& noise, double min_std, Tensor& g_stats,
         Tensor& g_noise, int std_act, int mean_act, int min_std_mode) {
        heads::gaussian_backward_cuda(
            or_undefined(g_sample), or_undefined(g_mean), or_undefined(g_std), stats, noise,
            heads::GaussianSpec{min_std, std_act, mean_act, min_std_mode}, g_stats, g_noise);
      },
      py::arg("g_sample"), py::arg("g_mean"), py::arg("g_std"), py::arg("stats"),
      py::arg("noise"), py::arg("min_std"), py::arg("g_stats"), py::arg("g_noise"),
      py::arg("std_act") = 0, py::arg("mean_act") = 0, py::arg("min_std_mode") = 0);
  m.def("categorical_forward", &heads::categorical_forward_cuda, py::arg("logits"),
        py::arg("uniform"), py::arg("unimix"), py::arg("probs"), py::arg("sample"));
  m.def(
      "categorical_backward",
      [](const OptTensor& g_sample, const OptTensor& g_probs, const Tensor& logits,
         double unimix, Tensor& g_logits) {
        heads::categorical_backward_cuda(or_undefined(g_sample), or_undefined(g_probs), logits,
                                         unimix, g_logits);
      },
      py::arg("g_sample"), py::arg("g_probs"), py::arg("logits"), py::arg("unimix"),
      py::arg("g_logits"));
  m.def(
      "normal_action_forward",
      [](const Tensor& raw, const Tensor& noise, bool tanh_normal, double min_std,
         double std_range, double std_offset, double mean_scale, Tensor& action) {
        heads::normal_action_forward_cuda(
            raw, noise, action_spec(tanh_normal, min_std, std_range, std_offset, mean_scale),
            action);
      },
      py::arg("raw"), py::arg("noise"), py::arg("tanh_normal"), py::arg("min_std"),
      py::arg("std_range"), py::arg("std_offset"), py::arg("mean_scale"), py::arg("action"));
  m.def(
      "normal_action_backward",
      [](const Tensor& raw, const Tensor& noise, const Tensor& g_action, bool tanh_normal,
         double min_std, double std_range, double std_offset, double mean_scale, Tensor& g_raw) {
        heads::normal_action_backward_cuda(
            raw, noise, g_action,
            action_spec(tanh_normal, min_std, std_range, std_offset, mean_scale), g_raw);
      },
      py::arg("raw"), py::arg("noise"), py::arg("g_action"), py::arg("tanh_normal"),
      py::arg("min_std"), py::arg("std_range"), py::arg("std_offset"), py::arg("mean_scale"),
      py::arg("g_raw"));
}

}  // namespace dreamer_fast

#endif  // DREAMER_FAST_WITH_CUDA
