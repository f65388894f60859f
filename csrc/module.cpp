// dreamer_fast._C: registers the operator schemas (torch.ops.dreamer_fast.*) and
// exposes a few build facts to Python. Kernels are registered per backend in
// scan_cpu.cpp / scan_cuda.cpp; autograd and fake (meta) kernels in Python.
#include <pybind11/pybind11.h>
#include <torch/library.h>

// All scan ops are time-major: sequences are [T, *batch], init/bootstrap [*batch].
TORCH_LIBRARY(dreamer_fast, m) {
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

PYBIND11_MODULE(_C, m) {
  m.doc() = "dreamer_fast native kernels (operators live in torch.ops.dreamer_fast)";
#ifdef DREAMER_FAST_WITH_CUDA
  m.attr("cuda_kernels_built") = true;
#else
  m.attr("cuda_kernels_built") = false;
#endif
}
