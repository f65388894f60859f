// Argument checks shared by the CPU and CUDA entry points of the distribution-head
// ops (gaussian_sample, categorical_sample and their backwards). The Python
// wrappers check first and give the friendliest messages; these checks protect
// callers of torch.ops.dreamer_fast.* directly. The fake (meta) kernels in
// dreamer_fast/ops/heads.py mirror them.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>

namespace dreamer_fast {

// `x` has `ref`'s dtype and device and the shape `shape`.
inline void check_head_tensor(const char* op, const char* name, const at::Tensor& x,
                              at::IntArrayRef shape, const char* ref_name,
                              const at::Tensor& ref) {
  TORCH_CHECK(x.sizes() == shape, op, ": `", name, "` must have shape ", shape, ", got ",
              x.sizes());
  TORCH_CHECK(x.scalar_type() == ref.scalar_type(), op, ": `", name, "` has dtype ",
              x.scalar_type(), " but `", ref_name, "` has dtype ", ref.scalar_type());
  TORCH_CHECK(x.device() == ref.device(), op, ": `", name, "` is on ", x.device(), " but `",
              ref_name, "` is on ", ref.device());
}

inline void check_optional_head_tensor(const char* op, const char* name,
                                       const std::optional<at::Tensor>& x,
                                       at::IntArrayRef shape, const char* ref_name,
                                       const at::Tensor& ref) {
  if (x.has_value() && x->defined()) check_head_tensor(op, name, *x, shape, ref_name, ref);
}

// stats [..., 2S], noise [..., S]. Returns (R = prod(batch), S).
inline std::pair<int64_t, int64_t> check_gaussian_args(const char* op, const at::Tensor& stats,
                                                       const at::Tensor& noise,
                                                       double min_std) {
  TORCH_CHECK(stats.dim() >= 1, op, ": `stats` must have at least 1 dim ([..., 2S]), got shape ",
              stats.sizes());
  TORCH_CHECK(at::isFloatingType(stats.scalar_type()), op,
              ": `stats` must be a floating-point tensor, got ", stats.scalar_type());
  const int64_t two_s = stats.size(-1);
  TORCH_CHECK(two_s % 2 == 0, op, ": `stats` last dim must be even (mean and raw std halves), got ",
              two_s);
  const int64_t S = two_s / 2;
  std::vector<int64_t> noise_shape(stats.sizes().begin(), stats.sizes().end());
  noise_shape.back() = S;
  check_head_tensor(op, "noise", noise, noise_shape, "stats", stats);
  TORCH_CHECK(std::isfinite(min_std) && min_std >= 0.0, op,
              ": `min_std` must be a finite float >= 0, got ", min_std);
  const int64_t R = S > 0 ? noise.numel() / S : 0;
  return {R, S};
}

// logits [..., G, K], uniform [..., G]. Returns (R = prod(logits.shape[:-1]), K).
inline std::pair<int64_t, int64_t> check_categorical_logits(const char* op,
                                                            const at::Tensor& logits,
                                                            double unimix) {
  TORCH_CHECK(logits.dim() >= 2, op,
              ": `logits` must have at least 2 dims ([..., G, K]), got shape ", logits.sizes());
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), op,
              ": `logits` must be a floating-point tensor, got ", logits.scalar_type());
  const int64_t K = logits.size(-1);
  TORCH_CHECK(K >= 1, op, ": `logits` must have at least one class (last dim), got shape ",
              logits.sizes());
  TORCH_CHECK(unimix >= 0.0 && unimix < 1.0, op, ": `unimix` must be in [0, 1), got ", unimix);
  return {logits.numel() / K, K};
}

}  // namespace dreamer_fast
