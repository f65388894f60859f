// CPU launchers of the distribution-head kernels: parallel over rows with
// at::parallel_for; the per-element / per-row math comes from heads_math.h.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>

#include "cpu_common.h"
#include "heads_launch.h"
#include "heads_math.h"

namespace dreamer_fast {
namespace heads {
namespace {

// Calls fn(begin, end) over row ranges, in parallel when the work pays for waking
// the thread pool.
template <typename Fn>
void for_each_row_range(int64_t rows, int64_t row_len, const Fn& fn) {
  if (rows == 0) return;
  at::parallel_for(0, rows, row_grain(row_len), fn);
}

template <typename scalar_t>
const scalar_t* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

}  // namespace

void gaussian_forward_cpu(const at::Tensor& stats, const at::Tensor& noise, double min_std,
                          at::Tensor& sample, at::Tensor& mean, at::Tensor& std_) {
  const auto [R, S] = rows_of(noise);
  DF_DISPATCH_FLOATS(stats.scalar_type(), "gaussian_sample_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *ps = stats.const_data_ptr<scalar_t>(), *pn = noise.const_data_ptr<scalar_t>();
    scalar_t *po = sample.mutable_data_ptr<scalar_t>(), *pm = mean.mutable_data_ptr<scalar_t>(),
             *pd = std_.mutable_data_ptr<scalar_t>();
    const acc_t ms = static_cast<acc_t>(min_std);
    for_each_row_range(R, 3 * S, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        DF_SIMD
        for (int64_t j = 0; j < S; ++j)
          gaussian_forward_element<Cvt, scalar_t, acc_t>(ps, pn, po, pm, pd, ms, S, r, j);
    });
  });
}

void gaussian_backward_cpu(const at::Tensor& g_sample, const at::Tensor& g_mean,
                           const at::Tensor& g_std, const at::Tensor& stats,
                           const at::Tensor& noise, double min_std, at::Tensor& g_stats,
                           at::Tensor& g_noise) {
  const auto [R, S] = rows_of(noise);
  DF_DISPATCH_FLOATS(stats.scalar_type(), "gaussian_sample_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *ps = stats.const_data_ptr<scalar_t>(), *pn = noise.const_data_ptr<scalar_t>();
    const scalar_t *pgs = optional_ptr<scalar_t>(g_sample), *pgm = optional_ptr<scalar_t>(g_mean),
                   *pgd = optional_ptr<scalar_t>(g_std);
    scalar_t *pgst = g_stats.mutable_data_ptr<scalar_t>(),
             *pgn = g_noise.mutable_data_ptr<scalar_t>();
    const acc_t ms = static_cast<acc_t>(min_std);
    for_each_row_range(R, 3 * S, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        DF_SIMD
        for (int64_t j = 0; j < S; ++j)
          gaussian_backward_element<Cvt, scalar_t, acc_t>(pgs, pgm, pgd, ps, pn, pgst, pgn, ms,
                                                          S, r, j);
    });
  });
}

void categorical_forward_cpu(const at::Tensor& logits, const at::Tensor& uniform, double unimix,
                             at::Tensor& probs, at::Tensor& sample) {
  const auto [R, K] = rows_of(logits);
  DF_DISPATCH_FLOATS(logits.scalar_type(), "categorical_sample_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *pl = logits.const_data_ptr<scalar_t>(),
                   *pu = uniform.const_data_ptr<scalar_t>();
    scalar_t *ps = sample.mutable_data_ptr<scalar_t>(), *pp = probs.mutable_data_ptr<scalar_t>();
    const acc_t keep = static_cast<acc_t>(1.0 - unimix);
    const acc_t floor = static_cast<acc_t>(unimix / static_cast<double>(K));
    for_each_row_range(R, K, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(K);
      for (int64_t r = begin; r < end; ++r)
        categorical_forward_row<Cvt, scalar_t, acc_t>(pl + r * K, pu[r], pp + r * K, ps + r * K,
                                                      buf.data(), K, keep, floor);
    });
  });
}

void categorical_backward_cpu(const at::Tensor& g_sample, const at::Tensor& g_probs,
                              const at::Tensor& logits, double unimix, at::Tensor& g_logits) {
  const auto [R, K] = rows_of(logits);
  DF_DISPATCH_FLOATS(logits.scalar_type(), "categorical_sample_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t* pl = logits.const_data_ptr<scalar_t>();
    const scalar_t *pgs = optional_ptr<scalar_t>(g_sample), *pgp = optional_ptr<scalar_t>(g_probs);
    scalar_t* pg = g_logits.mutable_data_ptr<scalar_t>();
    const acc_t keep = static_cast<acc_t>(1.0 - unimix);
    for_each_row_range(R, K, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(K);
      for (int64_t r = begin; r < end; ++r)
        categorical_backward_row<Cvt, scalar_t, acc_t>(pgs ? pgs + r * K : nullptr,
                                                       pgp ? pgp + r * K : nullptr, pl + r * K,
                                                       pg + r * K, buf.data(), K, keep);
    });
  });
}

}  // namespace heads
}  // namespace dreamer_fast
