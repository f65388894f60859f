// Launchers of the distribution-head kernels, one per device (heads_cpu.cpp,
// heads_cuda.cpp); the ops themselves (checks, allocation) are in heads_ops.cpp.
// All tensors are contiguous; a gradient may be undefined (that output got none).
//   Gaussian:    stats [R, 2S]; noise, sample, mean, std [R, S]
//   Categorical: logits, probs, sample [R, K]; uniform [R]
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <utility>

namespace dreamer_fast {
namespace heads {

// The constants of the Gaussian head (heads_math.h, GaussianHead): std = std_act(raw) +
// min_std, mean = mean_act(m); the activations' codes are heads_math.h's
// GaussianStdAct / GaussianMeanAct.
struct GaussianSpec {
  double min_std = 0.1;
  int std_act = 0, mean_act = 0, min_std_mode = 0;
};
// The names the ops and spec strings use for those codes, and their parsing: a
// RuntimeError naming `op` and `arg` for an unknown name.
inline const char* const kGaussianStdActNames[] = {"softplus", "abs", "sigmoid", "sigmoid2"};
inline const char* const kGaussianMeanActNames[] = {"none", "tanh5"};
inline const char* const kGaussianMinStdModeNames[] = {"add", "clamp"};
template <size_t N>
int gaussian_act_code(const char* op, const char* arg, const std::string& name,
                      const char* const (&names)[N]) {
  std::string all;
  for (size_t i = 0; i < N; ++i) {
    if (name == names[i]) return static_cast<int>(i);
    all += (i ? "|" : "") + std::string(names[i]);
  }
  TORCH_CHECK(false, op, ": `", arg, "` must be one of ", all, ", got '", name, "'");
}

// The constants of a normal action head of the actor (heads_math.h,
// normal_action_forward_element): tanh_normal or bounded_normal.
struct NormalActionSpec {
  bool tanh_normal = false;
  double min_std = 0.1, std_range = 0.9, std_offset = 0.0, mean_scale = 1.0;
};

// (rows, row length) of a contiguous [..., N] tensor.
inline std::pair<int64_t, int64_t> rows_of(const at::Tensor& t) {
  const int64_t n = t.size(-1);
  return {n == 0 ? 0 : t.numel() / n, n};
}

void gaussian_forward_cpu(const at::Tensor& stats, const at::Tensor& noise,
                          const GaussianSpec& h, at::Tensor& sample, at::Tensor& mean,
                          at::Tensor& std_);
void gaussian_backward_cpu(const at::Tensor& g_sample, const at::Tensor& g_mean,
                           const at::Tensor& g_std, const at::Tensor& stats,
                           const at::Tensor& noise, const GaussianSpec& h, at::Tensor& g_stats,
                           at::Tensor& g_noise);
void categorical_forward_cpu(const at::Tensor& logits, const at::Tensor& uniform, double unimix,
                             at::Tensor& probs, at::Tensor& sample);
void categorical_backward_cpu(const at::Tensor& g_sample, const at::Tensor& g_probs,
                              const at::Tensor& logits, double unimix, at::Tensor& g_logits);

// raw [R, 2A]; noise, action, g_action [R, A]; g_raw [R, 2A].
void normal_action_forward_cpu(const at::Tensor& raw, const at::Tensor& noise,
                               const NormalActionSpec& h, at::Tensor& action);
void normal_action_backward_cpu(const at::Tensor& raw, const at::Tensor& noise,
                                const at::Tensor& g_action, const NormalActionSpec& h,
                                at::Tensor& g_raw);

#ifdef DREAMER_FAST_WITH_CUDA
void gaussian_forward_cuda(const at::Tensor& stats, const at::Tensor& noise,
                           const GaussianSpec& h, at::Tensor& sample, at::Tensor& mean,
                           at::Tensor& std_);
void gaussian_backward_cuda(const at::Tensor& g_sample, const at::Tensor& g_mean,
                            const at::Tensor& g_std, const at::Tensor& stats,
                            const at::Tensor& noise, const GaussianSpec& h, at::Tensor& g_stats,
                            at::Tensor& g_noise);
void categorical_forward_cuda(const at::Tensor& logits, const at::Tensor& uniform,
                              double unimix, at::Tensor& probs, at::Tensor& sample);
void categorical_backward_cuda(const at::Tensor& g_sample, const at::Tensor& g_probs,
                               const at::Tensor& logits, double unimix, at::Tensor& g_logits);
void normal_action_forward_cuda(const at::Tensor& raw, const at::Tensor& noise,
                                const NormalActionSpec& h, at::Tensor& action);
void normal_action_backward_cuda(const at::Tensor& raw, const at::Tensor& noise,
                                 const at::Tensor& g_action, const NormalActionSpec& h,
                                 at::Tensor& g_raw);
#endif

}  // namespace heads
}  // namespace dreamer_fast
