// CPU launchers of the dense-layer epilogue (dense_math.h): parallel over rows.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "common/cpu_common.h"
#include "dense/dense.h"
#include "dense/dense_math.h"

namespace dreamer_fast {
namespace dense {
namespace {

template <typename scalar_t>
const scalar_t* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t ? t->const_data_ptr<scalar_t>() : nullptr;
}

}  // namespace

void epilogue_forward_cpu(const at::Tensor& z, const Params& p, at::Tensor& out,
                          at::Tensor& stats) {
  const int64_t B = z.size(0), N = z.size(1);
  DF_DISPATCH_FLOATS(z.scalar_type(), "dense_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const auto nw = p.norm_weight ? std::optional<at::Tensor>(p.norm_weight->contiguous())
                                  : std::nullopt;
    const auto nb = p.norm_bias ? std::optional<at::Tensor>(p.norm_bias->contiguous())
                                : std::nullopt;
    const scalar_t *pz = z.const_data_ptr<scalar_t>(), *pw = ptr_or_null<scalar_t>(nw),
                   *pb = ptr_or_null<scalar_t>(nb);
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    acc_t* ps = stats.mutable_data_ptr<acc_t>();
    const acc_t eps = static_cast<acc_t>(p.eps);
    at::parallel_for(0, B, row_grain(N), [&](int64_t b0, int64_t b1) {
      for (int64_t r = b0; r < b1; ++r)
        layer::norm_act_forward_row<Cvt>(pz + r * N, pw, pb, N, p.norm, p.act, eps, po + r * N,
                                         ps + 2 * r, SerialLanes{});
    });
  });
}

void epilogue_backward_cpu(const at::Tensor& dout, const at::Tensor& z, const at::Tensor& stats,
                           const Params& p, at::Tensor* dy_sum, at::Tensor* dy_xhat_sum,
                           at::Tensor& dz) {
  const int64_t B = z.size(0), N = z.size(1);
  DF_DISPATCH_FLOATS(z.scalar_type(), "dense_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const auto nw = p.norm_weight ? std::optional<at::Tensor>(p.norm_weight->contiguous())
                                  : std::nullopt;
    const auto nb = p.norm_bias ? std::optional<at::Tensor>(p.norm_bias->contiguous())
                                : std::nullopt;
    const scalar_t *pg = dout.const_data_ptr<scalar_t>(), *pz = z.const_data_ptr<scalar_t>(),
                   *pw = ptr_or_null<scalar_t>(nw), *pb = ptr_or_null<scalar_t>(nb);
    const acc_t* ps = stats.const_data_ptr<acc_t>();
    auto zeroed = [](at::Tensor* t) { return t ? t->zero_().mutable_data_ptr<acc_t>() : nullptr; };
    ColumnSums<acc_t> sum_dy(zeroed(dy_sum), N), sum_dyx(zeroed(dy_xhat_sum), N);
    scalar_t* pdz = dz.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, row_grain(3 * N), [&](int64_t b0, int64_t b1) {
      auto t_dy = sum_dy.task();
      auto t_dyx = sum_dyx.task();
      // dy / dy_xhat rows even where their sums are not wanted: with every row output
      // present the row function takes its branch-free variant
      std::vector<acc_t> scratch(2 * N);
      acc_t* pdy = t_dy.row_ptr() ? t_dy.row_ptr() : scratch.data();
      acc_t* pdyx = t_dyx.row_ptr() ? t_dyx.row_ptr() : scratch.data() + N;
      for (int64_t r = b0; r < b1; ++r) {
        layer::norm_act_backward_row<Cvt>(pg + r * N, pz + r * N, pw, pb, ps + 2 * r, N, p.norm,
                                          p.act, pdy, pdyx, pdz + r * N, SerialLanes{});
        if (t_dy.row_ptr()) ColumnSums<acc_t>::add_row(t_dy);
        if (t_dyx.row_ptr()) ColumnSums<acc_t>::add_row(t_dyx);
      }
      sum_dy.merge(t_dy);
      sum_dyx.merge(t_dyx);
    });
  });
}

}  // namespace dense
}  // namespace dreamer_fast
