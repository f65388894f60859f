// How much work a CPU parallel region must carry (used by every at::parallel_for of
// the CPU launchers).
#pragma once

#include <algorithm>
#include <cstdint>

namespace dreamer_fast {

// Least elements of work per at::parallel_for task (and so per parallel region: a range
// of fewer runs inline on the calling thread). On an idle machine waking the OpenMP pool
// costs microseconds, but on a shared one under libgomp's default wait policy (workers
// spin after a region, or are descheduled when it starts) a region can cost a scheduler
// slice: at 16k elements per task the LN-GRU observe ran 2.4x slower with the default
// policy than with OMP_WAIT_POLICY=PASSIVE beside one busy process. 64k elements (tens
// of microseconds of work) leave the small per-step kernels (B=16 rows) serial and still
// split the imagination's B=1024+ rows.
constexpr int64_t kMinTaskElements = int64_t(1) << 16;

// The at::parallel_for grain (items per task) for items of `work_per_item` elements each,
// so that a task has >= kMinTaskElements elements of work.
inline int64_t task_grain(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinTaskElements / std::max<int64_t>(1, work_per_item));
}

}  // namespace dreamer_fast
