// Entry points of the emulation module beyond the launchers (csrc/emu/*.cpp): what the
// heads launchers decide from sizes too large to allocate in a test, their 64-bit index
// kernels, the shared row functions under a multi-lane policy, and self-tests of the
// emulation itself. Plain pointers, as the kernel interfaces (*_cuda.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/cuda_dtype.h"

namespace dreamer_fast {
namespace emu {

// heads_cuda_kernels.cu's index-width and warp-kernel dispatch: the index bits chosen for
// `total` elements (32 or 64), the register chunks of the warp kernel for K classes (0:
// the re-reading kernel for K > 256).
int heads_index_bits(int64_t total);
int heads_warp_chunks(int64_t K);

// The Gaussian and normal-action launchers with the 64-bit index kernels forced (the
// launchers pick them only past 2^32 elements).
cudaError_t gaussian_sample_forward_index64(cuda::Dtype dtype, const void* stats,
                                            const void* noise, void* sample, void* mean,
                                            void* std, double min_std, int std_act,
                                            int mean_act, int min_std_mode, int64_t R,
                                            int64_t S);
cudaError_t gaussian_sample_backward_index64(cuda::Dtype dtype, const void* g_sample,
                                             const void* g_mean, const void* g_std,
                                             const void* stats, const void* noise, void* g_stats,
                                             void* g_noise, double min_std, int std_act,
                                             int mean_act, int min_std_mode, int64_t R,
                                             int64_t S);
cudaError_t normal_action_forward_index64(cuda::Dtype dtype, const void* raw, const void* noise,
                                          void* action, bool tanh_normal, double min_std,
                                          double std_range, double std_offset,
                                          double mean_scale, int64_t R, int64_t A);
cudaError_t normal_action_backward_index64(cuda::Dtype dtype, const void* raw,
                                           const void* noise, const void* g_action, void* g_raw,
                                           bool tanh_normal, double min_std, double std_range,
                                           double std_offset, double mean_scale, int64_t R,
                                           int64_t A);

// The shared row functions (cells_math.h, dense_math.h) with `lanes` lanes per row
// (1, 2, 4, 8, 16 or 32; a group of lanes of one warp exchanging through shuffles of that
// width and mask), one row per group. dy / dy_xhat are per-row [B, C] acc arrays.
cudaError_t ln_gru_forward_lanes(int lanes, cuda::Dtype dtype, const void* parts,
                                 const void* hx, const void* gamma, const void* beta,
                                 double eps, double update_bias, void* hy, void* stats,
                                 int64_t B, int64_t H);
cudaError_t ln_gru_backward_lanes(int lanes, cuda::Dtype dtype, const void* grad_hy,
                                  const void* parts, const void* hx, const void* gamma,
                                  const void* beta, const void* stats, double update_bias,
                                  void* dy, void* dy_xhat, void* dparts, void* dh_direct,
                                  int64_t B, int64_t H);
cudaError_t norm_act_forward_lanes(int lanes, cuda::Dtype dtype, const void* z, const void* w,
                                   const void* b, int64_t B, int64_t N, int norm, int act,
                                   double eps, void* out, void* stats);
cudaError_t norm_act_backward_lanes(int lanes, cuda::Dtype dtype, const void* dout,
                                    const void* z, const void* w, const void* b,
                                    const void* stats, int64_t B, int64_t N, int norm, int act,
                                    void* dy, void* dy_xhat, void* dz);

// Self-tests of the emulation (lanes_kernels.cpp); each returns the launch's error.
// out [64, 7] int32: per thread of one 64-thread block, its value x = 3 t + 1 after
// __shfl_xor_sync(x, 5), __shfl_sync(x, 7), __shfl_up_sync(x, 3), __shfl_down_sync(x, 2),
// __shfl_xor_sync(x, 1, width 4), __shfl_sync(x, 2, width 8), __shfl_down_sync(x, 1,
// width 16).
cudaError_t selftest_shuffles(int32_t* out);
// out [n]: thread t of one block of n threads reads what thread (t + 37) % n stored in
// __shared__ memory before a __syncthreads().
cudaError_t selftest_syncthreads(int32_t* out, int n);
// out [32]: lane l stores l + 1 to buf[l], then (with_sync: after __syncwarp()) reads
// buf[(l + 1) % 32]; buf [32] starts at zero.
cudaError_t selftest_warp_handoff(int32_t* buf, int32_t* out, bool with_sync);
// out [gx*gy*gz*bx*by*bz, 12] int64: the built-in coordinates of every thread, in launch order.
cudaError_t selftest_coords(int64_t* out, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                            unsigned by, unsigned bz);
// Kernels a GPU would run with undefined results; the emulation must report them:
// 0 lanes 16..31 return before a full-mask shuffle, 1 the two half-warps shuffle at
// different call sites, 2 a block of 48 threads (a partial warp) shuffles with the full
// mask, 3 a shuffle of width 3, 4 groups of 4 lanes with their own masks while the odd
// groups exit (valid: must succeed, out [32] = the group sums).
cudaError_t selftest_invalid(int which, int32_t* out);
// A launch of `threads` threads per block (the hardware's limit is 1024).
cudaError_t selftest_launch_config(unsigned grid, unsigned threads);

}  // namespace emu
}  // namespace dreamer_fast
