// Plain-C++ interface between the torch-side CUDA entry points of the distribution
// heads (heads_cuda.cpp) and their kernels (heads_cuda_kernels.cu). Only CUDA
// runtime types cross it, so the .cu file compiles with nvcc alone, without torch
// headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/cuda_dtype.h"

namespace dreamer_fast {
namespace cuda {
namespace heads {

using ::dreamer_fast::cuda::Dtype;

// All pointers are device pointers to contiguous arrays of `dtype`; a gradient
// pointer may be null (that output got no gradient). Each returns
// cudaGetLastError() after the launch (cudaSuccess when there is nothing to do).

// stats [R, 2S]; noise, sample, mean, std [R, S]. One thread per element. std_act,
// mean_act, min_std_mode: heads_math.h's GaussianStdAct / GaussianMeanAct /
// GaussianMinStdMode codes.
cudaError_t gaussian_sample_forward(Dtype dtype, const void* stats, const void* noise,
                                    void* sample, void* mean, void* std, double min_std,
                                    int std_act, int mean_act, int min_std_mode, int64_t R,
                                    int64_t S, cudaStream_t stream);
// g_sample, g_mean, g_std (nullable), noise, g_noise [R, S]; stats, g_stats [R, 2S].
cudaError_t gaussian_sample_backward(Dtype dtype, const void* g_sample, const void* g_mean,
                                     const void* g_std, const void* stats, const void* noise,
                                     void* g_stats, void* g_noise, double min_std, int std_act,
                                     int mean_act, int min_std_mode, int64_t R, int64_t S,
                                     cudaStream_t stream);

// logits, probs, sample [R, K]; uniform [R]. One thread per row for small K, one
// warp per row otherwise.
cudaError_t categorical_sample_forward(Dtype dtype, const void* logits, const void* uniform,
                                       void* probs, void* sample, double unimix, int64_t R,
                                       int64_t K, cudaStream_t stream);
// g_sample, g_probs (nullable), logits, g_logits [R, K].
cudaError_t categorical_sample_backward(Dtype dtype, const void* g_sample, const void* g_probs,
                                        const void* logits, void* g_logits, double unimix,
                                        int64_t R, int64_t K, cudaStream_t stream);

// raw [R, 2A]; noise, action, g_action [R, A]; g_raw [R, 2A]. One thread per element.
// tanh_normal false: bounded_normal (heads_math.h, normal_action_forward_element).
cudaError_t normal_action_forward(Dtype dtype, const void* raw, const void* noise, void* action,
                                  bool tanh_normal, double min_std, double std_range,
                                  double std_offset, double mean_scale, int64_t R, int64_t A,
                                  cudaStream_t stream);
cudaError_t normal_action_backward(Dtype dtype, const void* raw, const void* noise,
                                   const void* g_action, void* g_raw, bool tanh_normal,
                                   double min_std, double std_range, double std_offset,
                                   double mean_scale, int64_t R, int64_t A,
                                   cudaStream_t stream);

}  // namespace heads
}  // namespace cuda
}  // namespace dreamer_fast
