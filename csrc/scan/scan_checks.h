// Argument checks and shape helpers shared by the CPU and CUDA entry points of the
// scan ops. The Python wrappers check first and give the friendliest messages; these
// checks protect callers of torch.ops.dreamer_fast.* directly.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace dreamer_fast {

// `seq` is time-major [T, *batch]; `init` is [*batch]. Returns (T, N = prod(batch)).
inline std::pair<int64_t, int64_t> check_scan_args(
    const char* op, const std::vector<std::pair<const char*, const at::Tensor*>>& sequences,
    const char* init_name, const at::Tensor& init) {
  const at::Tensor& first = *sequences.front().second;
  const char* first_name = sequences.front().first;
  TORCH_CHECK(first.dim() >= 1, op, ": `", first_name,
              "` must have a time axis (at least 1 dim), got shape ", first.sizes());
  TORCH_CHECK(first.size(0) >= 1, op, ": `", first_name,
              "` must have at least one time step, got shape ", first.sizes());
  TORCH_CHECK(at::isFloatingType(first.scalar_type()), op, ": `", first_name,
              "` must be a floating-point tensor, got ", first.scalar_type());
  for (const auto& named : sequences) {
    const at::Tensor& t = *named.second;
    TORCH_CHECK(t.sizes() == first.sizes(), op, ": `", named.first, "` has shape ", t.sizes(),
                " but `", first_name, "` has shape ", first.sizes(), "; they must match");
    TORCH_CHECK(t.scalar_type() == first.scalar_type(), op, ": `", named.first, "` has dtype ",
                t.scalar_type(), " but `", first_name, "` has dtype ", first.scalar_type());
    TORCH_CHECK(t.device() == first.device(), op, ": `", named.first, "` is on ", t.device(),
                " but `", first_name, "` is on ", first.device());
  }
  TORCH_CHECK(init.sizes() == first.sizes().slice(1), op, ": `", init_name,
              "` must have the batch shape ", first.sizes().slice(1), " (", first_name,
              " without its time axis), got ", init.sizes());
  TORCH_CHECK(init.scalar_type() == first.scalar_type(), op, ": `", init_name,
              "` has dtype ", init.scalar_type(), " but `", first_name, "` has dtype ",
              first.scalar_type());
  TORCH_CHECK(init.device() == first.device(), op, ": `", init_name, "` is on ", init.device(),
              " but `", first_name, "` is on ", first.device());
  const int64_t T = first.size(0);
  const int64_t N = T > 0 ? first.numel() / T : 0;
  return {T, N};
}

inline void check_lambda(const char* op, double lambda) {
  TORCH_CHECK(lambda >= 0.0 && lambda <= 1.0, op, ": `lambda_` must be in [0, 1], got ",
              lambda);
}

}  // namespace dreamer_fast
