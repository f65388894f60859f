// Kernels of the emulation module only (hooks.h): the shared row functions of
// cells_math.h and dense_math.h under a multi-lane policy other than the CUDA launchers'
// warp (1 to 32 lanes per row), and self-tests of the emulation's semantics.
#include <algorithm>

#include "cells/cells_math.h"
#include "common/cuda_common.cuh"
#include "dense/dense_math.h"
#include "emu/hooks.h"

namespace dreamer_fast {
namespace emu {
namespace {

using cuda::CudaCvt;
using cuda::Dtype;
using cuda::dispatch_dtype;
using cuda::launch_kernel;

constexpr int kThreads = 64;  // two warps per block: rows of both warps in one block

// N lanes of one warp share a row (the Lanes policy of common/scalar_math.h): a butterfly
// of xor shuffles of width N over the group's own mask, so groups of a warp exchange
// independently (and a group past the last row may leave).
template <int N>
struct GroupLanes {
  int lane;       // 0 .. N-1 within the group
  unsigned mask;  // the group's lanes within the warp
  static constexpr int count = N;
  template <typename T>
  T sum(T v) const {
    for (int offset = N / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(mask, v, offset, N);
    return v;
  }
  void sync() const { __syncwarp(mask); }
};

template <int N>
GroupLanes<N> group_lanes() {
  const int warp_lane = static_cast<int>(threadIdx.x % 32);
  const unsigned group_mask = N == 32 ? 0xffffffffu : ((1u << N) - 1u);
  return {warp_lane % N, group_mask << (warp_lane / N * N)};
}

template <int N>
int64_t group_row() {
  return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / N;
}

template <int N, typename scalar_t, typename acc_t = typename CudaCvt<scalar_t>::acc_t>
void ln_gru_forward_lanes_kernel(const scalar_t* parts, const scalar_t* hx, const scalar_t* gamma,
                                 const scalar_t* beta, acc_t eps, acc_t update_bias,
                                 scalar_t* hy, acc_t* stats, int64_t B, int64_t H) {
  const int64_t row = group_row<N>();
  if (row >= B) return;  // the whole group leaves
  cells::ln_gru_forward_row<CudaCvt<scalar_t>>(parts + row * 3 * H, hx + row * H, gamma, beta,
                                               eps, update_bias, H, hy + row * H,
                                               stats + 2 * row, group_lanes<N>());
}

template <int N, typename scalar_t, typename acc_t = typename CudaCvt<scalar_t>::acc_t>
void ln_gru_backward_lanes_kernel(const scalar_t* grad_hy, const scalar_t* parts,
                                  const scalar_t* hx, const scalar_t* gamma, const scalar_t* beta,
                                  const acc_t* stats, acc_t update_bias, acc_t* dy,
                                  acc_t* dy_xhat, scalar_t* dparts, scalar_t* dh_direct,
                                  int64_t B, int64_t H) {
  const int64_t row = group_row<N>();
  if (row >= B) return;
  cells::ln_gru_backward_row<CudaCvt<scalar_t>>(
      grad_hy + row * H, parts + row * 3 * H, hx + row * H, gamma, beta, stats + 2 * row,
      update_bias, H, dy + row * 3 * H, dy_xhat + row * 3 * H, dparts + row * 3 * H,
      dh_direct + row * H, group_lanes<N>());
}

template <int N, typename scalar_t, typename acc_t = typename CudaCvt<scalar_t>::acc_t>
void norm_act_forward_lanes_kernel(const scalar_t* z, const scalar_t* w, const scalar_t* b,
                                   int64_t B, int64_t Ncols, int norm, int act, acc_t eps,
                                   scalar_t* out, acc_t* stats) {
  const int64_t row = group_row<N>();
  if (row >= B) return;
  layer::norm_act_forward_row<CudaCvt<scalar_t>>(z + row * Ncols, w, b, Ncols, norm, act, eps,
                                                 out + row * Ncols, stats + 2 * row,
                                                 group_lanes<N>());
}

template <int N, typename scalar_t, typename acc_t = typename CudaCvt<scalar_t>::acc_t>
void norm_act_backward_lanes_kernel(const scalar_t* dout, const scalar_t* z, const scalar_t* w,
                                    const scalar_t* b, const acc_t* stats, int64_t B,
                                    int64_t Ncols, int norm, int act, acc_t* dy, acc_t* dy_xhat,
                                    scalar_t* dz) {
  const int64_t row = group_row<N>();
  if (row >= B) return;
  layer::norm_act_backward_row<CudaCvt<scalar_t>>(
      dout + row * Ncols, z + row * Ncols, w, b, stats + 2 * row, Ncols, norm, act,
      dy ? dy + row * Ncols : nullptr, dy_xhat ? dy_xhat + row * Ncols : nullptr,
      dz + row * Ncols, group_lanes<N>());
}

// Calls fn(std::integral_constant<int, N>) for N = lanes; false for an unsupported count.
template <typename Fn>
bool dispatch_lanes(int lanes, const Fn& fn) {
  switch (lanes) {
    case 1: fn(std::integral_constant<int, 1>{}); return true;
    case 2: fn(std::integral_constant<int, 2>{}); return true;
    case 4: fn(std::integral_constant<int, 4>{}); return true;
    case 8: fn(std::integral_constant<int, 8>{}); return true;
    case 16: fn(std::integral_constant<int, 16>{}); return true;
    case 32: fn(std::integral_constant<int, 32>{}); return true;
    default: return false;
  }
}

unsigned blocks_for_rows(int64_t rows, int lanes) {
  return static_cast<unsigned>(cuda::blocks_for(rows * lanes, kThreads));
}

}  // namespace

cudaError_t ln_gru_forward_lanes(int lanes, Dtype dtype, const void* parts, const void* hx,
                                 const void* gamma, const void* beta, double eps,
                                 double update_bias, void* hy, void* stats, int64_t B,
                                 int64_t H) {
  if (B == 0) return cudaSuccess;
  cudaError_t err = cudaErrorInvalidValue;
  dispatch_lanes(lanes, [&](auto n) {
    constexpr int N = decltype(n)::value;
    err = dispatch_dtype(dtype, [&](auto tag) {
      using s = decltype(tag);
      using acc_t = typename CudaCvt<s>::acc_t;
      launch_kernel(ln_gru_forward_lanes_kernel<N, s>, blocks_for_rows(B, N), kThreads, nullptr,
                    static_cast<const s*>(parts), static_cast<const s*>(hx),
                    static_cast<const s*>(gamma), static_cast<const s*>(beta),
                    static_cast<acc_t>(eps), static_cast<acc_t>(update_bias), static_cast<s*>(hy),
                    static_cast<acc_t*>(stats), B, H);
    });
  });
  return err;
}

cudaError_t ln_gru_backward_lanes(int lanes, Dtype dtype, const void* grad_hy, const void* parts,
                                  const void* hx, const void* gamma, const void* beta,
                                  const void* stats, double update_bias, void* dy, void* dy_xhat,
                                  void* dparts, void* dh_direct, int64_t B, int64_t H) {
  if (B == 0) return cudaSuccess;
  cudaError_t err = cudaErrorInvalidValue;
  dispatch_lanes(lanes, [&](auto n) {
    constexpr int N = decltype(n)::value;
    err = dispatch_dtype(dtype, [&](auto tag) {
      using s = decltype(tag);
      using acc_t = typename CudaCvt<s>::acc_t;
      launch_kernel(ln_gru_backward_lanes_kernel<N, s>, blocks_for_rows(B, N), kThreads, nullptr,
                    static_cast<const s*>(grad_hy), static_cast<const s*>(parts),
                    static_cast<const s*>(hx), static_cast<const s*>(gamma),
                    static_cast<const s*>(beta), static_cast<const acc_t*>(stats),
                    static_cast<acc_t>(update_bias), static_cast<acc_t*>(dy),
                    static_cast<acc_t*>(dy_xhat), static_cast<s*>(dparts),
                    static_cast<s*>(dh_direct), B, H);
    });
  });
  return err;
}

cudaError_t norm_act_forward_lanes(int lanes, Dtype dtype, const void* z, const void* w,
                                   const void* b, int64_t B, int64_t N, int norm, int act,
                                   double eps, void* out, void* stats) {
  if (B == 0) return cudaSuccess;
  cudaError_t err = cudaErrorInvalidValue;
  dispatch_lanes(lanes, [&](auto n) {
    constexpr int L = decltype(n)::value;
    err = dispatch_dtype(dtype, [&](auto tag) {
      using s = decltype(tag);
      using acc_t = typename CudaCvt<s>::acc_t;
      launch_kernel(norm_act_forward_lanes_kernel<L, s>, blocks_for_rows(B, L), kThreads,
                    nullptr, static_cast<const s*>(z), static_cast<const s*>(w),
                    static_cast<const s*>(b), B, N, norm, act, static_cast<acc_t>(eps),
                    static_cast<s*>(out), static_cast<acc_t*>(stats));
    });
  });
  return err;
}

cudaError_t norm_act_backward_lanes(int lanes, Dtype dtype, const void* dout, const void* z,
                                    const void* w, const void* b, const void* stats, int64_t B,
                                    int64_t N, int norm, int act, void* dy, void* dy_xhat,
                                    void* dz) {
  if (B * N == 0) return cudaSuccess;
  cudaError_t err = cudaErrorInvalidValue;
  dispatch_lanes(lanes, [&](auto n) {
    constexpr int L = decltype(n)::value;
    err = dispatch_dtype(dtype, [&](auto tag) {
      using s = decltype(tag);
      using acc_t = typename CudaCvt<s>::acc_t;
      launch_kernel(norm_act_backward_lanes_kernel<L, s>, blocks_for_rows(B, L), kThreads,
                    nullptr, static_cast<const s*>(dout), static_cast<const s*>(z),
                    static_cast<const s*>(w), static_cast<const s*>(b),
                    static_cast<const acc_t*>(stats), B, N, norm, act, static_cast<acc_t*>(dy),
                    static_cast<acc_t*>(dy_xhat), static_cast<s*>(dz));
    });
  });
  return err;
}

// ---- self-tests of the emulation ------------------------------------------------------

namespace {

void shuffles_kernel(int32_t* out) {
  const int t = static_cast<int>(threadIdx.x);
  const int32_t x = 3 * t + 1;
  int32_t* o = out + 7 * t;
  o[0] = __shfl_xor_sync(0xffffffffu, x, 5);
  o[1] = __shfl_sync(0xffffffffu, x, 7);
  o[2] = __shfl_up_sync(0xffffffffu, x, 3);
  o[3] = __shfl_down_sync(0xffffffffu, x, 2);
  o[4] = __shfl_xor_sync(0xffffffffu, x, 1, 4);
  o[5] = __shfl_sync(0xffffffffu, x, 2, 8);
  o[6] = __shfl_down_sync(0xffffffffu, x, 1, 16);
}

void syncthreads_kernel(int32_t* out) {
  __shared__ int32_t tile[1024];
  const unsigned t = threadIdx.x, n = blockDim.x;
  tile[t] = static_cast<int32_t>(t * t);
  __syncthreads();
  out[t] = tile[(t + 37) % n];
}

void warp_handoff_kernel(int32_t* buf, int32_t* out, bool with_sync) {
  const unsigned l = threadIdx.x;
  buf[l] = static_cast<int32_t>(l + 1);
  if (with_sync) __syncwarp();
  out[l] = buf[(l + 1) % 32];
}

void coords_kernel(int64_t* out) {
  const uint64_t block = (uint64_t(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const uint64_t thread =
      (uint64_t(threadIdx.z) * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  int64_t* o = out + 12 * (block * blockDim.x * blockDim.y * blockDim.z + thread);
  const uint32_t v[12] = {threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z,
                          blockDim.x,  blockDim.y,  blockDim.z,  gridDim.x,  gridDim.y,  gridDim.z};
  for (int i = 0; i < 12; ++i) o[i] = v[i];
}

void invalid_kernel(int which, int32_t* out) {
  const int l = static_cast<int>(threadIdx.x % 32);
  int32_t v = l;
  switch (which) {
    case 0:
      if (l >= 16) return;
      v = __shfl_xor_sync(0xffffffffu, v, 1);
      break;
    case 1:
      if (l < 16) {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
      } else {
        v = __shfl_xor_sync(0xffffffffu, v, 2);
      }
      break;
    case 2: v = __shfl_xor_sync(0xffffffffu, v, 1); break;
    case 3: v = __shfl_xor_sync(0xffffffffu, v, 1, 3); break;
    case 4: {
      const int group = l / 4;
      if (group % 2 == 1) return;
      const unsigned mask = 0xfu << (4 * group);
      for (int off = 2; off > 0; off >>= 1) v += __shfl_xor_sync(mask, v, off, 4);
      break;
    }
    default: break;
  }
  out[threadIdx.x] = v;
}

void noop_kernel() {}

}  // namespace

cudaError_t selftest_shuffles(int32_t* out) {
  launch_kernel(shuffles_kernel, 1, 64, nullptr, out);
  return cudaGetLastError();
}

cudaError_t selftest_syncthreads(int32_t* out, int n) {
  launch_kernel(syncthreads_kernel, 1, static_cast<unsigned>(n), nullptr, out);
  return cudaGetLastError();
}

cudaError_t selftest_warp_handoff(int32_t* buf, int32_t* out, bool with_sync) {
  launch_kernel(warp_handoff_kernel, 1, 32, nullptr, buf, out, with_sync);
  return cudaGetLastError();
}

cudaError_t selftest_coords(int64_t* out, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                            unsigned by, unsigned bz) {
  launch_kernel(coords_kernel, dim3(gx, gy, gz), dim3(bx, by, bz), nullptr, out);
  return cudaGetLastError();
}

cudaError_t selftest_invalid(int which, int32_t* out) {
  launch_kernel(invalid_kernel, 1, which == 2 ? 48 : 32, nullptr, which, out);
  return cudaGetLastError();
}

cudaError_t selftest_launch_config(unsigned grid, unsigned threads) {
  launch_kernel(noop_kernel, grid, threads, nullptr);
  return cudaGetLastError();
}

}  // namespace emu
}  // namespace dreamer_fast
