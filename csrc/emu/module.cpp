// dreamer_fast._cuda_emu: the CUDA launchers of every op family running their real
// kernel files under the host emulation (cuda_emu.h), over CPU tensors' memory. Test
// only (python_tests/test_cuda_emu.py); built whenever the CUDA toolkit's headers are
// found (CMakeLists.txt, DREAMER_FAST_CUDA_EMU).
#include <ATen/ATen.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>

#include "common/cuda_glue.h"
#include "emu/cuda_emu.h"
#include "emu/hooks.h"
#include "heads/heads_cuda.h"
#include "heads/heads_launch.h"

namespace dreamer_fast {
void bind_cuda_launchers(pybind11::module_& m);  // cuda_launchers.cpp
}

namespace {

namespace py = pybind11;
namespace df = dreamer_fast;
using at::Tensor;
using OptTensor = std::optional<Tensor>;

const void* cptr(const OptTensor& t) { return t ? t->const_data_ptr() : nullptr; }
void* mptr(const OptTensor& t) { return t ? t->mutable_data_ptr() : nullptr; }
df::cuda::Dtype dtype_of(const char* op, const Tensor& t) {
  return df::kernel_dtype(op, t.scalar_type());
}

}  // namespace

PYBIND11_MODULE(_cuda_emu, m) {
  m.doc() = "the CUDA launchers on the host emulation of their kernels (tests only)";
  df::bind_cuda_launchers(m);

  m.def("set_schedule", &df::emu::set_schedule, py::arg("mode"), py::arg("seed") = 0,
        "order of the threads between exchanges: 0 ascending, 1 descending, 2 seeded shuffle");
  m.def("schedule_mode", &df::emu::schedule_mode);
  m.def("counters", [] {
    const auto c = df::emu::counters();
    py::dict d;
    d["launches"] = c.launches;
    d["blocks"] = c.blocks;
    d["threads"] = c.threads;
    d["exchanges"] = c.exchanges;
    d["exchange_lanes"] = c.exchange_lanes;
    d["max_exchange_lanes"] = c.max_exchange_lanes;
    return d;
  });
  m.def("reset_counters", &df::emu::reset_counters);

  // ---- what the heads launchers decide from sizes ----
  m.def("heads_index_bits", &df::emu::heads_index_bits, py::arg("total"));
  m.def("heads_warp_chunks", &df::emu::heads_warp_chunks, py::arg("K"));
  // the raw interface (heads_cuda.h) on sizes only: a grid past the hardware's limit must
  // be refused before any memory is touched (the pointers are null)
  m.def(
      "gaussian_sample_forward_raw_error",
      [](int64_t R, int64_t S) {
        return static_cast<int>(df::cuda::heads::gaussian_sample_forward(
            df::cuda::Dtype::kFloat, nullptr, nullptr, nullptr, nullptr, nullptr, 0.1, 0, 0, 0,
            R, S, nullptr));
      },
      py::arg("R"), py::arg("S"));
  m.def(
      "categorical_sample_forward_raw_error",
      [](int64_t R, int64_t K) {
        return static_cast<int>(df::cuda::heads::categorical_sample_forward(
            df::cuda::Dtype::kFloat, nullptr, nullptr, nullptr, nullptr, 0.01, R, K, nullptr));
      },
      py::arg("R"), py::arg("K"));
  m.attr("cudaErrorInvalidValue") = static_cast<int>(cudaErrorInvalidValue);
  m.attr("cudaErrorInvalidConfiguration") = static_cast<int>(cudaErrorInvalidConfiguration);

  // ---- the 64-bit index kernels of the heads ----
  m.def(
      "gaussian_forward_index64",
      [](const Tensor& stats, const Tensor& noise, double min_std, Tensor& sample, Tensor& mean,
         Tensor& std_, int std_act, int mean_act, int min_std_mode) {
        const auto [R, S] = df::heads::rows_of(noise);
        df::check_launch("gaussian_forward_index64",
                         df::emu::gaussian_sample_forward_index64(
                             dtype_of("gaussian", stats), stats.const_data_ptr(),
                             noise.const_data_ptr(), sample.mutable_data_ptr(),
                             mean.mutable_data_ptr(), std_.mutable_data_ptr(), min_std, std_act,
                             mean_act, min_std_mode, R, S));
      },
      py::arg("stats"), py::arg("noise"), py::arg("min_std"), py::arg("sample"), py::arg("mean"),
      py::arg("std"), py::arg("std_act") = 0, py::arg("mean_act") = 0,
      py::arg("min_std_mode") = 0);
  m.def(
      "gaussian_backward_index64",
      [](const OptTensor& g_sample, const OptTensor& g_mean, const OptTensor& g_std,
         const Tensor& stats, const Tensor& noise, double min_std, Tensor& g_stats,
         Tensor& g_noise, int std_act, int mean_act, int min_std_mode) {
        const auto [R, S] = df::heads::rows_of(noise);
        df::check_launch("gaussian_backward_index64",
                         df::emu::gaussian_sample_backward_index64(
                             dtype_of("gaussian", stats), cptr(g_sample), cptr(g_mean),
                             cptr(g_std), stats.const_data_ptr(), noise.const_data_ptr(),
                             g_stats.mutable_data_ptr(), g_noise.mutable_data_ptr(), min_std,
                             std_act, mean_act, min_std_mode, R, S));
      },
      py::arg("g_sample"), py::arg("g_mean"), py::arg("g_std"), py::arg("stats"),
      py::arg("noise"), py::arg("min_std"), py::arg("g_stats"), py::arg("g_noise"),
      py::arg("std_act") = 0, py::arg("mean_act") = 0, py::arg("min_std_mode") = 0);
  m.def(
      "normal_action_forward_index64",
      [](const Tensor& raw, const Tensor& noise, bool tanh_normal, double min_std,
         double std_range, double std_offset, double mean_scale, Tensor& action) {
        const auto [R, A] = df::heads::rows_of(noise);
        df::check_launch("normal_action_forward_index64",
                         df::emu::normal_action_forward_index64(
                             dtype_of("normal_action", raw), raw.const_data_ptr(),
                             noise.const_data_ptr(), action.mutable_data_ptr(), tanh_normal,
                             min_std, std_range, std_offset, mean_scale, R, A));
      },
      py::arg("raw"), py::arg("noise"), py::arg("tanh_normal"), py::arg("min_std"),
      py::arg("std_range"), py::arg("std_offset"), py::arg("mean_scale"), py::arg("action"));
  m.def(
      "normal_action_backward_index64",
      [](const Tensor& raw, const Tensor& noise, const Tensor& g_action, bool tanh_normal,
         double min_std, double std_range, double std_offset, double mean_scale, Tensor& g_raw) {
        const auto [R, A] = df::heads::rows_of(noise);
        df::check_launch("normal_action_backward_index64",
                         df::emu::normal_action_backward_index64(
                             dtype_of("normal_action", raw), raw.const_data_ptr(),
                             noise.const_data_ptr(), g_action.const_data_ptr(),
                             g_raw.mutable_data_ptr(), tanh_normal, min_std, std_range,
                             std_offset, mean_scale, R, A));
      },
      py::arg("raw"), py::arg("noise"), py::arg("g_action"), py::arg("tanh_normal"),
      py::arg("min_std"), py::arg("std_range"), py::arg("std_offset"), py::arg("mean_scale"),
      py::arg("g_raw"));

  // ---- the shared row functions under a multi-lane policy ----
  m.def(
      "ln_gru_forward_lanes",
      [](int lanes, const Tensor& parts, const Tensor& hx, const Tensor& gamma,
         const Tensor& beta, double eps, double update_bias, Tensor& hy, Tensor& stats) {
        df::check_launch("ln_gru_forward_lanes",
                         df::emu::ln_gru_forward_lanes(
                             lanes, dtype_of("ln_gru", hx), parts.const_data_ptr(),
                             hx.const_data_ptr(), gamma.const_data_ptr(), beta.const_data_ptr(),
                             eps, update_bias, hy.mutable_data_ptr(), stats.mutable_data_ptr(),
                             hx.size(0), hx.size(1)));
      },
      py::arg("lanes"), py::arg("parts"), py::arg("hx"), py::arg("gamma"), py::arg("beta"),
      py::arg("eps"), py::arg("update_bias"), py::arg("hy"), py::arg("stats"));
  m.def(
      "ln_gru_backward_lanes",
      [](int lanes, const Tensor& grad_hy, const Tensor& parts, const Tensor& hx,
         const Tensor& gamma, const Tensor& beta, const Tensor& stats, double update_bias,
         Tensor& dy, Tensor& dy_xhat, Tensor& dparts, Tensor& dh_direct) {
        df::check_launch("ln_gru_backward_lanes",
                         df::emu::ln_gru_backward_lanes(
                             lanes, dtype_of("ln_gru", hx), grad_hy.const_data_ptr(),
                             parts.const_data_ptr(), hx.const_data_ptr(), gamma.const_data_ptr(),
                             beta.const_data_ptr(), stats.const_data_ptr(), update_bias,
                             dy.mutable_data_ptr(), dy_xhat.mutable_data_ptr(),
                             dparts.mutable_data_ptr(), dh_direct.mutable_data_ptr(), hx.size(0),
                             hx.size(1)));
      },
      py::arg("lanes"), py::arg("grad_hy"), py::arg("parts"), py::arg("hx"), py::arg("gamma"),
      py::arg("beta"), py::arg("stats"), py::arg("update_bias"), py::arg("dy"),
      py::arg("dy_xhat"), py::arg("dparts"), py::arg("dh_direct"));
  m.def(
      "norm_act_forward_lanes",
      [](int lanes, const Tensor& z, const OptTensor& w, const OptTensor& b, int norm, int act,
         double eps, Tensor& out, Tensor& stats) {
        df::check_launch("norm_act_forward_lanes",
                         df::emu::norm_act_forward_lanes(
                             lanes, dtype_of("norm_act", z), z.const_data_ptr(), cptr(w), cptr(b),
                             z.size(0), z.size(1), norm, act, eps, out.mutable_data_ptr(),
                             stats.mutable_data_ptr()));
      },
      py::arg("lanes"), py::arg("z"), py::arg("w"), py::arg("b"), py::arg("norm"), py::arg("act"),
      py::arg("eps"), py::arg("out"), py::arg("stats"));
  m.def(
      "norm_act_backward_lanes",
      [](int lanes, const Tensor& dout, const Tensor& z, const OptTensor& w, const OptTensor& b,
         const Tensor& stats, int norm, int act, OptTensor dy, OptTensor dy_xhat, Tensor& dz) {
        df::check_launch("norm_act_backward_lanes",
                         df::emu::norm_act_backward_lanes(
                             lanes, dtype_of("norm_act", z), dout.const_data_ptr(),
                             z.const_data_ptr(), cptr(w), cptr(b), stats.const_data_ptr(),
                             z.size(0), z.size(1), norm, act, mptr(dy), mptr(dy_xhat),
                             dz.mutable_data_ptr()));
      },
      py::arg("lanes"), py::arg("dout"), py::arg("z"), py::arg("w"), py::arg("b"),
      py::arg("stats"), py::arg("norm"), py::arg("act"), py::arg("dy"), py::arg("dy_xhat"),
      py::arg("dz"));

  // ---- self-tests of the emulation (each raises the launch failure as a RuntimeError) ----
  m.def("selftest_shuffles", [](Tensor& out) {
    df::check_launch("selftest_shuffles", df::emu::selftest_shuffles(out.data_ptr<int32_t>()));
  });
  m.def("selftest_syncthreads", [](Tensor& out) {
    df::check_launch("selftest_syncthreads",
                     df::emu::selftest_syncthreads(out.data_ptr<int32_t>(),
                                                   static_cast<int>(out.numel())));
  });
  m.def("selftest_warp_handoff", [](Tensor& buf, Tensor& out, bool with_sync) {
    df::check_launch("selftest_warp_handoff",
                     df::emu::selftest_warp_handoff(buf.data_ptr<int32_t>(),
                                                    out.data_ptr<int32_t>(), with_sync));
  });
  m.def("selftest_coords", [](Tensor& out, std::vector<unsigned> grid, std::vector<unsigned> block) {
    df::check_launch("selftest_coords",
                     df::emu::selftest_coords(out.data_ptr<int64_t>(), grid.at(0), grid.at(1),
                                              grid.at(2), block.at(0), block.at(1), block.at(2)));
  });
  m.def("selftest_invalid", [](int which, Tensor& out) {
    df::check_launch("selftest_invalid", df::emu::selftest_invalid(which, out.data_ptr<int32_t>()));
  });
  m.def("selftest_launch_config", [](unsigned grid, unsigned threads) {
    df::check_launch("selftest_launch_config", df::emu::selftest_launch_config(grid, threads));
  });
}
