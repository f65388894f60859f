// CPU launchers of the recurrent-cell math in cells_math.h: parallel over batch rows.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "common/cpu_common.h"
#include "cells/cells_launch.h"
#include "cells/cells_math.h"

namespace dreamer_fast {
namespace cells {

void gru_forward_cpu(const at::Tensor& gi, const at::Tensor& gh, const at::Tensor& hx,
                     at::Tensor& hy, at::Tensor& workspace) {
  const int64_t B = hx.size(0), H = hx.size(1);
  DF_DISPATCH_FLOATS(hx.scalar_type(), "gru_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *pgi = gi.const_data_ptr<scalar_t>(), *pgh = gh.const_data_ptr<scalar_t>(),
                   *ph = hx.const_data_ptr<scalar_t>();
    scalar_t *py = hy.mutable_data_ptr<scalar_t>(), *pw = workspace.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, row_grain(4 * H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        gru_forward_row<Cvt, scalar_t, acc_t>(pgi, pgh, ph, py, pw, b, H);
    });
  });
}

void gru_backward_cpu(const at::Tensor& grad_hy, const at::Tensor& workspace,
                      const at::Tensor& hx, at::Tensor& dgi, at::Tensor& dgh,
                      at::Tensor& dh_direct) {
  const int64_t B = hx.size(0), H = hx.size(1);
  DF_DISPATCH_FLOATS(hx.scalar_type(), "gru_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *pg = grad_hy.const_data_ptr<scalar_t>(),
                   *pw = workspace.const_data_ptr<scalar_t>(), *ph = hx.const_data_ptr<scalar_t>();
    scalar_t *pdgi = dgi.mutable_data_ptr<scalar_t>(), *pdgh = dgh.mutable_data_ptr<scalar_t>(),
             *pdh = dh_direct.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, row_grain(7 * H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        gru_backward_row<Cvt, scalar_t, acc_t>(pg, pw, ph, pdgi, pdgh, pdh, b, H);
    });
  });
}

void ln_gru_forward_cpu(const at::Tensor& parts, const at::Tensor& hx, const at::Tensor& gamma,
                        const at::Tensor& beta, double eps, double update_bias, at::Tensor& hy,
                        at::Tensor& stats) {
  const int64_t B = hx.size(0), H = hx.size(1);
  DF_DISPATCH_FLOATS(hx.scalar_type(), "ln_gru_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *pp = parts.const_data_ptr<scalar_t>(), *ph = hx.const_data_ptr<scalar_t>(),
                   *pg = gamma.const_data_ptr<scalar_t>(), *pb = beta.const_data_ptr<scalar_t>();
    scalar_t* py = hy.mutable_data_ptr<scalar_t>();
    acc_t* ps = stats.mutable_data_ptr<acc_t>();
    const acc_t e = static_cast<acc_t>(eps), ub = static_cast<acc_t>(update_bias);
    at::parallel_for(0, B, row_grain(4 * H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        ln_gru_forward_row<Cvt>(pp + b * 3 * H, ph + b * H, pg, pb, e, ub, H, py + b * H,
                                ps + 2 * b, SerialLanes{});
    });
  });
}

void ln_gru_backward_cpu(const at::Tensor& grad_hy, const at::Tensor& parts,
                         const at::Tensor& hx, const at::Tensor& gamma, const at::Tensor& beta,
                         const at::Tensor& stats, double update_bias, at::Tensor& dy_sum,
                         at::Tensor& dy_xhat_sum, at::Tensor& dparts, at::Tensor& dh_direct) {
  const int64_t B = hx.size(0), H = hx.size(1);
  DF_DISPATCH_FLOATS(hx.scalar_type(), "ln_gru_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *pgy = grad_hy.const_data_ptr<scalar_t>(),
                   *pp = parts.const_data_ptr<scalar_t>(), *ph = hx.const_data_ptr<scalar_t>(),
                   *pg = gamma.const_data_ptr<scalar_t>(), *pb = beta.const_data_ptr<scalar_t>();
    const acc_t* ps = stats.const_data_ptr<acc_t>();
    ColumnSums<acc_t> sum_dy(dy_sum.zero_().mutable_data_ptr<acc_t>(), 3 * H),
        sum_dyx(dy_xhat_sum.zero_().mutable_data_ptr<acc_t>(), 3 * H);
    scalar_t *pdp = dparts.mutable_data_ptr<scalar_t>(),
             *pdh = dh_direct.mutable_data_ptr<scalar_t>();
    const acc_t ub = static_cast<acc_t>(update_bias);
    at::parallel_for(0, B, row_grain(12 * H), [&](int64_t b0, int64_t b1) {
      auto t_dy = sum_dy.task();
      auto t_dyx = sum_dyx.task();
      for (int64_t b = b0; b < b1; ++b) {
        ln_gru_backward_row<Cvt>(pgy + b * H, pp + b * 3 * H, ph + b * H, pg, pb, ps + 2 * b,
                                 ub, H, t_dy.row_ptr(), t_dyx.row_ptr(), pdp + b * 3 * H,
                                 pdh + b * H, SerialLanes{});
        ColumnSums<acc_t>::add_row(t_dy);
        ColumnSums<acc_t>::add_row(t_dyx);
      }
      sum_dy.merge(t_dy);
      sum_dyx.merge(t_dyx);
    });
  });
}

void block_gru_forward_cpu(const at::Tensor& parts, const at::Tensor& hx, int64_t blocks,
                           double update_bias, at::Tensor& hy) {
  const int64_t B = hx.size(0), D = hx.size(1), Dg = D / blocks;
  DF_DISPATCH_FLOATS(hx.scalar_type(), "block_gru_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *pp = parts.const_data_ptr<scalar_t>(), *ph = hx.const_data_ptr<scalar_t>();
    scalar_t* py = hy.mutable_data_ptr<scalar_t>();
    const acc_t ub = static_cast<acc_t>(update_bias);
    at::parallel_for(0, B, row_grain(4 * D), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        block_gru_forward_row<Cvt, scalar_t, acc_t>(pp, ph, py, ub, b, D, Dg);
    });
  });
}

void block_gru_backward_cpu(const at::Tensor& grad_hy, const at::Tensor& parts,
                            const at::Tensor& hx, int64_t blocks, double update_bias,
                            at::Tensor& dparts, at::Tensor& dh_direct) {
  const int64_t B = hx.size(0), D = hx.size(1), Dg = D / blocks;
  DF_DISPATCH_FLOATS(hx.scalar_type(), "block_gru_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *pg = grad_hy.const_data_ptr<scalar_t>(),
                   *pp = parts.const_data_ptr<scalar_t>(), *ph = hx.const_data_ptr<scalar_t>();
    scalar_t *pdp = dparts.mutable_data_ptr<scalar_t>(),
             *pdh = dh_direct.mutable_data_ptr<scalar_t>();
    const acc_t ub = static_cast<acc_t>(update_bias);
    at::parallel_for(0, B, row_grain(6 * D), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        block_gru_backward_row<Cvt, scalar_t, acc_t>(pg, pp, ph, pdp, pdh, ub, b, D, Dg);
    });
  });
}

}  // namespace cells
}  // namespace dreamer_fast
