// The latent and action heads of the sequence ops, and copy_transposed (see rssm_model.h).
#include "rssm/rssm_model.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "common/device_launch.h"
#include "common/gemm.h"
#include "common/parallel_grain.h"
#include "dense/dense_math.h"
#include "heads/heads_launch.h"

namespace dreamer_fast {
namespace rssm {

// ---- layout ----------------------------------------------------------------------------

void copy_transposed(const Tensor& dst, const Tensor& src) {
  TORCH_INTERNAL_ASSERT(src.dim() == 2 && dst.dim() == 2 && dst.size(0) == src.size(1) &&
                        dst.size(1) == src.size(0));
  const bool blocked = src.device().is_cpu() && dst.device().is_cpu() && src.is_contiguous() &&
                       dst.stride(1) == 1 && src.scalar_type() == dst.scalar_type() &&
                       (src.scalar_type() == at::kFloat || src.scalar_type() == at::kDouble);
  if (!blocked) {
    dst.copy_(src.t());
    return;
  }
  RECORD_FUNCTION("dreamer_fast::launch::copy_transposed", std::vector<c10::IValue>());
  const int64_t R = src.size(0), C = src.size(1), ld = dst.stride(0);
  // kTile x kTile tiles: a tile's source rows stay in L1 while its columns are written
  // out as contiguous destination rows. ATen's copy of the transposed view walks whole
  // source columns instead.
  constexpr int64_t kTile = 16;
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "copy_transposed", [&] {
    const scalar_t* s = src.const_data_ptr<scalar_t>();
    scalar_t* d = dst.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, (R + kTile - 1) / kTile, task_grain(kTile * C), [&](int64_t t0, int64_t t1) {
      for (int64_t r0 = t0 * kTile; r0 < std::min(R, t1 * kTile); r0 += kTile) {
        const int64_t r1 = std::min(R, r0 + kTile);
        for (int64_t c0 = 0; c0 < C; c0 += kTile) {
          const int64_t c1 = std::min(C, c0 + kTile);
          for (int64_t c = c0; c < c1; ++c)
            for (int64_t r = r0; r < r1; ++r) d[c * ld + r] = s[r * C + c];
        }
      }
    });
  });
}

// ---- latent heads ------------------------------------------------------------------

namespace {
heads::GaussianSpec gaussian_spec(const Spec& s) {
  heads::GaussianSpec h;
  h.min_std = s.min_std;
  h.std_act = s.std_act;
  h.mean_act = s.mean_act;
  h.min_std_mode = s.min_std_mode;
  return h;
}
}  // namespace

HeadOut latent_forward(const Spec& s, const Tensor& stats_in, const Tensor& noise_in) {
  const Tensor stats = stats_in.contiguous(), noise = noise_in.contiguous();
  const int64_t R = stats.size(0), S = s.stoch;
  HeadOut o;
  if (s.classes) {
    const int64_t K = s.classes;
    const Tensor lg = stats.view({R * S, K});
    Tensor probs = at::empty_like(lg), sample = at::empty_like(lg);
    DF_DEVICE_LAUNCH(heads, categorical_forward, lg, lg, noise.view({R * S}), s.unimix, probs,
                  sample);
    o.sample = sample.view({R, S * K});
    o.a = stats;
    return o;
  }
  o.sample = at::empty({R, S}, stats.options());
  o.a = at::empty({R, S}, stats.options());
  o.b = at::empty({R, S}, stats.options());
  DF_DEVICE_LAUNCH(heads, gaussian_forward, stats, stats, noise, gaussian_spec(s), o.sample, o.a,
                   o.b);
  return o;
}

Tensor latent_backward(const Spec& s, const Tensor& stats_in, const Tensor& noise_in,
                       const Tensor& g_sample, const Tensor& g_a, const Tensor& g_b) {
  const Tensor stats = stats_in.contiguous(), noise = noise_in.contiguous();
  const int64_t R = stats.size(0), S = s.stoch;
  if (s.classes) {
    const int64_t K = s.classes;
    // d logits = (straight-through sample grad through the softmax) + d logit output
    Tensor d;
    if (g_sample.defined()) {
      const Tensor lg = stats.view({R * S, K});
      d = at::empty_like(lg);
      DF_DEVICE_LAUNCH(heads, categorical_backward, lg, g_sample.contiguous().view({R * S, K}),
                       Tensor(), lg, s.unimix, d);
      d = d.view({R, S * K});
    }
    if (g_a.defined()) {
      const Tensor ga = g_a.reshape({R, S * K});
      d = d.defined() ? d.add_(ga) : ga;
    }
    return d.defined() ? d : at::zeros({R, S * K}, stats.options());
  }
  if (!g_sample.defined() && !g_a.defined() && !g_b.defined()) return at::zeros_like(stats);
  auto c = [](const Tensor& t) { return t.defined() ? t.contiguous() : Tensor(); };
  Tensor g_stats = at::empty_like(stats), g_noise = at::empty_like(noise);
  DF_DEVICE_LAUNCH(heads, gaussian_backward, stats, c(g_sample), c(g_a), c(g_b), stats, noise,
                gaussian_spec(s), g_stats, g_noise);
  return g_stats;
}

// ---- actor heads --------------------------------------------------------------------

namespace {

heads::NormalActionSpec normal_head(const ActorSpec& a) {
  heads::NormalActionSpec h;
  h.tanh_normal = a.head == kTanhNormal;
  h.min_std = a.min_std;
  h.std_range = a.max_std - a.min_std;
  h.std_offset = a.std_offset;
  h.mean_scale = a.mean_scale;
  return h;
}

}  // namespace

Tensor action_forward(const ActorSpec& a, const Tensor& raw, const Tensor& noise) {
  if (a.head == kCategorical) {
    const Tensor lg = raw.contiguous();
    Tensor probs = at::empty_like(lg), sample = at::empty_like(lg);
    DF_DEVICE_LAUNCH(heads, categorical_forward, lg, lg, noise.contiguous().view({-1}), a.unimix,
                  probs, sample);
    return sample;
  }
  Tensor action = at::empty({raw.size(0), a.actions}, raw.options());
  DF_DEVICE_LAUNCH(heads, normal_action_forward, raw, raw.contiguous(), noise.contiguous(),
                   normal_head(a), action);
  return action;
}

Tensor action_backward(const ActorSpec& a, const Tensor& raw, const Tensor& noise,
                       const Tensor& g_action) {
  const int64_t A = a.actions;
  if (a.head == kCategorical) {
    const Tensor lg = raw.contiguous();
    Tensor gl = at::empty_like(lg);
    DF_DEVICE_LAUNCH(heads, categorical_backward, lg, g_action.contiguous(), Tensor(), lg,
                  a.unimix, gl);
    return gl;
  }
  Tensor g_raw = at::empty({raw.size(0), 2 * A}, raw.options());
  DF_DEVICE_LAUNCH(heads, normal_action_backward, raw, raw.contiguous(), noise.contiguous(),
                   g_action.contiguous(), normal_head(a), g_raw);
  return g_raw;
}

}  // namespace rssm
}  // namespace dreamer_fast
