// CPU launchers of the scan ops: tiles of 256 columns, parallel over tiles with
// at::parallel_for; the recurrences themselves come from scan_math.h.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_common.h"
#include "scan_checks.h"
#include "scan_math.h"

namespace dreamer_fast {
namespace {

constexpr int kTile = 256;

// Calls fn(n0, width) for every tile of columns, in parallel when the work is big
// enough to pay for waking the thread pool (~32k element-steps per task).
template <typename Fn>
void for_each_tile(int64_t T, int64_t N, const Fn& fn) {
  const int64_t tiles = (N + kTile - 1) / kTile;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, T * kTile));
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n0 = tile * kTile;
      fn(n0, static_cast<int>(std::min<int64_t>(kTile, N - n0)));
    }
  });
}


at::Tensor reverse_scan_cpu(const at::Tensor& inputs, const at::Tensor& decay,
                            const at::Tensor& init) {
  auto [T, N] = check_scan_args("reverse_scan", {{"inputs", &inputs}, {"decay", &decay}},
                                "init", init);
  auto x = inputs.contiguous(), d = decay.contiguous(), r0 = init.contiguous();
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  DF_DISPATCH_FLOATS(x.scalar_type(), "reverse_scan_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *px = x.const_data_ptr<scalar_t>(), *pd = d.const_data_ptr<scalar_t>(),
                   *pi = r0.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    for_each_tile(T, N, [&](int64_t n0, int width) {
      scan::reverse_scan_forward_tile<kTile, Cvt, scalar_t, acc_t>(px, pd, pi, po, T, N, n0,
                                                                   width);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reverse_scan_backward_cpu(
    const at::Tensor& grad, const at::Tensor& decay, const at::Tensor& init,
    const at::Tensor& out) {
  auto [T, N] = check_scan_args("reverse_scan_backward",
                                {{"grad", &grad}, {"decay", &decay}, {"out", &out}}, "init",
                                init);
  auto g = grad.contiguous(), d = decay.contiguous(), r0 = init.contiguous(),
       r = out.contiguous();
  auto ginputs = at::empty_like(g, at::MemoryFormat::Contiguous);
  auto gdecay = at::empty_like(g, at::MemoryFormat::Contiguous);
  auto ginit = at::empty_like(r0, at::MemoryFormat::Contiguous);
  DF_DISPATCH_FLOATS(g.scalar_type(), "reverse_scan_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *pg = g.const_data_ptr<scalar_t>(), *pd = d.const_data_ptr<scalar_t>(),
                   *pi = r0.const_data_ptr<scalar_t>(), *pr = r.const_data_ptr<scalar_t>();
    scalar_t *pgx = ginputs.mutable_data_ptr<scalar_t>(),
             *pgd = gdecay.mutable_data_ptr<scalar_t>(),
             *pgi = ginit.mutable_data_ptr<scalar_t>();
    for_each_tile(T, N, [&](int64_t n0, int width) {
      scan::reverse_scan_backward_tile<kTile, Cvt, scalar_t, acc_t>(pg, pd, pi, pr, pgx, pgd,
                                                                    pgi, T, N, n0, width);
    });
  });
  return {ginputs, gdecay, ginit};
}

at::Tensor lambda_return_cpu(const at::Tensor& reward, const at::Tensor& value,
                             const at::Tensor& pcont, const at::Tensor& bootstrap,
                             double lambda) {
  check_lambda("lambda_return", lambda);
  auto [T, N] = check_scan_args("lambda_return",
                                {{"reward", &reward}, {"value", &value}, {"pcont", &pcont}},
                                "bootstrap", bootstrap);
  auto r = reward.contiguous(), v = value.contiguous(), p = pcont.contiguous(),
       b = bootstrap.contiguous();
  auto out = at::empty_like(r, at::MemoryFormat::Contiguous);
  DF_DISPATCH_FLOATS(r.scalar_type(), "lambda_return_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *pr = r.const_data_ptr<scalar_t>(), *pv = v.const_data_ptr<scalar_t>(),
                   *pp = p.const_data_ptr<scalar_t>(), *pb = b.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const acc_t lam = static_cast<acc_t>(lambda);
    for_each_tile(T, N, [&](int64_t n0, int width) {
      scan::lambda_return_forward_tile<kTile, Cvt, scalar_t, acc_t>(pr, pv, pp, pb, po, lam, T,
                                                                    N, n0, width);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lambda_return_backward_cpu(
    const at::Tensor& grad, const at::Tensor& value, const at::Tensor& pcont,
    const at::Tensor& bootstrap, const at::Tensor& out, double lambda) {
  check_lambda("lambda_return_backward", lambda);
  auto [T, N] = check_scan_args(
      "lambda_return_backward",
      {{"grad", &grad}, {"value", &value}, {"pcont", &pcont}, {"out", &out}}, "bootstrap",
      bootstrap);
  auto g = grad.contiguous(), v = value.contiguous(), p = pcont.contiguous(),
       b = bootstrap.contiguous(), r = out.contiguous();
  auto greward = at::empty_like(g, at::MemoryFormat::Contiguous);
  auto gvalue = at::empty_like(g, at::MemoryFormat::Contiguous);
  auto gpcont = at::empty_like(g, at::MemoryFormat::Contiguous);
  auto gboot = at::empty_like(b, at::MemoryFormat::Contiguous);
  DF_DISPATCH_FLOATS(g.scalar_type(), "lambda_return_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *pg = g.const_data_ptr<scalar_t>(), *pv = v.const_data_ptr<scalar_t>(),
                   *pp = p.const_data_ptr<scalar_t>(), *pb = b.const_data_ptr<scalar_t>(),
                   *pr = r.const_data_ptr<scalar_t>();
    scalar_t *pgr = greward.mutable_data_ptr<scalar_t>(),
             *pgv = gvalue.mutable_data_ptr<scalar_t>(),
             *pgp = gpcont.mutable_data_ptr<scalar_t>(),
             *pgb = gboot.mutable_data_ptr<scalar_t>();
    const acc_t lam = static_cast<acc_t>(lambda);
    for_each_tile(T, N, [&](int64_t n0, int width) {
      scan::lambda_return_backward_tile<kTile, Cvt, scalar_t, acc_t>(
          pg, pv, pp, pb, pr, pgr, pgv, pgp, pgb, lam, T, N, n0, width);
    });
  });
  return {greward, gvalue, gpcont, gboot};
}

}  // namespace

TORCH_LIBRARY_IMPL(dreamer_fast, CPU, m) {
  m.impl("reverse_scan", &reverse_scan_cpu);
  m.impl("reverse_scan_backward", &reverse_scan_backward_cpu);
  m.impl("lambda_return", &lambda_return_cpu);
  m.impl("lambda_return_backward", &lambda_return_backward_cpu);
}

}  // namespace dreamer_fast
