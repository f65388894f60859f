// Helpers shared by the CPU launchers (*_cpu.cpp).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "cpu_vector_math.h"  // before any shared math header

namespace dreamer_fast {

// Storage <-> accumulation conversions for the shared math headers (the CPU twin of
// CudaCvt in cuda_common.cuh).
template <typename scalar_t, typename acc_t>
struct CpuCvt {
  static inline acc_t load(scalar_t x) { return static_cast<acc_t>(x); }
  static inline scalar_t store(acc_t x) { return static_cast<scalar_t>(x); }
};

// Rows per at::parallel_for task so that a task has ~16k elements of work.
inline int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, cols));
}

}  // namespace dreamer_fast

#define DF_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
