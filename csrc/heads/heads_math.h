// Math of the distribution heads: the Gaussian sample (mean/std from `stats`) and
// the straight-through categorical sample with a uniform mix (DreamerV3's
// "unimix" latents).
//
// This header is the single definition of that math. The CPU launcher
// (heads_cpu.cpp, at::parallel_for over rows) and the CUDA kernels
// (heads_cuda_kernels.cu: one thread per Gaussian element; one thread or one warp
// per categorical row) both call it, so the CPU tests exercise the arithmetic the
// GPU runs. It includes only <cmath>/<cstdint>: the .cu file that uses it is
// compiled by nvcc without any torch header.
//
// `acc_t` is the accumulation type (float for float/half/bfloat16, double for
// double). `Cvt` converts storage <-> accumulation type:
//   static acc_t Cvt::load(scalar_t);  static scalar_t Cvt::store(acc_t).
//
// Layouts (all contiguous, row-major):
//   Gaussian:    stats [R, 2S] = [mean_0 .. mean_{S-1}, raw_0 .. raw_{S-1}] per row,
//                noise / sample / mean / std [R, S].
//   Categorical: logits / probs / sample [R, K] (R = prod(batch) * G), uniform [R].
#pragma once

#include <cmath>
#include <cstdint>

#include "common/math_macros.h"

namespace dreamer_fast {
namespace heads {

// ---------------------------------------------------------------------------
// Scalar helpers (float and double overloads, host and device)
// ---------------------------------------------------------------------------

DF_HOST_DEVICE float exp_acc(float x) { return ::expf(x); }
DF_HOST_DEVICE double exp_acc(double x) { return ::exp(x); }
DF_HOST_DEVICE float log1p_acc(float x) { return ::log1pf(x); }
DF_HOST_DEVICE double log1p_acc(double x) { return ::log1p(x); }

// a * b and a + b, each rounded on its own: nvcc would otherwise contract
// `a * b + c` into one fma, which rounds once and so differs in the last bit from
// the reference's two PyTorch ops. (Host builds are compiled with
// -ffp-contract=off, see CMakeLists.txt, so the host compiler never contracts.)
DF_HOST_DEVICE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
DF_HOST_DEVICE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
DF_HOST_DEVICE float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
DF_HOST_DEVICE double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// ---------------------------------------------------------------------------
// Gaussian head:  m, raw = stats.chunk(2, -1);
//                 mean = mean_act(m);  std = std_act(raw) + min_std;
//                 sample = mean + std * noise.
// with (the options of dreamerv3-torch's RSSM, `mean_act` / `std_act`):
//   mean_act   kMeanNone:      m
//              kMeanTanh5:     5 · tanh(m / 5)
//   std_act    kStdSoftplus:   softplus(raw)            (DreamerV1/V2, our default)
//              kStdAbs:        |raw + 1|
//              kStdSigmoid:    σ(raw)
//              kStdSigmoid2:   2 · σ(raw / 2)
// and min_std added (kMinStdAdd) or a lower bound, max(std_act(raw), min_std)
// (kMinStdClamp: TorchRL's NormalParamExtractor, torch.clamp_min's gradient: passed
// where std_act(raw) >= min_std, 0 below).
// ---------------------------------------------------------------------------

enum GaussianStdAct : int { kStdSoftplus = 0, kStdAbs = 1, kStdSigmoid = 2, kStdSigmoid2 = 3 };
enum GaussianMeanAct : int { kMeanNone = 0, kMeanTanh5 = 1 };
enum GaussianMinStdMode : int { kMinStdAdd = 0, kMinStdClamp = 1 };

// torch.nn.functional.softplus with beta = 1, threshold = 20: the identity above
// the threshold, log1p(exp(x)) otherwise.
template <typename acc_t>
DF_HOST_DEVICE acc_t softplus(acc_t x) {
  return x > acc_t(20) ? x : log1p_acc(exp_acc(x));
}

// Its derivative as torch's softplus_backward computes it: 1 above the threshold,
// z / (z + 1) with z = exp(x) otherwise (x <= 20, so z cannot overflow).
template <typename acc_t>
DF_HOST_DEVICE acc_t softplus_grad(acc_t x) {
  if (x > acc_t(20)) return acc_t(1);
  const acc_t z = exp_acc(x);
  return z / (z + acc_t(1));
}

DF_HOST_DEVICE float tanh_acc(float x) { return ::tanhf(x); }
DF_HOST_DEVICE double tanh_acc(double x) { return ::tanh(x); }

template <typename acc_t>
DF_HOST_DEVICE acc_t sigmoid_acc(acc_t x) {
  return acc_t(1) / (acc_t(1) + exp_acc(-x));
}

// The head's constants in the accumulation type.
template <typename acc_t>
struct GaussianHead {
  acc_t min_std;
  int std_act, mean_act, min_std_mode;
};

// std_act(raw), each step rounded as the reference's PyTorch ops round it.
template <typename acc_t>
DF_HOST_DEVICE acc_t gaussian_std_act(acc_t raw, const GaussianHead<acc_t>& h) {
  acc_t s;
  switch (h.std_act) {
    case kStdAbs: {
      const acc_t x = add_rn(raw, acc_t(1));
      s = x < acc_t(0) ? -x : x;
      break;
    }
    case kStdSigmoid: s = sigmoid_acc(raw); break;
    case kStdSigmoid2: s = mul_rn(acc_t(2), sigmoid_acc(raw / acc_t(2))); break;
    default: s = softplus(raw);
  }
  return s;
}

// std = std_act(raw) + min_std, or max(std_act(raw), min_std) (a NaN stays NaN, as in
// torch.clamp_min).
template <typename acc_t>
DF_HOST_DEVICE acc_t gaussian_std(acc_t raw, const GaussianHead<acc_t>& h) {
  const acc_t s = gaussian_std_act(raw, h);
  if (h.min_std_mode == kMinStdClamp) return s < h.min_std ? h.min_std : s;
  return add_rn(s, h.min_std);
}

// d std_act / d raw. abs: torch's sign(raw + 1), 0 at the kink.
template <typename acc_t>
DF_HOST_DEVICE acc_t gaussian_std_act_grad(acc_t raw, const GaussianHead<acc_t>& h) {
  switch (h.std_act) {
    case kStdAbs: {
      const acc_t x = add_rn(raw, acc_t(1));
      return x > acc_t(0) ? acc_t(1) : (x < acc_t(0) ? acc_t(-1) : acc_t(0));
    }
    case kStdSigmoid: {
      const acc_t s = sigmoid_acc(raw);
      return s * (acc_t(1) - s);
    }
    case kStdSigmoid2: {  // 2 · σ'(raw / 2) · 1/2
      const acc_t s = sigmoid_acc(raw / acc_t(2));
      return s * (acc_t(1) - s);
    }
    default: return softplus_grad(raw);
  }
}

// d std / d raw: with the clamp, 0 where std_act(raw) < min_std.
template <typename acc_t>
DF_HOST_DEVICE acc_t gaussian_std_grad(acc_t raw, const GaussianHead<acc_t>& h) {
  if (h.min_std_mode == kMinStdClamp && !(gaussian_std_act(raw, h) >= h.min_std))
    return acc_t(0);
  return gaussian_std_act_grad(raw, h);
}

template <typename acc_t>
DF_HOST_DEVICE acc_t gaussian_mean(acc_t m, const GaussianHead<acc_t>& h) {
  return h.mean_act == kMeanTanh5 ? mul_rn(acc_t(5), tanh_acc(m / acc_t(5))) : m;
}

template <typename acc_t>
DF_HOST_DEVICE acc_t gaussian_mean_grad(acc_t m, const GaussianHead<acc_t>& h) {
  if (h.mean_act != kMeanTanh5) return acc_t(1);
  const acc_t t = tanh_acc(m / acc_t(5));
  return acc_t(1) - t * t;
}

// Element (r, j), r < R, j < S: writes sample, mean (an exact copy of m for
// mean_act none) and std.
template <typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void gaussian_forward_element(const scalar_t* DF_RESTRICT stats,
                                             const scalar_t* DF_RESTRICT noise,
                                             scalar_t* DF_RESTRICT sample,
                                             scalar_t* DF_RESTRICT mean,
                                             scalar_t* DF_RESTRICT std,
                                             const GaussianHead<acc_t>& h, int64_t S, int64_t r,
                                             int64_t j) {
  const int64_t i = r * S + j;
  const int64_t m_at = 2 * r * S + j;
  const acc_t sd = gaussian_std(Cvt::load(stats[m_at + S]), h);
  std[i] = Cvt::store(sd);
  if (h.mean_act == kMeanNone) {
    const scalar_t m_raw = stats[m_at];
    mean[i] = m_raw;
    sample[i] = Cvt::store(Cvt::load(m_raw) + sd * Cvt::load(noise[i]));
  } else {
    // the sample from the unrounded mean, as from the unrounded std: each output is
    // rounded to the storage type once
    const acc_t m = gaussian_mean(Cvt::load(stats[m_at]), h);
    mean[i] = Cvt::store(m);
    sample[i] = Cvt::store(m + sd * Cvt::load(noise[i]));
  }
}

// Backward of element (r, j). Each upstream gradient may be null (that output got
// no gradient); its terms are then left out, as autograd would:
//   d m     = (g_sample + g_mean) * mean_act'(m)
//   d raw   = (g_sample * noise + g_std) * std_act'(raw)
//   d noise = g_sample * std
template <typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void gaussian_backward_element(
    const scalar_t* DF_RESTRICT g_sample, const scalar_t* DF_RESTRICT g_mean,
    const scalar_t* DF_RESTRICT g_std, const scalar_t* DF_RESTRICT stats,
    const scalar_t* DF_RESTRICT noise, scalar_t* DF_RESTRICT g_stats,
    scalar_t* DF_RESTRICT g_noise, const GaussianHead<acc_t>& h, int64_t S, int64_t r,
    int64_t j) {
  const int64_t i = r * S + j;
  const int64_t m_at = 2 * r * S + j;
  const acc_t raw = Cvt::load(stats[m_at + S]);
  acc_t gm = acc_t(0), graw = acc_t(0), gn = acc_t(0);
  if (g_sample != nullptr) {
    const acc_t gs = Cvt::load(g_sample[i]);
    gm = gs;
    graw = gs * Cvt::load(noise[i]);
    gn = gs * gaussian_std(raw, h);
  }
  if (g_mean != nullptr) gm = gm + Cvt::load(g_mean[i]);
  if (g_std != nullptr) graw = graw + Cvt::load(g_std[i]);
  if (h.mean_act != kMeanNone) gm = gm * gaussian_mean_grad(Cvt::load(stats[m_at]), h);
  g_stats[m_at] = Cvt::store(gm);
  g_stats[m_at + S] = Cvt::store(graw * gaussian_std_grad(raw, h));
  g_noise[i] = Cvt::store(gn);
}

// ---------------------------------------------------------------------------
// Normal action heads of the actor (dreamer_fast/nn/actor.py) on the MLP output
// raw [R, 2A] = [raw_mean_0 .. raw_mean_{A-1}, raw_std_0 .. raw_std_{A-1}] per row,
// noise ε [R, A], action [R, A]:
//   tanh_normal (TANH):      mean = s · tanh(raw_mean / s),  s = mean_scale
//                            std  = softplus(raw_std + std_offset) + min_std
//                            action = tanh(mean + std · ε)
//   bounded_normal (!TANH):  mean = tanh(raw_mean)
//                            std  = std_range · σ(raw_std + 2) + min_std,
//                            std_range = max_std − min_std
//                            action = clip(mean + std · ε, −1, 1)
// Backward (d = d action):
//   tanh_normal:     d pre = d (1 − action²);  d raw_mean = d pre (1 − tanh²(raw_mean / s));
//                    d raw_std = d pre · ε · softplus'(raw_std + std_offset)
//   bounded_normal:  the clip is straight-through (d x = d action, as the reference's
//                    x + sg(clip(x) − x));  d raw_mean = d (1 − mean²);
//                    d raw_std = d · ε · std_range · σ (1 − σ),  σ = σ(raw_std + 2)
// ---------------------------------------------------------------------------

// The head's constants in the accumulation type. std_range is max_std − min_std taken
// in double before the conversion, as the reference's Python float is.
template <typename acc_t>
struct NormalActionHead {
  acc_t min_std, std_range, std_offset, mean_scale;
};

// The draw both directions share: t = tanh(raw_mean / s) (tanh_normal) or
// tanh(raw_mean) (bounded_normal, where t is the mean), sg = σ(raw_std + 2)
// (bounded_normal only), x = mean + std · ε (the value before the tanh / the clip).
template <typename acc_t>
struct NormalDraw {
  acc_t t, sg, x;
};

template <bool TANH, typename acc_t>
DF_HOST_DEVICE NormalDraw<acc_t> normal_action_draw(acc_t rm, acc_t rs, acc_t eps,
                                                    const NormalActionHead<acc_t>& h) {
  if (TANH) {
    const acc_t t = tanh_acc(rm / h.mean_scale);
    const acc_t sd = add_rn(softplus(add_rn(rs, h.std_offset)), h.min_std);
    return {t, acc_t(0), add_rn(mul_rn(t, h.mean_scale), mul_rn(sd, eps))};
  }
  const acc_t t = tanh_acc(rm);
  const acc_t sg = sigmoid_acc(add_rn(rs, acc_t(2)));
  return {t, sg, add_rn(t, mul_rn(add_rn(mul_rn(sg, h.std_range), h.min_std), eps))};
}

// Element (r, j), r < R, j < A.
template <bool TANH, typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void normal_action_forward_element(const scalar_t* DF_RESTRICT raw,
                                                  const scalar_t* DF_RESTRICT noise,
                                                  scalar_t* DF_RESTRICT action,
                                                  const NormalActionHead<acc_t>& h, int64_t A,
                                                  int64_t r, int64_t j) {
  const int64_t i = r * A + j, m_at = 2 * r * A + j;
  const acc_t x = normal_action_draw<TANH>(Cvt::load(raw[m_at]), Cvt::load(raw[m_at + A]),
                                           Cvt::load(noise[i]), h).x;
  // the clip lets NaN pass through, as torch.clamp does
  action[i] = Cvt::store(TANH ? tanh_acc(x)
                              : (x < acc_t(-1) ? acc_t(-1) : (x > acc_t(1) ? acc_t(1) : x)));
}

// Backward of element (r, j): writes g_raw at (r, j) and (r, A + j).
template <bool TANH, typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void normal_action_backward_element(const scalar_t* DF_RESTRICT raw,
                                                   const scalar_t* DF_RESTRICT noise,
                                                   const scalar_t* DF_RESTRICT g_action,
                                                   scalar_t* DF_RESTRICT g_raw,
                                                   const NormalActionHead<acc_t>& h, int64_t A,
                                                   int64_t r, int64_t j) {
  const int64_t i = r * A + j, m_at = 2 * r * A + j;
  const acc_t rs = Cvt::load(raw[m_at + A]);
  const acc_t eps = Cvt::load(noise[i]), g = Cvt::load(g_action[i]);
  const NormalDraw<acc_t> d = normal_action_draw<TANH>(Cvt::load(raw[m_at]), rs, eps, h);
  if (TANH) {
    const acc_t a = tanh_acc(d.x);
    const acc_t d_pre = g * (acc_t(1) - a * a);
    g_raw[m_at] = Cvt::store(d_pre * (acc_t(1) - d.t * d.t));
    g_raw[m_at + A] = Cvt::store(d_pre * eps * softplus_grad(add_rn(rs, h.std_offset)));
  } else {
    g_raw[m_at] = Cvt::store(g * (acc_t(1) - d.t * d.t));
    g_raw[m_at + A] = Cvt::store(g * eps * h.std_range * (d.sg * (acc_t(1) - d.sg)));
  }
}

// ---------------------------------------------------------------------------
// Categorical head (one row = one group of K classes):
//   probs = (1 - unimix) * softmax(logits) + unimix / K
//   index = smallest k with u < cumsum(probs)[k], clamped to K - 1
//   sample = onehot(index) + probs - stop_gradient(probs)
//
// THE INDEX SEARCH (shared bit for bit with categorical_sample_ref): `probs` are
// taken in acc_t (float32 for float32/half/bfloat16, float64 for float64), before
// any rounding to the storage type; the cumulative sum is the sequential
// c = ((p_0 + p_1) + p_2) + ... in acc_t, and u (converted to acc_t) is compared
// as `u < c`. Because p >= 0 the sums never decrease, so "smallest k with u < c_k"
// is the same as "number of k < K-1 with !(u < c_k)", which is how the reference
// writes it (a NaN row therefore gives K - 1 in both). Every launcher (CPU rows,
// CUDA thread rows, CUDA warp rows) runs exactly this chain of additions, so a
// given probs row and u always give the same index.
// ---------------------------------------------------------------------------

// Running maximum. NaN never replaces the maximum, but a NaN logit still makes its
// row NaN through exp(NaN - max) in the normaliser, as torch.softmax does.
template <typename acc_t>
DF_HOST_DEVICE acc_t max_step(acc_t m, acc_t x) {
  return x > m ? x : m;
}

// p = (e / Z) * keep + floor with keep = 1 - unimix and floor = unimix / K (both
// rounded to acc_t once, from double). Each operation rounded on its own, in the
// reference's order.
template <typename acc_t>
DF_HOST_DEVICE acc_t mix_prob(acc_t e, acc_t Z, acc_t keep, acc_t floor) {
  return add_rn(mul_rn(e / Z, keep), floor);
}

// One step of the index search: the running sum after adding p.
template <typename acc_t>
DF_HOST_DEVICE acc_t cumsum_step(acc_t c, acc_t p) {
  return add_rn(c, p);
}

// Value of the straight-through sample: (onehot + p) - p, as the reference's
// `onehot + probs - probs.detach()` computes it (exactly 0 off the index for
// finite p; 1 up to one rounding at the index).
template <typename acc_t>
DF_HOST_DEVICE acc_t straight_through(acc_t onehot, acc_t p) {
  return (onehot + p) - p;
}

// Gradient to one logit. g = g_sample + g_probs (the sample passes its gradient to
// probs); s = softmax; dot = sum_k s_k g_k over the row:
//   d logit = keep * s * (g - dot).
template <typename acc_t>
DF_HOST_DEVICE acc_t logit_grad(acc_t s, acc_t g, acc_t dot, acc_t keep) {
  return keep * s * (g - dot);
}

// g_sample[k] + g_probs[k], either of which may be null (no gradient).
template <typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE acc_t upstream_grad(const scalar_t* g_sample, const scalar_t* g_probs,
                                   int64_t k) {
  acc_t g = acc_t(0);
  if (g_sample != nullptr) g = Cvt::load(g_sample[k]);
  if (g_probs != nullptr) g = g + Cvt::load(g_probs[k]);
  return g;
}

// Forward of one row (all pointers already offset to the row). `buf` is scratch
// for K acc_t values. Returns the index. Used by the CPU launcher and by the CUDA
// thread-per-row kernel (small K); the CUDA warp kernel runs the same steps with
// the row spread over the lanes.
template <typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE int64_t categorical_forward_row(const scalar_t* DF_RESTRICT logits,
                                               scalar_t u_raw, scalar_t* DF_RESTRICT probs,
                                               scalar_t* DF_RESTRICT sample,
                                               acc_t* DF_RESTRICT buf, int64_t K,
                                               acc_t keep, acc_t floor) {
  acc_t m = Cvt::load(logits[0]);
  buf[0] = m;
  for (int64_t k = 1; k < K; ++k) {
    buf[k] = Cvt::load(logits[k]);
    m = max_step(m, buf[k]);
  }
  // exp in its own loop (vectorised on the CPU), then the sequential sum.
  DF_SIMD
  for (int64_t k = 0; k < K; ++k) buf[k] = exp_acc(buf[k] - m);
  acc_t Z = acc_t(0);
  for (int64_t k = 0; k < K; ++k) Z = Z + buf[k];
  const acc_t u = Cvt::load(u_raw);
  acc_t c = acc_t(0);
  int64_t index = K - 1;
  bool found = false;
  for (int64_t k = 0; k < K; ++k) {
    const acc_t p = mix_prob(buf[k], Z, keep, floor);
    buf[k] = p;
    probs[k] = Cvt::store(p);
    if (!found && k < K - 1) {
      c = cumsum_step(c, p);
      if (u < c) {
        index = k;
        found = true;
      }
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    sample[k] = Cvt::store(straight_through(k == index ? acc_t(1) : acc_t(0), buf[k]));
  }
  return index;
}

// Backward of one row: g_logits = keep * s * (g - sum(s * g)). `buf` as above.
template <typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void categorical_backward_row(const scalar_t* DF_RESTRICT g_sample,
                                             const scalar_t* DF_RESTRICT g_probs,
                                             const scalar_t* DF_RESTRICT logits,
                                             scalar_t* DF_RESTRICT g_logits,
                                             acc_t* DF_RESTRICT buf, int64_t K, acc_t keep) {
  acc_t m = Cvt::load(logits[0]);
  buf[0] = m;
  for (int64_t k = 1; k < K; ++k) {
    buf[k] = Cvt::load(logits[k]);
    m = max_step(m, buf[k]);
  }
  // exp in its own loop (vectorised on the CPU), then the sequential sum.
  DF_SIMD
  for (int64_t k = 0; k < K; ++k) buf[k] = exp_acc(buf[k] - m);
  acc_t Z = acc_t(0);
  for (int64_t k = 0; k < K; ++k) Z = Z + buf[k];
  acc_t dot = acc_t(0);
  for (int64_t k = 0; k < K; ++k) {
    buf[k] = buf[k] / Z;
    dot = dot + buf[k] * upstream_grad<Cvt, scalar_t, acc_t>(g_sample, g_probs, k);
  }
  for (int64_t k = 0; k < K; ++k) {
    g_logits[k] = Cvt::store(
        logit_grad(buf[k], upstream_grad<Cvt, scalar_t, acc_t>(g_sample, g_probs, k), dot, keep));
  }
}

}  // namespace heads
}  // namespace dreamer_fast
