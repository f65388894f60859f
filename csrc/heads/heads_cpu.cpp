// CPU launchers of the distribution-head kernels: parallel over rows with
// at::parallel_for; the per-element / per-row math comes from heads_math.h.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/cpu_common.h"
#include "heads/heads_launch.h"
#include "heads/heads_math.h"

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

// ---- categorical rows in blocks ------------------------------------------------------
//
// categorical_forward_row / _backward_row handle one row with loops over its K classes.
// For the small K of latent classes (8, 32) those loops are short chains of dependent
// additions and a vector exp call per row, so the CPU launcher instead takes up to
// kBlockRows rows at once, transposed into a [K][rows] scratch block: every loop then
// runs over the rows, vectorised, while each row still sees exactly the row function's
// chain of operations (the same element functions from heads_math.h, the classes in
// ascending order), so the values and the sampled index are the same bit for bit.
// Wider rows keep the row function.
constexpr int64_t kBlockRows = 32;
constexpr int64_t kMaxBlockClasses = 64;

// The shared first half of both block functions: the rows' logits transposed into
// buf [K][RB], exp(logit - row max) in place, and each row's sum Z (classes in order).
// The exp loops run over all RB lanes (rows past `rows` hold zeros): a partial block
// must not leave rows to a scalar remainder loop, whose libm exp can differ in the last
// bit from the vector one.
template <typename Cvt, typename scalar_t, typename acc_t>
void exp_block(const scalar_t* DF_RESTRICT logits, acc_t* DF_RESTRICT buf, int64_t rows,
               int64_t K, acc_t* DF_RESTRICT Z) {
  constexpr int64_t RB = kBlockRows;
  acc_t m[RB];
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < K; ++k) buf[k * RB + r] = Cvt::load(logits[r * K + k]);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t r = rows; r < RB; ++r) buf[k * RB + r] = acc_t(0);
  DF_SIMD
  for (int64_t r = 0; r < RB; ++r) m[r] = buf[r];
  for (int64_t k = 1; k < K; ++k) {
    DF_SIMD
    for (int64_t r = 0; r < RB; ++r) m[r] = max_step(m[r], buf[k * RB + r]);
  }
  for (int64_t k = 0; k < K; ++k) {
    DF_SIMD
    for (int64_t r = 0; r < RB; ++r) buf[k * RB + r] = exp_acc(buf[k * RB + r] - m[r]);
  }
  DF_SIMD
  for (int64_t r = 0; r < RB; ++r) Z[r] = acc_t(0);
  for (int64_t k = 0; k < K; ++k) {
    DF_SIMD
    for (int64_t r = 0; r < RB; ++r) Z[r] = Z[r] + buf[k * RB + r];
  }
}

template <typename Cvt, typename scalar_t, typename acc_t>
void categorical_forward_block(const scalar_t* DF_RESTRICT logits,
                               const scalar_t* DF_RESTRICT uniform,
                               scalar_t* DF_RESTRICT probs, scalar_t* DF_RESTRICT sample,
                               acc_t* DF_RESTRICT buf, int64_t rows, int64_t K, acc_t keep,
                               acc_t floor) {
  constexpr int64_t RB = kBlockRows;
  // `before[r]`: how many running sums c_k (k < K - 1) the uniform is not below. The
  // sums never decrease (p >= 0), so that count is the row function's index, the
  // smallest k with u < c_k (K - 1 if none; also for NaN rows); counting in acc_t
  // keeps every array of the loop the same width, so it vectorises.
  acc_t Z[RB], c[RB], u[RB], before[RB];
  exp_block<Cvt>(logits, buf, rows, K, Z);
  DF_SIMD
  for (int64_t r = 0; r < RB; ++r) {
    c[r] = acc_t(0);
    u[r] = r < rows ? Cvt::load(uniform[r]) : acc_t(0);
    before[r] = acc_t(0);
  }
  for (int64_t k = 0; k < K; ++k) {
    DF_SIMD
    for (int64_t r = 0; r < RB; ++r) {
      const acc_t p = mix_prob(buf[k * RB + r], Z[r], keep, floor);
      buf[k * RB + r] = p;
      c[r] = cumsum_step(c[r], p);
      before[r] = before[r] + (u[r] < c[r] ? acc_t(0) : acc_t(1));
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    // the last class's sum is not searched (the row function's `k < K - 1`)
    const acc_t last = u[r] < c[r] ? acc_t(0) : acc_t(1);
    const int64_t index = static_cast<int64_t>(before[r] - last);
    for (int64_t k = 0; k < K; ++k) {
      const acc_t p = buf[k * RB + r];
      probs[r * K + k] = Cvt::store(p);
      sample[r * K + k] = Cvt::store(straight_through(k == index ? acc_t(1) : acc_t(0), p));
    }
  }
}

template <typename Cvt, typename scalar_t, typename acc_t>
void categorical_backward_block(const scalar_t* DF_RESTRICT g_sample,
                                const scalar_t* DF_RESTRICT g_probs,
                                const scalar_t* DF_RESTRICT logits,
                                scalar_t* DF_RESTRICT g_logits, acc_t* DF_RESTRICT buf,
                                acc_t* DF_RESTRICT gbuf, int64_t rows, int64_t K, acc_t keep) {
  constexpr int64_t RB = kBlockRows;
  acc_t Z[RB], dot[RB];
  exp_block<Cvt>(logits, buf, rows, K, Z);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < K; ++k)
      gbuf[k * RB + r] = upstream_grad<Cvt, scalar_t, acc_t>(
          g_sample ? g_sample + r * K : nullptr, g_probs ? g_probs + r * K : nullptr, k);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t r = rows; r < RB; ++r) gbuf[k * RB + r] = acc_t(0);
  DF_SIMD
  for (int64_t r = 0; r < RB; ++r) dot[r] = acc_t(0);
  for (int64_t k = 0; k < K; ++k) {
    DF_SIMD
    for (int64_t r = 0; r < RB; ++r) {
      buf[k * RB + r] = buf[k * RB + r] / Z[r];
      dot[r] = dot[r] + buf[k * RB + r] * gbuf[k * RB + r];
    }
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < K; ++k)
      g_logits[r * K + k] =
          Cvt::store(logit_grad(buf[k * RB + r], gbuf[k * RB + r], dot[r], keep));
}

}  // namespace

void gaussian_forward_cpu(const at::Tensor& stats, const at::Tensor& noise,
                          const GaussianSpec& h, at::Tensor& sample, at::Tensor& mean,
                          at::Tensor& std_) {
  const auto [R, S] = rows_of(noise);
  DF_DISPATCH_FLOATS(stats.scalar_type(), "gaussian_sample_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *ps = stats.const_data_ptr<scalar_t>(), *pn = noise.const_data_ptr<scalar_t>();
    scalar_t *po = sample.mutable_data_ptr<scalar_t>(), *pm = mean.mutable_data_ptr<scalar_t>(),
             *pd = std_.mutable_data_ptr<scalar_t>();
    const GaussianHead<acc_t> g{static_cast<acc_t>(h.min_std), h.std_act, h.mean_act,
                                h.min_std_mode};
    for_each_row_range(R, 3 * S, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        DF_SIMD
        for (int64_t j = 0; j < S; ++j)
          gaussian_forward_element<Cvt, scalar_t, acc_t>(ps, pn, po, pm, pd, g, S, r, j);
    });
  });
}

void gaussian_backward_cpu(const at::Tensor& g_sample, const at::Tensor& g_mean,
                           const at::Tensor& g_std, const at::Tensor& stats,
                           const at::Tensor& noise, const GaussianSpec& h, at::Tensor& g_stats,
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
    const GaussianHead<acc_t> g{static_cast<acc_t>(h.min_std), h.std_act, h.mean_act,
                                h.min_std_mode};
    for_each_row_range(R, 3 * S, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        DF_SIMD
        for (int64_t j = 0; j < S; ++j)
          gaussian_backward_element<Cvt, scalar_t, acc_t>(pgs, pgm, pgd, ps, pn, pgst, pgn, g,
                                                          S, r, j);
    });
  });
}

namespace {

template <typename acc_t>
NormalActionHead<acc_t> head_constants(const NormalActionSpec& h) {
  return {static_cast<acc_t>(h.min_std), static_cast<acc_t>(h.std_range),
          static_cast<acc_t>(h.std_offset), static_cast<acc_t>(h.mean_scale)};
}

// Calls element(tag, r, j) for every element of an [R, A] action array, with tag a
// std::bool_constant<tanh_normal>. The loop runs over rows inside: a row's A actions
// (6 for our control tasks) are too short a vector to loop over.
template <typename Fn>
void for_each_action(int64_t R, int64_t A, int64_t row_len, bool tanh_normal,
                     const Fn& element) {
  const auto run = [&](auto tag) {
    for_each_row_range(R, row_len, [&](int64_t begin, int64_t end) {
      for (int64_t j = 0; j < A; ++j)
        DF_SIMD
        for (int64_t r = begin; r < end; ++r) element(tag, r, j);
    });
  };
  if (tanh_normal)
    run(std::true_type{});
  else
    run(std::false_type{});
}

}  // namespace

void normal_action_forward_cpu(const at::Tensor& raw, const at::Tensor& noise,
                               const NormalActionSpec& h, at::Tensor& action) {
  const auto [R, A] = rows_of(noise);
  DF_DISPATCH_FLOATS(raw.scalar_type(), "normal_action_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *pr = raw.const_data_ptr<scalar_t>(), *pn = noise.const_data_ptr<scalar_t>();
    scalar_t* pa = action.mutable_data_ptr<scalar_t>();
    const auto c = head_constants<acc_t>(h);
    for_each_action(R, A, 4 * A, h.tanh_normal, [&](auto tag, int64_t r, int64_t j) {
      normal_action_forward_element<decltype(tag)::value, Cvt>(pr, pn, pa, c, A, r, j);
    });
  });
}

void normal_action_backward_cpu(const at::Tensor& raw, const at::Tensor& noise,
                                const at::Tensor& g_action, const NormalActionSpec& h,
                                at::Tensor& g_raw) {
  const auto [R, A] = rows_of(noise);
  DF_DISPATCH_FLOATS(raw.scalar_type(), "normal_action_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *pr = raw.const_data_ptr<scalar_t>(), *pn = noise.const_data_ptr<scalar_t>(),
                   *pg = g_action.const_data_ptr<scalar_t>();
    scalar_t* pd = g_raw.mutable_data_ptr<scalar_t>();
    const auto c = head_constants<acc_t>(h);
    for_each_action(R, A, 6 * A, h.tanh_normal, [&](auto tag, int64_t r, int64_t j) {
      normal_action_backward_element<decltype(tag)::value, Cvt>(pr, pn, pg, pd, c, A, r, j);
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
    if (K <= kMaxBlockClasses) {
      const int64_t blocks = (R + kBlockRows - 1) / kBlockRows;
      for_each_row_range(blocks, K * kBlockRows, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> buf(K * kBlockRows);
        for (int64_t b = begin; b < end; ++b) {
          const int64_t r = b * kBlockRows, n = std::min(kBlockRows, R - r);
          categorical_forward_block<Cvt, scalar_t, acc_t>(pl + r * K, pu + r, pp + r * K,
                                                          ps + r * K, buf.data(), n, K, keep,
                                                          floor);
        }
      });
      return;
    }
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
    if (K <= kMaxBlockClasses) {
      const int64_t blocks = (R + kBlockRows - 1) / kBlockRows;
      for_each_row_range(blocks, K * kBlockRows, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> buf(K * kBlockRows), gbuf(K * kBlockRows);
        for (int64_t b = begin; b < end; ++b) {
          const int64_t r = b * kBlockRows, n = std::min(kBlockRows, R - r);
          categorical_backward_block<Cvt, scalar_t, acc_t>(
              pgs ? pgs + r * K : nullptr, pgp ? pgp + r * K : nullptr, pl + r * K, pg + r * K,
              buf.data(), gbuf.data(), n, K, keep);
        }
      });
      return;
    }
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
