// Math of a dense layer's epilogue, `a = act(norm(z))`, forward and backward, per row,
// shared by the CPU launcher and the CUDA kernels (see common/scalar_math.h for the Lanes policy:
// one lane per row on the CPU, a warp per row on the GPU).
//
//   z  [N]  the linear output x W^T + b (the GEMM runs outside)
//   norm:  kNone   y = z
//          kLayer  y = (z − mean) · rstd · w + b,   rstd = 1 / sqrt(var + eps)
//          kRms    y = z · rstd · w,                rstd = 1 / sqrt(mean(z²) + eps)
//   act:   none, silu (x σ(x)), elu (x > 0 ? x : eᵡ − 1), tanh, gelu (exact, erf),
//          sigmoid
// Saved for backward: z and the per-row (mean, rstd) in acc_t; y is recomputed.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/scalar_math.h"

namespace dreamer_fast {
namespace layer {

enum Norm : int { kNone = 0, kLayer = 1, kRms = 2 };
enum Act : int { kIdentity = 0, kSilu = 1, kElu = 2, kTanh = 3, kGelu = 4, kSigmoid = 5 };

template <typename acc_t>
DF_HOST_DEVICE acc_t act_forward(int act, acc_t y) {
  switch (act) {
    case kSilu: return y * sigmoid<acc_t>(y);
    // exp of min(y, 0) on every element, then the select: a call made on every lane
    // lets the CPU loop use the vector exp (a call inside the branch would stay scalar,
    // ~7x slower); min keeps it finite where the other side is taken
    case kElu: {
      const acc_t e = df_exp(y > acc_t(0) ? acc_t(0) : y);
      return y > acc_t(0) ? y : e - acc_t(1);
    }
    case kTanh: return df_tanh(y);
    case kGelu: return acc_t(0.5) * y * (acc_t(1) + df_erf(y * acc_t(0.70710678118654752440)));
    case kSigmoid: return sigmoid<acc_t>(y);
    default: return y;
  }
}

// d act(y) / d y
template <typename acc_t>
DF_HOST_DEVICE acc_t act_derivative(int act, acc_t y) {
  switch (act) {
    case kSilu: {
      const acc_t s = sigmoid<acc_t>(y);
      return s * (acc_t(1) + y * (acc_t(1) - s));
    }
    case kElu: {  // as in act_forward: the exp on every lane
      const acc_t e = df_exp(y > acc_t(0) ? acc_t(0) : y);
      return y > acc_t(0) ? acc_t(1) : e;
    }
    case kTanh: {
      const acc_t t = df_tanh(y);
      return acc_t(1) - t * t;
    }
    case kGelu: {
      const acc_t cdf = acc_t(0.5) * (acc_t(1) + df_erf(y * acc_t(0.70710678118654752440)));
      const acc_t pdf = df_exp(acc_t(-0.5) * y * y) * acc_t(0.39894228040143267794);
      return cdf + y * pdf;
    }
    case kSigmoid: {
      const acc_t s = sigmoid<acc_t>(y);
      return s * (acc_t(1) - s);
    }
    default: return acc_t(1);
  }
}

// Row statistics: (mean, rstd) for kLayer, (0, rstd) for kRms, (0, 1) for kNone.
template <typename Cvt, typename Lanes, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void norm_stats_row(const scalar_t* DF_RESTRICT z, int64_t N, int norm,
                                   acc_t eps, acc_t* mean_out, acc_t* rstd_out,
                                   const Lanes& lanes) {
  acc_t mean = 0, rstd = 1;
  if (norm == kLayer) {
    acc_t s = 0;
    DF_SIMD_SUM(s)
    for (int64_t k = lanes.lane; k < N; k += lanes.count) s += Cvt::load(z[k]);
    mean = lanes.sum(s) / acc_t(N);
    acc_t sq = 0;  // two-pass variance
    DF_SIMD_SUM(sq)
    for (int64_t k = lanes.lane; k < N; k += lanes.count) {
      const acc_t d = Cvt::load(z[k]) - mean;
      sq += d * d;
    }
    rstd = df_rsqrt(lanes.sum(sq) / acc_t(N) + eps);
  } else if (norm == kRms) {
    acc_t sq = 0;
    DF_SIMD_SUM(sq)
    for (int64_t k = lanes.lane; k < N; k += lanes.count) {
      const acc_t v = Cvt::load(z[k]);
      sq += v * v;
    }
    rstd = df_rsqrt(lanes.sum(sq) / acc_t(N) + eps);
  }
  *mean_out = mean;
  *rstd_out = rstd;
}

// y = norm(z) at column k (w, b may be null when the norm has no such parameter).
template <typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE acc_t norm_apply(acc_t z, int norm, acc_t mean, acc_t rstd,
                                const scalar_t* w, const scalar_t* b, int64_t k) {
  if (norm == kNone) return z;
  acc_t y = (z - mean) * rstd;
  if (w) y *= Cvt::load(w[k]);
  if (b) y += Cvt::load(b[k]);
  return y;
}

// Calls fn(std::integral_constant-like tag) with the activation as a compile-time
// constant, so the per-element loops carry no switch (and vectorise on the CPU).
template <int A>
struct ActTag {
  static constexpr int value = A;
};
template <typename Fn>
DF_HOST_DEVICE void with_act(int act, const Fn& fn) {
  switch (act) {
    case kSilu: fn(ActTag<kSilu>{}); break;
    case kElu: fn(ActTag<kElu>{}); break;
    case kTanh: fn(ActTag<kTanh>{}); break;
    case kGelu: fn(ActTag<kGelu>{}); break;
    case kSigmoid: fn(ActTag<kSigmoid>{}); break;
    default: fn(ActTag<kIdentity>{}); break;
  }
}

// Forward of one row: out[k] = act(norm(z[k])); stats = (mean, rstd).
template <int ACT, typename Cvt, typename Lanes, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void norm_act_forward_row_t(const scalar_t* DF_RESTRICT z,
                                           const scalar_t* DF_RESTRICT w,
                                           const scalar_t* DF_RESTRICT b, int64_t N, int norm,
                                           acc_t eps, scalar_t* DF_RESTRICT out,
                                           acc_t* DF_RESTRICT stats, const Lanes& lanes) {
  constexpr int act = ACT;
  acc_t mean, rstd;
  norm_stats_row<Cvt>(z, N, norm, eps, &mean, &rstd, lanes);
  DF_SIMD
  for (int64_t k = lanes.lane; k < N; k += lanes.count) {
    const acc_t y = norm_apply<Cvt>(Cvt::load(z[k]), norm, mean, rstd, w, b, k);
    out[k] = Cvt::store(act_forward<acc_t>(act, y));
  }
  if (lanes.lane == 0) {
    stats[0] = mean;
    stats[1] = rstd;
  }
}

template <typename Cvt, typename Lanes, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void norm_act_forward_row(const scalar_t* DF_RESTRICT z,
                                         const scalar_t* DF_RESTRICT w,
                                         const scalar_t* DF_RESTRICT b, int64_t N, int norm,
                                         int act, acc_t eps, scalar_t* DF_RESTRICT out,
                                         acc_t* DF_RESTRICT stats, const Lanes& lanes) {
  with_act(act, [&](auto tag) {
    norm_act_forward_row_t<decltype(tag)::value, Cvt>(z, w, b, N, norm, eps, out, stats, lanes);
  });
}

// Backward of one row. Given d out, writes
//   dy [N] (acc_t)       dL/dy (y = norm output)   -> d b = Σ_rows dy   (kLayer)
//   dy_xhat [N] (acc_t)  dy ⊙ x̂                    -> d w = Σ_rows dy ⊙ x̂
//   dz [N]               kNone: dy;  kRms: rstd (ĝ − x̂ mean(ĝ x̂));
//                        kLayer: rstd (ĝ − mean(ĝ) − x̂ mean(ĝ x̂)),  ĝ = dy ⊙ w
// dy / dy_xhat may be null when no norm parameter needs a gradient.
//
// FLAGS says at compile time which of w (1), b (2), dy (4), dy_xhat (8) are present;
// kRuntimeFlags tests the pointers in the loops instead. Known flags give branch-free
// loops the CPU compiler vectorises cleanly; the
// second pass then reads dy back (each lane reads only its own columns) instead of
// evaluating the activation derivative again.
constexpr int kRuntimeFlags = -1;

template <int ACT, int FLAGS, typename Cvt, typename Lanes, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void norm_act_backward_row_t(const scalar_t* DF_RESTRICT dout,
                                            const scalar_t* DF_RESTRICT z,
                                            const scalar_t* DF_RESTRICT w,
                                            const scalar_t* DF_RESTRICT b,
                                            const acc_t* DF_RESTRICT stats, int64_t N, int norm,
                                            acc_t* DF_RESTRICT dy, acc_t* DF_RESTRICT dy_xhat,
                                            scalar_t* DF_RESTRICT dz, const Lanes& lanes) {
  constexpr int act = ACT;
  constexpr bool runtime = FLAGS == kRuntimeFlags;
  const bool has_w = runtime ? w != nullptr : (FLAGS & 1) != 0;
  const bool has_b = runtime ? b != nullptr : (FLAGS & 2) != 0;
  const bool has_dy = runtime ? dy != nullptr : (FLAGS & 4) != 0;
  const bool has_dyx = runtime ? dy_xhat != nullptr : (FLAGS & 8) != 0;
  const acc_t mean = stats[0], rstd = stats[1];
  if (norm == kNone) {
    DF_SIMD
    for (int64_t k = lanes.lane; k < N; k += lanes.count) {
      const acc_t zk = Cvt::load(z[k]);
      dz[k] = Cvt::store(Cvt::load(dout[k]) * act_derivative<acc_t>(act, zk));
    }
    return;
  }
  acc_t sum_g = 0, sum_gx = 0;
  DF_SIMD_SUM(sum_g, sum_gx)
  for (int64_t k = lanes.lane; k < N; k += lanes.count) {
    const acc_t xhat = (Cvt::load(z[k]) - mean) * rstd;
    const acc_t wk = has_w ? Cvt::load(w[k]) : acc_t(1);
    const acc_t y = xhat * wk + (has_b ? Cvt::load(b[k]) : acc_t(0));
    const acc_t d = Cvt::load(dout[k]) * act_derivative<acc_t>(act, y);
    if (has_dy) dy[k] = d;
    if (has_dyx) dy_xhat[k] = d * xhat;
    const acc_t g = d * wk;
    sum_g += g;
    sum_gx += g * xhat;
  }
  const acc_t mean_g = norm == kLayer ? lanes.sum(sum_g) / acc_t(N) : acc_t(0);
  const acc_t mean_gx = lanes.sum(sum_gx) / acc_t(N);
  DF_SIMD
  for (int64_t k = lanes.lane; k < N; k += lanes.count) {
    const acc_t xhat = (Cvt::load(z[k]) - mean) * rstd;
    const acc_t wk = has_w ? Cvt::load(w[k]) : acc_t(1);
    acc_t d;
    if (!runtime && has_dy) {
      d = dy[k];
    } else {
      const acc_t y = xhat * wk + (has_b ? Cvt::load(b[k]) : acc_t(0));
      d = Cvt::load(dout[k]) * act_derivative<acc_t>(act, y);
    }
    dz[k] = Cvt::store(rstd * (d * wk - mean_g - xhat * mean_gx));
  }
}

template <typename Cvt, typename Lanes, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void norm_act_backward_row(const scalar_t* DF_RESTRICT dout,
                                          const scalar_t* DF_RESTRICT z,
                                          const scalar_t* DF_RESTRICT w,
                                          const scalar_t* DF_RESTRICT b,
                                          const acc_t* DF_RESTRICT stats, int64_t N, int norm,
                                          int act, acc_t* DF_RESTRICT dy,
                                          acc_t* DF_RESTRICT dy_xhat,
                                          scalar_t* DF_RESTRICT dz, const Lanes& lanes) {
  with_act(act, [&](auto tag) {
    constexpr int A = decltype(tag)::value;
    // the two common cases: affine LayerNorm (w, b) and RMSNorm (w) with every row
    // output present (the CPU launcher always passes a dy row)
    if (w && b && dy && dy_xhat)
      norm_act_backward_row_t<A, 15, Cvt>(dout, z, w, b, stats, N, norm, dy, dy_xhat, dz, lanes);
    else if (w && !b && dy && dy_xhat)
      norm_act_backward_row_t<A, 13, Cvt>(dout, z, w, b, stats, N, norm, dy, dy_xhat, dz, lanes);
    else
      norm_act_backward_row_t<A, kRuntimeFlags, Cvt>(dout, z, w, b, stats, N, norm, dy, dy_xhat,
                                                     dz, lanes);
  });
}

}  // namespace layer
}  // namespace dreamer_fast
