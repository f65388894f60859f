// CUDA entry points of the scan ops: argument checks, allocation, and the launch on
// the current stream (so the ops are CUDA-graph-capture safe: no sync, no host
// allocation, no device-to-host copy). Every launch's error is checked.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_glue.h"
#include "scan_checks.h"
#include "scan_cuda.h"

namespace dreamer_fast {
namespace {

at::Tensor reverse_scan_cuda(const at::Tensor& inputs, const at::Tensor& decay,
                             const at::Tensor& init) {
  auto [T, N] = check_scan_args("reverse_scan", {{"inputs", &inputs}, {"decay", &decay}},
                                "init", init);
  const c10::cuda::CUDAGuard guard(inputs.device());
  auto x = inputs.contiguous(), d = decay.contiguous(), r0 = init.contiguous();
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  check_launch("reverse_scan",
               cuda::reverse_scan_forward(kernel_dtype("reverse_scan", x.scalar_type()),
                                          x.const_data_ptr(), d.const_data_ptr(),
                                          r0.const_data_ptr(), out.mutable_data_ptr(), T, N,
                                          current_stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reverse_scan_backward_cuda(
    const at::Tensor& grad, const at::Tensor& decay, const at::Tensor& init,
    const at::Tensor& out) {
  auto [T, N] = check_scan_args("reverse_scan_backward",
                                {{"grad", &grad}, {"decay", &decay}, {"out", &out}}, "init",
                                init);
  const c10::cuda::CUDAGuard guard(grad.device());
  auto g = grad.contiguous(), d = decay.contiguous(), r0 = init.contiguous(),
       r = out.contiguous();
  auto ginputs = at::empty_like(g, at::MemoryFormat::Contiguous);
  auto gdecay = at::empty_like(g, at::MemoryFormat::Contiguous);
  auto ginit = at::empty_like(r0, at::MemoryFormat::Contiguous);
  check_launch("reverse_scan_backward",
               cuda::reverse_scan_backward(
                   kernel_dtype("reverse_scan_backward", g.scalar_type()), g.const_data_ptr(),
                   d.const_data_ptr(), r0.const_data_ptr(), r.const_data_ptr(),
                   ginputs.mutable_data_ptr(), gdecay.mutable_data_ptr(),
                   ginit.mutable_data_ptr(), T, N, current_stream()));
  return {ginputs, gdecay, ginit};
}

at::Tensor lambda_return_cuda(const at::Tensor& reward, const at::Tensor& value,
                              const at::Tensor& pcont, const at::Tensor& bootstrap,
                              double lambda) {
  check_lambda("lambda_return", lambda);
  auto [T, N] = check_scan_args("lambda_return",
                                {{"reward", &reward}, {"value", &value}, {"pcont", &pcont}},
                                "bootstrap", bootstrap);
  const c10::cuda::CUDAGuard guard(reward.device());
  auto r = reward.contiguous(), v = value.contiguous(), p = pcont.contiguous(),
       b = bootstrap.contiguous();
  auto out = at::empty_like(r, at::MemoryFormat::Contiguous);
  check_launch("lambda_return",
               cuda::lambda_return_forward(kernel_dtype("lambda_return", r.scalar_type()),
                                           r.const_data_ptr(), v.const_data_ptr(),
                                           p.const_data_ptr(), b.const_data_ptr(),
                                           out.mutable_data_ptr(), lambda, T, N,
                                           current_stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lambda_return_backward_cuda(
    const at::Tensor& grad, const at::Tensor& value, const at::Tensor& pcont,
    const at::Tensor& bootstrap, const at::Tensor& out, double lambda) {
  check_lambda("lambda_return_backward", lambda);
  auto [T, N] = check_scan_args(
      "lambda_return_backward",
      {{"grad", &grad}, {"value", &value}, {"pcont", &pcont}, {"out", &out}}, "bootstrap",
      bootstrap);
  const c10::cuda::CUDAGuard guard(grad.device());
  auto g = grad.contiguous(), v = value.contiguous(), p = pcont.contiguous(),
       b = bootstrap.contiguous(), r = out.contiguous();
  auto greward = at::empty_like(g, at::MemoryFormat::Contiguous);
  auto gvalue = at::empty_like(g, at::MemoryFormat::Contiguous);
  auto gpcont = at::empty_like(g, at::MemoryFormat::Contiguous);
  auto gboot = at::empty_like(b, at::MemoryFormat::Contiguous);
  check_launch("lambda_return_backward",
               cuda::lambda_return_backward(
                   kernel_dtype("lambda_return_backward", g.scalar_type()),
                   g.const_data_ptr(), v.const_data_ptr(), p.const_data_ptr(),
                   b.const_data_ptr(), r.const_data_ptr(), greward.mutable_data_ptr(),
                   gvalue.mutable_data_ptr(), gpcont.mutable_data_ptr(),
                   gboot.mutable_data_ptr(), lambda, T, N,
                   current_stream()));
  return {greward, gvalue, gpcont, gboot};
}

}  // namespace

TORCH_LIBRARY_IMPL(dreamer_fast, CUDA, m) {
  m.impl("reverse_scan", &reverse_scan_cuda);
  m.impl("reverse_scan_backward", &reverse_scan_backward_cuda);
  m.impl("lambda_return", &lambda_return_cuda);
  m.impl("lambda_return_backward", &lambda_return_backward_cuda);
}

}  // namespace dreamer_fast
