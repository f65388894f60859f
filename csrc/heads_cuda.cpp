// CUDA entry points of the distribution-head ops: argument checks, allocation, and
// the launch on the current stream (no sync, no host allocation, no device-to-host
// copy, so the ops are CUDA-graph-capture safe). Every launch's error is checked.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "heads_checks.h"
#include "heads_cuda.h"

namespace dreamer_fast {
namespace {

namespace kh = cuda::heads;

kh::Dtype to_heads_dtype(const char* op, at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kh::Dtype::kFloat;
    case at::kDouble: return kh::Dtype::kDouble;
    case at::kHalf: return kh::Dtype::kHalf;
    case at::kBFloat16: return kh::Dtype::kBFloat16;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", t,
                         " (expected float32, float64, float16 or bfloat16)");
  }
}

void check_heads_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->contiguous() : at::Tensor();
}

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_sample_cuda(const at::Tensor& stats,
                                                                    const at::Tensor& noise,
                                                                    double min_std) {
  const char* op = "gaussian_sample";
  auto [R, S] = check_gaussian_args(op, stats, noise, min_std);
  const c10::cuda::CUDAGuard guard(stats.device());
  auto st = stats.contiguous(), nz = noise.contiguous();
  auto sample = at::empty_like(nz, at::MemoryFormat::Contiguous);
  auto mean = at::empty_like(nz, at::MemoryFormat::Contiguous);
  auto std_ = at::empty_like(nz, at::MemoryFormat::Contiguous);
  check_heads_launch(op, kh::gaussian_sample_forward(
                             to_heads_dtype(op, st.scalar_type()), st.const_data_ptr(),
                             nz.const_data_ptr(), sample.mutable_data_ptr(),
                             mean.mutable_data_ptr(), std_.mutable_data_ptr(), min_std, R, S,
                             c10::cuda::getCurrentCUDAStream().stream()));
  return {sample, mean, std_};
}

std::tuple<at::Tensor, at::Tensor> gaussian_sample_backward_cuda(
    const std::optional<at::Tensor>& grad_sample, const std::optional<at::Tensor>& grad_mean,
    const std::optional<at::Tensor>& grad_std, const at::Tensor& stats,
    const at::Tensor& noise, double min_std) {
  const char* op = "gaussian_sample_backward";
  auto [R, S] = check_gaussian_args(op, stats, noise, min_std);
  check_optional_head_tensor(op, "grad_sample", grad_sample, noise.sizes(), "stats", stats);
  check_optional_head_tensor(op, "grad_mean", grad_mean, noise.sizes(), "stats", stats);
  check_optional_head_tensor(op, "grad_std", grad_std, noise.sizes(), "stats", stats);
  const c10::cuda::CUDAGuard guard(stats.device());
  auto st = stats.contiguous(), nz = noise.contiguous();
  auto gs = contiguous_or_undefined(grad_sample), gm = contiguous_or_undefined(grad_mean),
       gd = contiguous_or_undefined(grad_std);
  auto g_stats = at::empty_like(st, at::MemoryFormat::Contiguous);
  auto g_noise = at::empty_like(nz, at::MemoryFormat::Contiguous);
  check_heads_launch(op, kh::gaussian_sample_backward(
                             to_heads_dtype(op, st.scalar_type()), ptr_or_null(gs),
                             ptr_or_null(gm), ptr_or_null(gd), st.const_data_ptr(),
                             nz.const_data_ptr(), g_stats.mutable_data_ptr(),
                             g_noise.mutable_data_ptr(), min_std, R, S,
                             c10::cuda::getCurrentCUDAStream().stream()));
  return {g_stats, g_noise};
}

std::tuple<at::Tensor, at::Tensor> categorical_sample_cuda(const at::Tensor& logits,
                                                           const at::Tensor& uniform,
                                                           double unimix) {
  const char* op = "categorical_sample";
  auto [R, K] = check_categorical_logits(op, logits, unimix);
  check_head_tensor(op, "uniform", uniform, logits.sizes().slice(0, logits.dim() - 1), "logits",
                    logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  auto lg = logits.contiguous(), un = uniform.contiguous();
  auto sample = at::empty_like(lg, at::MemoryFormat::Contiguous);
  auto probs = at::empty_like(lg, at::MemoryFormat::Contiguous);
  check_heads_launch(op, kh::categorical_sample_forward(
                             to_heads_dtype(op, lg.scalar_type()), lg.const_data_ptr(),
                             un.const_data_ptr(), probs.mutable_data_ptr(),
                             sample.mutable_data_ptr(), unimix, R, K,
                             c10::cuda::getCurrentCUDAStream().stream()));
  return {sample, probs};
}

at::Tensor categorical_sample_backward_cuda(const std::optional<at::Tensor>& grad_sample,
                                            const std::optional<at::Tensor>& grad_probs,
                                            const at::Tensor& logits, double unimix) {
  const char* op = "categorical_sample_backward";
  auto [R, K] = check_categorical_logits(op, logits, unimix);
  check_optional_head_tensor(op, "grad_sample", grad_sample, logits.sizes(), "logits", logits);
  check_optional_head_tensor(op, "grad_probs", grad_probs, logits.sizes(), "logits", logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  auto lg = logits.contiguous();
  auto gs = contiguous_or_undefined(grad_sample), gp = contiguous_or_undefined(grad_probs);
  auto g_logits = at::empty_like(lg, at::MemoryFormat::Contiguous);
  check_heads_launch(op, kh::categorical_sample_backward(
                             to_heads_dtype(op, lg.scalar_type()), ptr_or_null(gs),
                             ptr_or_null(gp), lg.const_data_ptr(), g_logits.mutable_data_ptr(),
                             unimix, R, K, c10::cuda::getCurrentCUDAStream().stream()));
  return g_logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(dreamer_fast, CUDA, m) {
  m.impl("gaussian_sample", &gaussian_sample_cuda);
  m.impl("gaussian_sample_backward", &gaussian_sample_backward_cuda);
  m.impl("categorical_sample", &categorical_sample_cuda);
  m.impl("categorical_sample_backward", &categorical_sample_backward_cuda);
}

}  // namespace dreamer_fast
