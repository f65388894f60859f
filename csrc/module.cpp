// dreamer_fast._C: the operator namespace torch.ops.dreamer_fast and the Python module,
// which exposes a few build facts. Each op family registers its schemas and its CPU /
// CUDA kernels in its own folder; autograd and fake (meta) kernels are registered in
// Python (dreamer_fast/ops/).
#include <pybind11/pybind11.h>
#include <torch/library.h>

// The one definition of the operator namespace; every op family adds its schemas with
// TORCH_LIBRARY_FRAGMENT next to its implementation (scan/, cells/, dense/, heads/, rssm/).
TORCH_LIBRARY(dreamer_fast, m) {}

#include <cstdint>

namespace dreamer_fast::gemm {
int product_threads(int64_t M, int64_t K, int64_t N);  // common/gemm.cpp
}

#ifdef DREAMER_FAST_WITH_CUDA
namespace dreamer_fast {
void bind_cuda_launchers(pybind11::module_& m);  // cuda_launchers.cpp
}
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "dreamer_fast native kernels (operators live in torch.ops.dreamer_fast)";
  m.def("gemm_product_threads", &dreamer_fast::gemm::product_threads, pybind11::arg("M"),
        pybind11::arg("K"), pybind11::arg("N"),
        "The intra-op threads our CPU ops give a [M, K] x [K, N] product (common/gemm.h).");
#ifdef DREAMER_FAST_WITH_CUDA
  m.attr("cuda_kernels_built") = true;
  // every CUDA launcher on its own, for the tests that compare the device with the host
  // emulation of the same kernels (python_tests/test_cuda_emu.py)
  pybind11::module_ launchers = m.def_submodule("cuda_launchers", "the CUDA launchers, one by one");
  dreamer_fast::bind_cuda_launchers(launchers);
#else
  m.attr("cuda_kernels_built") = false;
#endif
}
