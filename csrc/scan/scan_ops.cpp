// The scan ops: schemas, argument checks, allocation, and one launch on
// the tensors' device (scan_launch.h; math in scan_math.h). The same functions serve
// CPU and CUDA tensors. Fake kernels and autograd are registered from Python
// (dreamer_fast/ops/scan.py).
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "common/device_launch.h"
#include "scan/scan_checks.h"
#include "scan/scan_launch.h"

namespace dreamer_fast {
namespace {

using at::Tensor;

Tensor empty_contiguous(const Tensor& like) {
  return at::empty_like(like, at::MemoryFormat::Contiguous);
}

Tensor reverse_scan(const Tensor& inputs, const Tensor& decay, const Tensor& init) {
  auto [T, N] = check_scan_args("reverse_scan", {{"inputs", &inputs}, {"decay", &decay}},
                                "init", init);
  const c10::OptionalDeviceGuard guard(inputs.device());
  const Tensor x = inputs.contiguous(), d = decay.contiguous(), r0 = init.contiguous();
  Tensor out = empty_contiguous(x);
  DF_DEVICE_LAUNCH(scan, reverse_scan_forward, x.device(), x, d, r0, out, T, N);
  return out;
}

std::tuple<Tensor, Tensor, Tensor> reverse_scan_backward(const Tensor& grad, const Tensor& decay,
                                                         const Tensor& init, const Tensor& out) {
  auto [T, N] = check_scan_args("reverse_scan_backward",
                                {{"grad", &grad}, {"decay", &decay}, {"out", &out}}, "init",
                                init);
  const c10::OptionalDeviceGuard guard(grad.device());
  const Tensor g = grad.contiguous(), d = decay.contiguous(), r0 = init.contiguous(),
               r = out.contiguous();
  Tensor ginputs = empty_contiguous(g), gdecay = empty_contiguous(g), ginit = empty_contiguous(r0);
  DF_DEVICE_LAUNCH(scan, reverse_scan_backward, g.device(), g, d, r0, r, ginputs, gdecay, ginit, T, N);
  return {ginputs, gdecay, ginit};
}

Tensor lambda_return(const Tensor& reward, const Tensor& value, const Tensor& pcont,
                     const Tensor& bootstrap, double lambda) {
  check_lambda("lambda_return", lambda);
  auto [T, N] = check_scan_args("lambda_return",
                                {{"reward", &reward}, {"value", &value}, {"pcont", &pcont}},
                                "bootstrap", bootstrap);
  const c10::OptionalDeviceGuard guard(reward.device());
  const Tensor r = reward.contiguous(), v = value.contiguous(), p = pcont.contiguous(),
               b = bootstrap.contiguous();
  Tensor out = empty_contiguous(r);
  DF_DEVICE_LAUNCH(scan, lambda_return_forward, r.device(), r, v, p, b, lambda, out, T, N);
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lambda_return_backward(
    const Tensor& grad, const Tensor& value, const Tensor& pcont, const Tensor& bootstrap,
    const Tensor& out, double lambda) {
  check_lambda("lambda_return_backward", lambda);
  auto [T, N] = check_scan_args(
      "lambda_return_backward",
      {{"grad", &grad}, {"value", &value}, {"pcont", &pcont}, {"out", &out}}, "bootstrap",
      bootstrap);
  const c10::OptionalDeviceGuard guard(grad.device());
  const Tensor g = grad.contiguous(), v = value.contiguous(), p = pcont.contiguous(),
               b = bootstrap.contiguous(), r = out.contiguous();
  Tensor greward = empty_contiguous(g), gvalue = empty_contiguous(g), gpcont = empty_contiguous(g),
         gboot = empty_contiguous(b);
  DF_DEVICE_LAUNCH(scan, lambda_return_backward, g.device(), g, v, p, b, r, lambda, greward, gvalue,
                 gpcont, gboot, T, N);
  return {greward, gvalue, gpcont, gboot};
}

}  // namespace

// All scan ops are time-major: sequences are [T, *batch], init/bootstrap [*batch].
TORCH_LIBRARY_FRAGMENT(dreamer_fast, m) {
  m.def("reverse_scan(Tensor inputs, Tensor decay, Tensor init) -> Tensor");
  m.def(
      "reverse_scan_backward(Tensor grad, Tensor decay, Tensor init, Tensor out) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "lambda_return(Tensor reward, Tensor value, Tensor pcont, Tensor bootstrap, "
      "float lambda_) -> Tensor");
  m.def(
      "lambda_return_backward(Tensor grad, Tensor value, Tensor pcont, Tensor bootstrap, "
      "Tensor out, float lambda_) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dreamer_fast, CPU, m) {
  m.impl("reverse_scan", &reverse_scan);
  m.impl("reverse_scan_backward", &reverse_scan_backward);
  m.impl("lambda_return", &lambda_return);
  m.impl("lambda_return_backward", &lambda_return_backward);
}

#ifdef DREAMER_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(dreamer_fast, CUDA, m) {
  m.impl("reverse_scan", &reverse_scan);
  m.impl("reverse_scan_backward", &reverse_scan_backward);
  m.impl("lambda_return", &lambda_return);
  m.impl("lambda_return_backward", &lambda_return_backward);
}
#endif

}  // namespace dreamer_fast
