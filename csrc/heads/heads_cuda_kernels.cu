// CUDA kernels of the distribution heads. The math is heads_math.h's.
//
// * Gaussian: one thread per element (r, j); loads and stores coalesce across the
//   warp because adjacent threads touch adjacent j.
// * Categorical: one thread per row for small K (K <= kThreadRowMaxK: the row
//   function of heads_math.h, as on the CPU), otherwise one warp per row with the K
//   classes spread over the lanes (class k on lane k % 32): the max and the
//   normaliser are warp reductions, the index search is the sequential cumulative
//   sum of heads_math.h (each p_k broadcast from its lane in order k = 0, 1, ...),
//   so it adds in exactly the reference's order. For K <= 256 the lane's values
//   stay in registers (kChunks = ceil(K / 32) of them); larger K re-reads the row,
//   which is L1/L2-resident.
// Half and bfloat16 are loaded/stored in storage type and computed in float.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/cuda_common.cuh"  // CudaCvt
#include "heads/heads_cuda.h"
#include "heads/heads_math.h"

namespace dreamer_fast {
namespace cuda {
namespace heads {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr unsigned kFullMask = 0xffffffffu;
// Rows with at most this many classes get one thread each.
constexpr int kThreadRowMaxK = 8;

template <typename scalar_t>
using acc_of = typename CudaCvt<scalar_t>::acc_t;

// ---- Gaussian: one thread per element -----------------------------------------------

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    gaussian_forward_kernel(const scalar_t* __restrict__ stats, const scalar_t* __restrict__ noise,
                            scalar_t* __restrict__ sample, scalar_t* __restrict__ mean,
                            scalar_t* __restrict__ std,
                            dreamer_fast::heads::GaussianHead<acc_of<scalar_t>> h, index_t total,
                            index_t S) {
  using Cvt = CudaCvt<scalar_t>;
  const index_t i = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= total) return;
  const index_t r = i / S;
  dreamer_fast::heads::gaussian_forward_element<Cvt, scalar_t, acc_of<scalar_t>>(
      stats, noise, sample, mean, std, h, S, r, i - r * S);
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) gaussian_backward_kernel(
    const scalar_t* __restrict__ g_sample, const scalar_t* __restrict__ g_mean,
    const scalar_t* __restrict__ g_std, const scalar_t* __restrict__ stats,
    const scalar_t* __restrict__ noise, scalar_t* __restrict__ g_stats,
    scalar_t* __restrict__ g_noise, dreamer_fast::heads::GaussianHead<acc_of<scalar_t>> h,
    index_t total, index_t S) {
  using Cvt = CudaCvt<scalar_t>;
  const index_t i = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= total) return;
  const index_t r = i / S;
  dreamer_fast::heads::gaussian_backward_element<Cvt, scalar_t, acc_of<scalar_t>>(
      g_sample, g_mean, g_std, stats, noise, g_stats, g_noise, h, S, r, i - r * S);
}

// ---- Normal action heads: one thread per element ------------------------------------

template <bool TANH, typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    normal_action_forward_kernel(const scalar_t* __restrict__ raw,
                                 const scalar_t* __restrict__ noise, scalar_t* __restrict__ action,
                                 dreamer_fast::heads::NormalActionHead<acc_of<scalar_t>> h,
                                 index_t total, index_t A) {
  using Cvt = CudaCvt<scalar_t>;
  const index_t i = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= total) return;
  const index_t r = i / A;
  dreamer_fast::heads::normal_action_forward_element<TANH, Cvt>(raw, noise, action, h, A, r,
                                                                 i - r * A);
}

template <bool TANH, typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) normal_action_backward_kernel(
    const scalar_t* __restrict__ raw, const scalar_t* __restrict__ noise,
    const scalar_t* __restrict__ g_action, scalar_t* __restrict__ g_raw,
    dreamer_fast::heads::NormalActionHead<acc_of<scalar_t>> h, index_t total, index_t A) {
  using Cvt = CudaCvt<scalar_t>;
  const index_t i = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= total) return;
  const index_t r = i / A;
  dreamer_fast::heads::normal_action_backward_element<TANH, Cvt>(raw, noise, g_action, g_raw, h,
                                                                  A, r, i - r * A);
}

// ---- Categorical, small K: one thread per row ---------------------------------------

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) categorical_forward_thread_kernel(
    const scalar_t* __restrict__ logits, const scalar_t* __restrict__ uniform,
    scalar_t* __restrict__ probs, scalar_t* __restrict__ sample, acc_of<scalar_t> keep,
    acc_of<scalar_t> floor, int64_t R, int K) {
  using Cvt = CudaCvt<scalar_t>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (row >= R) return;
  acc_of<scalar_t> buf[kThreadRowMaxK];
  const int64_t at = row * K;
  dreamer_fast::heads::categorical_forward_row<Cvt, scalar_t, acc_of<scalar_t>>(
      logits + at, uniform[row], probs + at, sample + at, buf, K, keep, floor);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) categorical_backward_thread_kernel(
    const scalar_t* __restrict__ g_sample, const scalar_t* __restrict__ g_probs,
    const scalar_t* __restrict__ logits, scalar_t* __restrict__ g_logits, acc_of<scalar_t> keep,
    int64_t R, int K) {
  using Cvt = CudaCvt<scalar_t>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (row >= R) return;
  acc_of<scalar_t> buf[kThreadRowMaxK];
  const int64_t at = row * K;
  dreamer_fast::heads::categorical_backward_row<Cvt, scalar_t, acc_of<scalar_t>>(
      g_sample ? g_sample + at : nullptr, g_probs ? g_probs + at : nullptr, logits + at,
      g_logits + at, buf, K, keep);
}

// ---- Categorical, larger K: one warp per row ----------------------------------------

template <typename acc_t>
__device__ __forceinline__ acc_t warp_max(acc_t v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    v = dreamer_fast::heads::max_step(v, __shfl_xor_sync(kFullMask, v, off));
  }
  return v;
}

// Butterfly sum: every lane ends with the same bits (a + b == b + a exactly).
template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) v = v + __shfl_xor_sync(kFullMask, v, off);
  return v;
}

template <typename acc_t>
__device__ __forceinline__ acc_t neg_inf() {
  return -static_cast<acc_t>(INFINITY);
}

// Row max and normaliser Z = sum_k exp(x_k - max). With kChunks > 0, e[j] is left
// holding this lane's exp(x_k - max) for k = j * 32 + lane (0 past K).
template <int kChunks, typename Cvt, typename scalar_t, typename acc_t>
__device__ __forceinline__ void warp_softmax_stats(const scalar_t* __restrict__ x, int K,
                                                   int lane, acc_t* e, acc_t& m, acc_t& Z) {
  const int chunks = kChunks > 0 ? kChunks : (K + kWarp - 1) / kWarp;
  m = neg_inf<acc_t>();
#pragma unroll
  for (int j = 0; j < chunks; ++j) {
    const int k = j * kWarp + lane;
    const acc_t v = k < K ? Cvt::load(x[k]) : neg_inf<acc_t>();
    if constexpr (kChunks > 0) e[j] = v;
    m = dreamer_fast::heads::max_step(m, v);
  }
  m = warp_max(m);
  Z = acc_t(0);
#pragma unroll
  for (int j = 0; j < chunks; ++j) {
    const int k = j * kWarp + lane;
    acc_t v;
    if constexpr (kChunks > 0) {
      v = k < K ? dreamer_fast::heads::exp_acc(e[j] - m) : acc_t(0);
      e[j] = v;
    } else {
      v = k < K ? dreamer_fast::heads::exp_acc(Cvt::load(x[k]) - m) : acc_t(0);
    }
    Z = Z + v;
  }
  Z = warp_sum(Z);
}

// exp(x_k - max) for this lane's k = j * 32 + lane (registers or recomputed).
template <int kChunks, typename Cvt, typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t warp_exp_at(const scalar_t* __restrict__ x, int K, int k,
                                             const acc_t* e, int j, acc_t m) {
  if constexpr (kChunks > 0) {
    return e[j];
  } else {
    return k < K ? dreamer_fast::heads::exp_acc(Cvt::load(x[k]) - m) : acc_t(0);
  }
}

template <typename scalar_t, int kChunks>
__global__ void __launch_bounds__(kThreads) categorical_forward_warp_kernel(
    const scalar_t* __restrict__ logits, const scalar_t* __restrict__ uniform,
    scalar_t* __restrict__ probs, scalar_t* __restrict__ sample, acc_of<scalar_t> keep,
    acc_of<scalar_t> floor, int64_t R, int K) {
  using Cvt = CudaCvt<scalar_t>;
  using acc_t = acc_of<scalar_t>;
  namespace hm = dreamer_fast::heads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= R) return;  // warp-uniform: the whole warp leaves
  const int lane = threadIdx.x % kWarp;
  const int chunks = kChunks > 0 ? kChunks : (K + kWarp - 1) / kWarp;
  const scalar_t* x = logits + row * K;
  scalar_t* p_out = probs + row * K;
  scalar_t* s_out = sample + row * K;

  acc_t v[kChunks > 0 ? kChunks : 1];
  acc_t m, Z;
  warp_softmax_stats<kChunks, Cvt>(x, K, lane, v, m, Z);

  // probs, and the sequential index search over k = 0 .. K-2.
  const acc_t u = Cvt::load(uniform[row]);
  acc_t c = acc_t(0);
  int index = -1;
#pragma unroll
  for (int j = 0; j < chunks; ++j) {
    const int k = j * kWarp + lane;
    const acc_t p =
        k < K ? hm::mix_prob(warp_exp_at<kChunks, Cvt>(x, K, k, v, j, m), Z, keep, floor)
              : acc_t(0);
    if constexpr (kChunks > 0) v[j] = p;
    if (k < K) p_out[k] = Cvt::store(p);
    if (index < 0) {  // warp-uniform (c and u are the same on every lane)
      const int steps = K - 1 - j * kWarp;  // classes k < K - 1 in this chunk
#pragma unroll
      for (int t = 0; t < kWarp; ++t) {
        const acc_t pt = __shfl_sync(kFullMask, p, t);
        if (t < steps && index < 0) {
          c = hm::cumsum_step(c, pt);
          if (u < c) index = j * kWarp + t;
        }
      }
    }
  }
  if (index < 0) index = K - 1;

#pragma unroll
  for (int j = 0; j < chunks; ++j) {
    const int k = j * kWarp + lane;
    if (k >= K) continue;
    acc_t p;
    if constexpr (kChunks > 0) {
      p = v[j];
    } else {
      p = hm::mix_prob(warp_exp_at<kChunks, Cvt>(x, K, k, v, j, m), Z, keep, floor);
    }
    s_out[k] = Cvt::store(hm::straight_through(k == index ? acc_t(1) : acc_t(0), p));
  }
}

template <typename scalar_t, int kChunks>
__global__ void __launch_bounds__(kThreads) categorical_backward_warp_kernel(
    const scalar_t* __restrict__ g_sample, const scalar_t* __restrict__ g_probs,
    const scalar_t* __restrict__ logits, scalar_t* __restrict__ g_logits, acc_of<scalar_t> keep,
    int64_t R, int K) {
  using Cvt = CudaCvt<scalar_t>;
  using acc_t = acc_of<scalar_t>;
  namespace hm = dreamer_fast::heads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= R) return;
  const int lane = threadIdx.x % kWarp;
  const int chunks = kChunks > 0 ? kChunks : (K + kWarp - 1) / kWarp;
  const int64_t at = row * K;
  const scalar_t* x = logits + at;
  const scalar_t* gs = g_sample ? g_sample + at : nullptr;
  const scalar_t* gp = g_probs ? g_probs + at : nullptr;

  acc_t v[kChunks > 0 ? kChunks : 1];  // exp, then softmax
  acc_t g[kChunks > 0 ? kChunks : 1];  // upstream gradient
  acc_t m, Z;
  warp_softmax_stats<kChunks, Cvt>(x, K, lane, v, m, Z);

  acc_t dot = acc_t(0);
#pragma unroll
  for (int j = 0; j < chunks; ++j) {
    const int k = j * kWarp + lane;
    if (k >= K) continue;
    const acc_t s = warp_exp_at<kChunks, Cvt>(x, K, k, v, j, m) / Z;
    const acc_t gk = hm::upstream_grad<Cvt, scalar_t, acc_t>(gs, gp, k);
    if constexpr (kChunks > 0) {
      v[j] = s;
      g[j] = gk;
    }
    dot = dot + s * gk;
  }
  dot = warp_sum(dot);

#pragma unroll
  for (int j = 0; j < chunks; ++j) {
    const int k = j * kWarp + lane;
    if (k >= K) continue;
    acc_t s, gk;
    if constexpr (kChunks > 0) {
      s = v[j];
      gk = g[j];
    } else {
      s = warp_exp_at<kChunks, Cvt>(x, K, k, v, j, m) / Z;
      gk = hm::upstream_grad<Cvt, scalar_t, acc_t>(gs, gp, k);
    }
    g_logits[at + k] = Cvt::store(hm::logit_grad(s, gk, dot, keep));
  }
}

// ---- Launch helpers ---------------------------------------------------------------

constexpr int64_t kMaxBlocks = 0x7fffffff;

// Calls fn(index tag) with uint32_t when every element index of `total` (plus a block
// of overshoot) fits in 32 bits, int64_t otherwise: 32-bit index math is cheaper.
template <typename Fn>
void dispatch_index(int64_t total, const Fn& fn) {
  if (total + kThreads <= static_cast<int64_t>(UINT32_MAX)) {
    fn(uint32_t{});
  } else {
    fn(int64_t{});
  }
}

// Calls fn(std::integral_constant<int, kChunks>) for the warp kernel that fits K.
template <typename Fn>
void dispatch_chunks(int64_t K, const Fn& fn) {
  if (K <= 32) {
    fn(std::integral_constant<int, 1>{});
  } else if (K <= 64) {
    fn(std::integral_constant<int, 2>{});
  } else if (K <= 128) {
    fn(std::integral_constant<int, 4>{});
  } else if (K <= 256) {
    fn(std::integral_constant<int, 8>{});
  } else {
    fn(std::integral_constant<int, 0>{});
  }
}

}  // namespace

cudaError_t gaussian_sample_forward(Dtype dtype, const void* stats, const void* noise,
                                    void* sample, void* mean, void* std, double min_std,
                                    int std_act, int mean_act, int min_std_mode, int64_t R,
                                    int64_t S, cudaStream_t stream) {
  const int64_t total = R * S;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = blocks_for(total, kThreads);
  if (blocks > kMaxBlocks) return cudaErrorInvalidConfiguration;
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    using acc_t = acc_of<s>;
    const auto launch = [&](auto index_tag) {
      using index_t = decltype(index_tag);
      launch_kernel(gaussian_forward_kernel<s, index_t>, static_cast<unsigned>(blocks), kThreads,
          stream,
          static_cast<const s*>(stats), static_cast<const s*>(noise), static_cast<s*>(sample),
          static_cast<s*>(mean), static_cast<s*>(std),
          dreamer_fast::heads::GaussianHead<acc_t>{static_cast<acc_t>(min_std), std_act, mean_act,
                                                   min_std_mode},
          static_cast<index_t>(total), static_cast<index_t>(S));
    };
    dispatch_index(total, launch);
  });
}

cudaError_t gaussian_sample_backward(Dtype dtype, const void* g_sample, const void* g_mean,
                                     const void* g_std, const void* stats, const void* noise,
                                     void* g_stats, void* g_noise, double min_std, int std_act,
                                     int mean_act, int min_std_mode, int64_t R, int64_t S,
                                     cudaStream_t stream) {
  const int64_t total = R * S;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = blocks_for(total, kThreads);
  if (blocks > kMaxBlocks) return cudaErrorInvalidConfiguration;
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    using acc_t = acc_of<s>;
    const auto launch = [&](auto index_tag) {
      using index_t = decltype(index_tag);
      launch_kernel(gaussian_backward_kernel<s, index_t>, static_cast<unsigned>(blocks), kThreads,
          stream,
          static_cast<const s*>(g_sample), static_cast<const s*>(g_mean),
          static_cast<const s*>(g_std), static_cast<const s*>(stats),
          static_cast<const s*>(noise), static_cast<s*>(g_stats), static_cast<s*>(g_noise),
          dreamer_fast::heads::GaussianHead<acc_t>{static_cast<acc_t>(min_std), std_act, mean_act,
                                                   min_std_mode},
          static_cast<index_t>(total), static_cast<index_t>(S));
    };
    dispatch_index(total, launch);
  });
}

namespace {

// One thread per element of an [R, A] action array: dtype and index-width dispatch and
// the head's constants, shared by both directions. launch(s{}, index_t{}, blocks, h).
template <typename Launch>
cudaError_t launch_normal_action(Dtype dtype, double min_std, double std_range,
                                 double std_offset, double mean_scale, int64_t total,
                                 const Launch& launch) {
  if (total == 0) return cudaSuccess;
  const int64_t blocks = blocks_for(total, kThreads);
  if (blocks > kMaxBlocks) return cudaErrorInvalidConfiguration;
  return dispatch_dtype(dtype, [&](auto tag) {
    using acc_t = acc_of<decltype(tag)>;
    const dreamer_fast::heads::NormalActionHead<acc_t> h{
        static_cast<acc_t>(min_std), static_cast<acc_t>(std_range),
        static_cast<acc_t>(std_offset), static_cast<acc_t>(mean_scale)};
    dispatch_index(total, [&](auto index_tag) { launch(tag, index_tag, blocks, h); });
  });
}

}  // namespace

cudaError_t normal_action_forward(Dtype dtype, const void* raw, const void* noise, void* action,
                                  bool tanh_normal, double min_std, double std_range,
                                  double std_offset, double mean_scale, int64_t R, int64_t A,
                                  cudaStream_t stream) {
  return launch_normal_action(
      dtype, min_std, std_range, std_offset, mean_scale, R * A,
      [&](auto tag, auto index_tag, int64_t blocks, const auto& h) {
        using s = decltype(tag);
        using index_t = decltype(index_tag);
        const auto kernel = tanh_normal ? normal_action_forward_kernel<true, s, index_t>
                                        : normal_action_forward_kernel<false, s, index_t>;
        launch_kernel(kernel, static_cast<unsigned>(blocks), kThreads, stream,
            static_cast<const s*>(raw), static_cast<const s*>(noise), static_cast<s*>(action),
            h, static_cast<index_t>(R * A), static_cast<index_t>(A));
      });
}

cudaError_t normal_action_backward(Dtype dtype, const void* raw, const void* noise,
                                   const void* g_action, void* g_raw, bool tanh_normal,
                                   double min_std, double std_range, double std_offset,
                                   double mean_scale, int64_t R, int64_t A,
                                   cudaStream_t stream) {
  return launch_normal_action(
      dtype, min_std, std_range, std_offset, mean_scale, R * A,
      [&](auto tag, auto index_tag, int64_t blocks, const auto& h) {
        using s = decltype(tag);
        using index_t = decltype(index_tag);
        const auto kernel = tanh_normal ? normal_action_backward_kernel<true, s, index_t>
                                        : normal_action_backward_kernel<false, s, index_t>;
        launch_kernel(kernel, static_cast<unsigned>(blocks), kThreads, stream,
            static_cast<const s*>(raw), static_cast<const s*>(noise),
            static_cast<const s*>(g_action), static_cast<s*>(g_raw), h,
            static_cast<index_t>(R * A), static_cast<index_t>(A));
      });
}

cudaError_t categorical_sample_forward(Dtype dtype, const void* logits, const void* uniform,
                                       void* probs, void* sample, double unimix, int64_t R,
                                       int64_t K, cudaStream_t stream) {
  if (R == 0) return cudaSuccess;
  if (K < 1 || K > INT32_MAX) return cudaErrorInvalidValue;
  const bool per_thread = K <= kThreadRowMaxK;
  const int64_t blocks = blocks_for(R, per_thread ? kThreads : kWarpsPerBlock);
  if (blocks > kMaxBlocks) return cudaErrorInvalidConfiguration;
  const int k = static_cast<int>(K);
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    using acc_t = acc_of<s>;
    const acc_t keep = static_cast<acc_t>(1.0 - unimix);
    const acc_t floor = static_cast<acc_t>(unimix / static_cast<double>(K));
    const dim3 grid(static_cast<unsigned>(blocks));
    const auto* pl = static_cast<const s*>(logits);
    const auto* pu = static_cast<const s*>(uniform);
    auto* pp = static_cast<s*>(probs);
    auto* ps = static_cast<s*>(sample);
    if (per_thread) {
      launch_kernel(categorical_forward_thread_kernel<s>, grid, kThreads, stream, pl, pu, pp, ps,
                    keep, floor, R, k);
    } else {
      dispatch_chunks(K, [&](auto chunks) {
        launch_kernel(categorical_forward_warp_kernel<s, decltype(chunks)::value>, grid, kThreads,
                      stream, pl, pu, pp, ps, keep, floor, R, k);
      });
    }
  });
}

cudaError_t categorical_sample_backward(Dtype dtype, const void* g_sample, const void* g_probs,
                                        const void* logits, void* g_logits, double unimix,
                                        int64_t R, int64_t K, cudaStream_t stream) {
  if (R == 0) return cudaSuccess;
  if (K < 1 || K > INT32_MAX) return cudaErrorInvalidValue;
  const bool per_thread = K <= kThreadRowMaxK;
  const int64_t blocks = blocks_for(R, per_thread ? kThreads : kWarpsPerBlock);
  if (blocks > kMaxBlocks) return cudaErrorInvalidConfiguration;
  const int k = static_cast<int>(K);
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    using acc_t = acc_of<s>;
    const acc_t keep = static_cast<acc_t>(1.0 - unimix);
    const dim3 grid(static_cast<unsigned>(blocks));
    const auto* pgs = static_cast<const s*>(g_sample);
    const auto* pgp = static_cast<const s*>(g_probs);
    const auto* pl = static_cast<const s*>(logits);
    auto* pg = static_cast<s*>(g_logits);
    if (per_thread) {
      launch_kernel(categorical_backward_thread_kernel<s>, grid, kThreads, stream, pgs, pgp, pl,
                    pg, keep, R, k);
    } else {
      dispatch_chunks(K, [&](auto chunks) {
        launch_kernel(categorical_backward_warp_kernel<s, decltype(chunks)::value>, grid, kThreads,
                      stream, pgs, pgp, pl, pg, keep, R, k);
      });
    }
  });
}

}  // namespace heads
}  // namespace cuda
}  // namespace dreamer_fast
