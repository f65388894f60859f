// Schemas and CPU launchers of the distribution-head ops: gaussian_sample and
// categorical_sample (forward and backward), parallel over rows with
// at::parallel_for. The per-element / per-row math comes from heads_math.h.
//
// The schemas live here (a TORCH_LIBRARY_FRAGMENT next to module.cpp's
// TORCH_LIBRARY) so the ops are self-contained; autograd and fake kernels are
// registered in dreamer_fast/ops/heads.py.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "cpu_common.h"
#include "heads_checks.h"
#include "heads_math.h"

namespace dreamer_fast {
namespace {


#define DF_HEADS_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Calls fn(begin, end) over row ranges, in parallel when the work pays for waking
// the thread pool (~32k elements per task).
template <typename Fn>
void for_each_row_range(int64_t rows, int64_t row_len, const Fn& fn) {
  if (rows == 0) return;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_len));
  at::parallel_for(0, rows, grain, fn);
}

template <typename scalar_t>
const scalar_t* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->contiguous() : at::Tensor();
}

// ---- Gaussian ---------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_sample_cpu(const at::Tensor& stats,
                                                                   const at::Tensor& noise,
                                                                   double min_std) {
  auto [R, S] = check_gaussian_args("gaussian_sample", stats, noise, min_std);
  auto st = stats.contiguous(), nz = noise.contiguous();
  auto sample = at::empty_like(nz, at::MemoryFormat::Contiguous);
  auto mean = at::empty_like(nz, at::MemoryFormat::Contiguous);
  auto std_ = at::empty_like(nz, at::MemoryFormat::Contiguous);
  DF_HEADS_DISPATCH_FLOATS(st.scalar_type(), "gaussian_sample_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *ps = st.const_data_ptr<scalar_t>(), *pn = nz.const_data_ptr<scalar_t>();
    scalar_t *po = sample.mutable_data_ptr<scalar_t>(), *pm = mean.mutable_data_ptr<scalar_t>(),
             *pd = std_.mutable_data_ptr<scalar_t>();
    const acc_t ms = static_cast<acc_t>(min_std);
    for_each_row_range(R, 3 * S, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t j = 0; j < S; ++j) {
          heads::gaussian_forward_element<Cvt, scalar_t, acc_t>(ps, pn, po, pm, pd, ms, S, r, j);
        }
      }
    });
  });
  return {sample, mean, std_};
}

std::tuple<at::Tensor, at::Tensor> gaussian_sample_backward_cpu(
    const std::optional<at::Tensor>& grad_sample, const std::optional<at::Tensor>& grad_mean,
    const std::optional<at::Tensor>& grad_std, const at::Tensor& stats,
    const at::Tensor& noise, double min_std) {
  const char* op = "gaussian_sample_backward";
  auto [R, S] = check_gaussian_args(op, stats, noise, min_std);
  check_optional_head_tensor(op, "grad_sample", grad_sample, noise.sizes(), "stats", stats);
  check_optional_head_tensor(op, "grad_mean", grad_mean, noise.sizes(), "stats", stats);
  check_optional_head_tensor(op, "grad_std", grad_std, noise.sizes(), "stats", stats);
  auto st = stats.contiguous(), nz = noise.contiguous();
  auto gs = contiguous_or_undefined(grad_sample), gm = contiguous_or_undefined(grad_mean),
       gd = contiguous_or_undefined(grad_std);
  auto g_stats = at::empty_like(st, at::MemoryFormat::Contiguous);
  auto g_noise = at::empty_like(nz, at::MemoryFormat::Contiguous);
  DF_HEADS_DISPATCH_FLOATS(st.scalar_type(), "gaussian_sample_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *ps = st.const_data_ptr<scalar_t>(), *pn = nz.const_data_ptr<scalar_t>();
    const scalar_t *pgs = optional_ptr<scalar_t>(gs), *pgm = optional_ptr<scalar_t>(gm),
                   *pgd = optional_ptr<scalar_t>(gd);
    scalar_t *pgst = g_stats.mutable_data_ptr<scalar_t>(),
             *pgn = g_noise.mutable_data_ptr<scalar_t>();
    const acc_t ms = static_cast<acc_t>(min_std);
    for_each_row_range(R, 3 * S, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t j = 0; j < S; ++j) {
          heads::gaussian_backward_element<Cvt, scalar_t, acc_t>(pgs, pgm, pgd, ps, pn, pgst,
                                                                 pgn, ms, S, r, j);
        }
      }
    });
  });
  return {g_stats, g_noise};
}

// ---- Categorical ------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> categorical_sample_cpu(const at::Tensor& logits,
                                                          const at::Tensor& uniform,
                                                          double unimix) {
  const char* op = "categorical_sample";
  auto [R, K] = check_categorical_logits(op, logits, unimix);
  check_head_tensor(op, "uniform", uniform, logits.sizes().slice(0, logits.dim() - 1), "logits",
                    logits);
  auto lg = logits.contiguous(), un = uniform.contiguous();
  auto sample = at::empty_like(lg, at::MemoryFormat::Contiguous);
  auto probs = at::empty_like(lg, at::MemoryFormat::Contiguous);
  DF_HEADS_DISPATCH_FLOATS(lg.scalar_type(), "categorical_sample_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t *pl = lg.const_data_ptr<scalar_t>(), *pu = un.const_data_ptr<scalar_t>();
    scalar_t *ps = sample.mutable_data_ptr<scalar_t>(), *pp = probs.mutable_data_ptr<scalar_t>();
    const acc_t keep = static_cast<acc_t>(1.0 - unimix);
    const acc_t floor = static_cast<acc_t>(unimix / static_cast<double>(K));
    for_each_row_range(R, K, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(K);
      for (int64_t r = begin; r < end; ++r) {
        heads::categorical_forward_row<Cvt, scalar_t, acc_t>(pl + r * K, pu[r], pp + r * K,
                                                             ps + r * K, buf.data(), K, keep,
                                                             floor);
      }
    });
  });
  return {sample, probs};
}

at::Tensor categorical_sample_backward_cpu(const std::optional<at::Tensor>& grad_sample,
                                           const std::optional<at::Tensor>& grad_probs,
                                           const at::Tensor& logits, double unimix) {
  const char* op = "categorical_sample_backward";
  auto [R, K] = check_categorical_logits(op, logits, unimix);
  check_optional_head_tensor(op, "grad_sample", grad_sample, logits.sizes(), "logits", logits);
  check_optional_head_tensor(op, "grad_probs", grad_probs, logits.sizes(), "logits", logits);
  auto lg = logits.contiguous();
  auto gs = contiguous_or_undefined(grad_sample), gp = contiguous_or_undefined(grad_probs);
  auto g_logits = at::empty_like(lg, at::MemoryFormat::Contiguous);
  DF_HEADS_DISPATCH_FLOATS(lg.scalar_type(), "categorical_sample_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Cvt = CpuCvt<scalar_t, acc_t>;
    const scalar_t* pl = lg.const_data_ptr<scalar_t>();
    const scalar_t *pgs = optional_ptr<scalar_t>(gs), *pgp = optional_ptr<scalar_t>(gp);
    scalar_t* pg = g_logits.mutable_data_ptr<scalar_t>();
    const acc_t keep = static_cast<acc_t>(1.0 - unimix);
    for_each_row_range(R, K, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(K);
      for (int64_t r = begin; r < end; ++r) {
        heads::categorical_backward_row<Cvt, scalar_t, acc_t>(
            pgs ? pgs + r * K : nullptr, pgp ? pgp + r * K : nullptr, pl + r * K, pg + r * K,
            buf.data(), K, keep);
      }
    });
  });
  return g_logits;
}

}  // namespace

// Schemas of the head ops (the scan ops' are in module.cpp). Shapes:
//   gaussian_sample:    stats [..., 2S], noise [..., S] -> sample, mean, std [..., S]
//   categorical_sample: logits [..., G, K], uniform [..., G] -> sample, probs [..., G, K]
// Backward ops take the upstream gradient of every output, each optional (None =
// that output got no gradient).
TORCH_LIBRARY_FRAGMENT(dreamer_fast, m) {
  m.def("gaussian_sample(Tensor stats, Tensor noise, float min_std) -> (Tensor, Tensor, Tensor)");
  m.def(
      "gaussian_sample_backward(Tensor? grad_sample, Tensor? grad_mean, Tensor? grad_std, "
      "Tensor stats, Tensor noise, float min_std) -> (Tensor, Tensor)");
  m.def("categorical_sample(Tensor logits, Tensor uniform, float unimix) -> (Tensor, Tensor)");
  m.def(
      "categorical_sample_backward(Tensor? grad_sample, Tensor? grad_probs, Tensor logits, "
      "float unimix) -> Tensor");
}

TORCH_LIBRARY_IMPL(dreamer_fast, CPU, m) {
  m.impl("gaussian_sample", &gaussian_sample_cpu);
  m.impl("gaussian_sample_backward", &gaussian_sample_backward_cpu);
  m.impl("categorical_sample", &categorical_sample_cpu);
  m.impl("categorical_sample_backward", &categorical_sample_backward_cpu);
}

}  // namespace dreamer_fast
