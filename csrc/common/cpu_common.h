// Helpers shared by the CPU launchers (*_cpu.cpp).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <vector>

#include "common/cpu_vector_math.h"  // before any shared math header
#include "common/parallel_grain.h"

namespace dreamer_fast {

// Storage <-> accumulation conversions for the shared math headers (the CPU twin of
// CudaCvt in cuda_common.cuh).
template <typename scalar_t, typename acc_t>
struct CpuCvt {
  static inline acc_t load(scalar_t x) { return static_cast<acc_t>(x); }
  static inline scalar_t store(acc_t x) { return static_cast<scalar_t>(x); }
};

// Rows per at::parallel_for task for rows of `cols` elements (see parallel_grain.h).
inline int64_t row_grain(int64_t cols) { return task_grain(cols); }

// Column sums over the rows of an at::parallel_for (the norm-parameter gradients of a
// backward row kernel): every task adds its rows' values into task-local sums and
// merges them once into `out` under a lock (at most one task per thread). This replaces
// a [B, N] array per sum written in full and reduced afterwards, which at B = 1024
// cost more than the row kernel itself (fresh memory is page-faulted in on every call).
template <typename acc_t>
class ColumnSums {
 public:
  // out: n zero-initialised sums, or null (nothing to sum; `row()` is then null too)
  ColumnSums(acc_t* out, int64_t n) : out_(out), n_(n) {}
  struct Task {
    std::vector<acc_t> row, sum;  // the current row's values, the task's running sums
    acc_t* row_ptr() { return row.empty() ? nullptr : row.data(); }
  };
  Task task() const {
    return out_ ? Task{std::vector<acc_t>(n_), std::vector<acc_t>(n_, acc_t(0))} : Task{};
  }
  static void add_row(Task& t) {
    acc_t* __restrict__ s = t.sum.data();
    const acc_t* __restrict__ r = t.row.data();
    for (size_t k = 0; k < t.sum.size(); ++k) s[k] += r[k];
  }
  void merge(const Task& t) {
    if (!out_) return;
    std::lock_guard<std::mutex> lock(mutex_);
    for (int64_t k = 0; k < n_; ++k) out_[k] += t.sum[k];
  }

 private:
  acc_t* out_;
  int64_t n_;
  std::mutex mutex_;
};

}  // namespace dreamer_fast

#define DF_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
