// Torch side of the distribution-head CUDA launches: the current stream and a check
// of every launch. Compiled only with the CUDA kernels.
#include <ATen/ATen.h>

#include "common/cuda_glue.h"
#include "heads/heads_cuda.h"
#include "heads/heads_launch.h"

namespace dreamer_fast {
namespace heads {
namespace {

namespace kh = cuda::heads;

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

}  // namespace

void gaussian_forward_cuda(const at::Tensor& stats, const at::Tensor& noise,
                           const GaussianSpec& h, at::Tensor& sample, at::Tensor& mean,
                           at::Tensor& std_) {
  const char* op = "gaussian_sample";
  const auto [R, S] = rows_of(noise);
  check_launch(op, kh::gaussian_sample_forward(
                       kernel_dtype(op, stats.scalar_type()), stats.const_data_ptr(),
                       noise.const_data_ptr(), sample.mutable_data_ptr(), mean.mutable_data_ptr(),
                       std_.mutable_data_ptr(), h.min_std, h.std_act, h.mean_act,
                       h.min_std_mode, R, S, current_stream()));
}

void gaussian_backward_cuda(const at::Tensor& g_sample, const at::Tensor& g_mean,
                            const at::Tensor& g_std, const at::Tensor& stats,
                            const at::Tensor& noise, const GaussianSpec& h, at::Tensor& g_stats,
                            at::Tensor& g_noise) {
  const char* op = "gaussian_sample_backward";
  const auto [R, S] = rows_of(noise);
  check_launch(op, kh::gaussian_sample_backward(
                       kernel_dtype(op, stats.scalar_type()), ptr_or_null(g_sample),
                       ptr_or_null(g_mean), ptr_or_null(g_std), stats.const_data_ptr(),
                       noise.const_data_ptr(), g_stats.mutable_data_ptr(),
                       g_noise.mutable_data_ptr(), h.min_std, h.std_act, h.mean_act,
                       h.min_std_mode, R, S, current_stream()));
}

void normal_action_forward_cuda(const at::Tensor& raw, const at::Tensor& noise,
                                const NormalActionSpec& h, at::Tensor& action) {
  const char* op = "normal_action";
  const auto [R, A] = rows_of(noise);
  check_launch(op, kh::normal_action_forward(kernel_dtype(op, raw.scalar_type()),
                                             raw.const_data_ptr(), noise.const_data_ptr(),
                                             action.mutable_data_ptr(), h.tanh_normal, h.min_std,
                                             h.std_range, h.std_offset, h.mean_scale, R, A,
                                             current_stream()));
}

void normal_action_backward_cuda(const at::Tensor& raw, const at::Tensor& noise,
                                 const at::Tensor& g_action, const NormalActionSpec& h,
                                 at::Tensor& g_raw) {
  const char* op = "normal_action_backward";
  const auto [R, A] = rows_of(noise);
  check_launch(op, kh::normal_action_backward(
                       kernel_dtype(op, raw.scalar_type()), raw.const_data_ptr(),
                       noise.const_data_ptr(), g_action.const_data_ptr(),
                       g_raw.mutable_data_ptr(), h.tanh_normal, h.min_std, h.std_range,
                       h.std_offset, h.mean_scale, R, A, current_stream()));
}

void categorical_forward_cuda(const at::Tensor& logits, const at::Tensor& uniform,
                              double unimix, at::Tensor& probs, at::Tensor& sample) {
  const char* op = "categorical_sample";
  const auto [R, K] = rows_of(logits);
  check_launch(op, kh::categorical_sample_forward(
                       kernel_dtype(op, logits.scalar_type()), logits.const_data_ptr(),
                       uniform.const_data_ptr(), probs.mutable_data_ptr(),
                       sample.mutable_data_ptr(), unimix, R, K, current_stream()));
}

void categorical_backward_cuda(const at::Tensor& g_sample, const at::Tensor& g_probs,
                               const at::Tensor& logits, double unimix, at::Tensor& g_logits) {
  const char* op = "categorical_sample_backward";
  const auto [R, K] = rows_of(logits);
  check_launch(op, kh::categorical_sample_backward(
                       kernel_dtype(op, logits.scalar_type()), ptr_or_null(g_sample),
                       ptr_or_null(g_probs), logits.const_data_ptr(),
                       g_logits.mutable_data_ptr(), unimix, R, K, current_stream()));
}

}  // namespace heads
}  // namespace dreamer_fast
