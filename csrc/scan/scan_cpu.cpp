// CPU launchers of the scan ops: tiles of 256 columns, parallel over tiles with
// at::parallel_for; the recurrences themselves come from scan_math.h.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "common/cpu_common.h"
#include "scan/scan_launch.h"
#include "scan/scan_math.h"

namespace dreamer_fast {
namespace scan {
namespace {

constexpr int kTile = 256;

// Calls fn(n0, width) for every tile of columns, in parallel when the work is big
// enough to pay for a parallel region (>= kMinTaskElements element-steps per task; see
// parallel_grain.h).
template <typename Fn>
void for_each_tile(int64_t T, int64_t N, const Fn& fn) {
  const int64_t tiles = (N + kTile - 1) / kTile;
  at::parallel_for(0, tiles, task_grain(T * kTile), [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n0 = tile * kTile;
      fn(n0, static_cast<int>(std::min<int64_t>(kTile, N - n0)));
    }
  });
}

}  // namespace

void reverse_scan_forward_cpu(const at::Tensor& inputs, const at::Tensor& decay,
                              const at::Tensor& init, at::Tensor& out, int64_t T, int64_t N) {
  DF_DISPATCH_FLOATS(inputs.scalar_type(), "reverse_scan_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *px = inputs.const_data_ptr<scalar_t>(), *pd = decay.const_data_ptr<scalar_t>(),
                   *pi = init.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    for_each_tile(T, N, [&](int64_t n0, int width) {
      reverse_scan_forward_tile<kTile, Cvt, scalar_t, acc_t>(px, pd, pi, po, T, N, n0, width);
    });
  });
}

void reverse_scan_backward_cpu(const at::Tensor& grad, const at::Tensor& decay,
                               const at::Tensor& init, const at::Tensor& out,
                               at::Tensor& ginputs, at::Tensor& gdecay, at::Tensor& ginit,
                               int64_t T, int64_t N) {
  DF_DISPATCH_FLOATS(grad.scalar_type(), "reverse_scan_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *pg = grad.const_data_ptr<scalar_t>(), *pd = decay.const_data_ptr<scalar_t>(),
                   *pi = init.const_data_ptr<scalar_t>(), *pr = out.const_data_ptr<scalar_t>();
    scalar_t *pgx = ginputs.mutable_data_ptr<scalar_t>(),
             *pgd = gdecay.mutable_data_ptr<scalar_t>(), *pgi = ginit.mutable_data_ptr<scalar_t>();
    for_each_tile(T, N, [&](int64_t n0, int width) {
      reverse_scan_backward_tile<kTile, Cvt, scalar_t, acc_t>(pg, pd, pi, pr, pgx, pgd, pgi, T, N,
                                                              n0, width);
    });
  });
}

void lambda_return_forward_cpu(const at::Tensor& reward, const at::Tensor& value,
                               const at::Tensor& pcont, const at::Tensor& bootstrap,
                               double lambda, at::Tensor& out, int64_t T, int64_t N) {
  DF_DISPATCH_FLOATS(reward.scalar_type(), "lambda_return_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *pr = reward.const_data_ptr<scalar_t>(), *pv = value.const_data_ptr<scalar_t>(),
                   *pp = pcont.const_data_ptr<scalar_t>(),
                   *pb = bootstrap.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const acc_t lam = static_cast<acc_t>(lambda);
    for_each_tile(T, N, [&](int64_t n0, int width) {
      lambda_return_forward_tile<kTile, Cvt, scalar_t, acc_t>(pr, pv, pp, pb, po, lam, T, N, n0,
                                                              width);
    });
  });
}

void lambda_return_backward_cpu(const at::Tensor& grad, const at::Tensor& value,
                                const at::Tensor& pcont, const at::Tensor& bootstrap,
                                const at::Tensor& out, double lambda, at::Tensor& greward,
                                at::Tensor& gvalue, at::Tensor& gpcont, at::Tensor& gbootstrap,
                                int64_t T, int64_t N) {
  DF_DISPATCH_FLOATS(grad.scalar_type(), "lambda_return_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *pg = grad.const_data_ptr<scalar_t>(), *pv = value.const_data_ptr<scalar_t>(),
                   *pp = pcont.const_data_ptr<scalar_t>(),
                   *pb = bootstrap.const_data_ptr<scalar_t>(), *pr = out.const_data_ptr<scalar_t>();
    scalar_t *pgr = greward.mutable_data_ptr<scalar_t>(), *pgv = gvalue.mutable_data_ptr<scalar_t>(),
             *pgp = gpcont.mutable_data_ptr<scalar_t>(),
             *pgb = gbootstrap.mutable_data_ptr<scalar_t>();
    const acc_t lam = static_cast<acc_t>(lambda);
    for_each_tile(T, N, [&](int64_t n0, int width) {
      lambda_return_backward_tile<kTile, Cvt, scalar_t, acc_t>(pg, pv, pp, pb, pr, pgr, pgv, pgp,
                                                               pgb, lam, T, N, n0, width);
    });
  });
}

}  // namespace scan
}  // namespace dreamer_fast
