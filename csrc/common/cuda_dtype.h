// The element types the CUDA kernel interfaces (*_cuda.h) take: plain C++, so the .cu
// files that implement them compile with nvcc alone, without torch headers.
#pragma once

namespace dreamer_fast {
namespace cuda {

enum class Dtype { kFloat, kDouble, kHalf, kBFloat16 };

}  // namespace cuda
}  // namespace dreamer_fast
