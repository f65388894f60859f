// Torch-side helpers for the *_cuda.cpp entry points: dtype mapping to the kernel
// interface, launch checking, and the current CUDA stream.
#pragma once

#include <ATen/ATen.h>
#if defined(DREAMER_FAST_CUDA_EMU)
#include <cuda_runtime_api.h>
#else
#include <c10/cuda/CUDAStream.h>
#endif

#include "common/cuda_dtype.h"

namespace dreamer_fast {

inline cuda::Dtype kernel_dtype(const char* op, at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::Dtype::kFloat;
    case at::kDouble: return cuda::Dtype::kDouble;
    case at::kHalf: return cuda::Dtype::kHalf;
    case at::kBFloat16: return cuda::Dtype::kBFloat16;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", t,
                         " (expected float32, float64, float16 or bfloat16)");
  }
}

// Every launch goes through this: a failed launch becomes a RuntimeError naming the op.
inline void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

// Kernels run on the caller's current stream (CUDA-graph capture safe). The host
// emulation (emu/cuda_emu.h) has no streams: it runs each launch before returning.
#if defined(DREAMER_FAST_CUDA_EMU)
inline cudaStream_t current_stream() { return nullptr; }
#else
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
#endif

}  // namespace dreamer_fast
