// Scalar functions and the row-reduction policy shared by the math headers that both
// the CPU launchers and the CUDA kernels include (cells_math.h, dense_math.h). CUDA and
// C++ standard headers only: nvcc compiles their .cu users without torch.
//
// Row functions that reduce over a row take a `Lanes` policy: the lanes of one row
// split its columns (column j belongs to lane j % count) and `sum` adds a value over
// all lanes of the row; `sync` orders writes of one lane before reads of another.
//   CPU:  SerialLanes (one lane, sum = identity)
//   CUDA: a warp per row (32 lanes, shuffle reduction, __syncwarp)
#pragma once

#include <cmath>

#include "common/math_macros.h"

namespace dreamer_fast {

DF_HOST_DEVICE float df_exp(float x) { return ::expf(x); }
DF_HOST_DEVICE double df_exp(double x) { return ::exp(x); }
DF_HOST_DEVICE float df_tanh(float x) { return ::tanhf(x); }
DF_HOST_DEVICE double df_tanh(double x) { return ::tanh(x); }
DF_HOST_DEVICE float df_rsqrt(float x) { return 1.0f / ::sqrtf(x); }
DF_HOST_DEVICE double df_rsqrt(double x) { return 1.0 / ::sqrt(x); }

template <typename acc_t>
DF_HOST_DEVICE acc_t sigmoid(acc_t x) {
  return acc_t(1) / (acc_t(1) + df_exp(-x));
}

struct SerialLanes {
  static constexpr int lane = 0;
  static constexpr int count = 1;
  template <typename T>
  DF_HOST_DEVICE T sum(T v) const { return v; }
  DF_HOST_DEVICE void sync() const {}
};

DF_HOST_DEVICE float df_erf(float x) { return ::erff(x); }
DF_HOST_DEVICE double df_erf(double x) { return ::erf(x); }

}  // namespace dreamer_fast
