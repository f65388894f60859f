// Argument checks shared by the op families' entry points. The Python wrappers check
// first and give the friendliest messages; these protect callers of
// torch.ops.dreamer_fast.* directly.
#pragma once

#include <ATen/ATen.h>

namespace dreamer_fast {

// `t` must have exactly `shape`, and `like`'s dtype and device.
inline void check_tensor(const char* op, const char* name, const at::Tensor& t,
                         const at::Tensor& like, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, op, ": `", name, "` must have shape ", shape, ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": `", name, "` has dtype ",
              t.scalar_type(), ", expected ", like.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": `", name, "` is on ", t.device(),
              ", expected ", like.device());
}

}  // namespace dreamer_fast
