// The heads kernel file itself (not a copy), compiled as C++ against the host emulation
// of CUDA (cuda_emu.h, through common/cuda_common.cuh) for dreamer_fast._cuda_emu; then,
// in the same translation unit (the kernels are in an unnamed namespace), the test
// hooks of hooks.h: the dispatch decisions and the 64-bit index kernels.
#include "heads/heads_cuda_kernels.cu"

#include "emu/hooks.h"

namespace dreamer_fast {
namespace emu {

int heads_index_bits(int64_t total) {
  int bits = 0;
  cuda::heads::dispatch_index(total, [&](auto tag) { bits = 8 * sizeof(tag); });
  return bits;
}

int heads_warp_chunks(int64_t K) {
  int chunks = -1;
  cuda::heads::dispatch_chunks(K, [&](auto c) { chunks = decltype(c)::value; });
  return chunks;
}

namespace {

using cuda::Dtype;
using cuda::dispatch_dtype;
namespace kh = cuda::heads;

template <typename s>
using acc_of = typename cuda::CudaCvt<s>::acc_t;

unsigned blocks_of(int64_t total) {
  return static_cast<unsigned>(cuda::blocks_for(total, kh::kThreads));
}

}  // namespace

cudaError_t gaussian_sample_forward_index64(Dtype dtype, const void* stats, const void* noise,
                                            void* sample, void* mean, void* std, double min_std,
                                            int std_act, int mean_act, int min_std_mode,
                                            int64_t R, int64_t S) {
  const int64_t total = R * S;
  if (total == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    cuda::launch_kernel(kh::gaussian_forward_kernel<s, int64_t>, blocks_of(total), kh::kThreads,
                        nullptr, static_cast<const s*>(stats), static_cast<const s*>(noise),
                        static_cast<s*>(sample), static_cast<s*>(mean), static_cast<s*>(std),
                        heads::GaussianHead<acc_of<s>>{static_cast<acc_of<s>>(min_std), std_act,
                                                       mean_act, min_std_mode},
                        total, S);
  });
}

cudaError_t gaussian_sample_backward_index64(Dtype dtype, const void* g_sample,
                                             const void* g_mean, const void* g_std,
                                             const void* stats, const void* noise, void* g_stats,
                                             void* g_noise, double min_std, int std_act,
                                             int mean_act, int min_std_mode, int64_t R,
                                             int64_t S) {
  const int64_t total = R * S;
  if (total == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    cuda::launch_kernel(kh::gaussian_backward_kernel<s, int64_t>, blocks_of(total),
                        kh::kThreads, nullptr, static_cast<const s*>(g_sample),
                        static_cast<const s*>(g_mean), static_cast<const s*>(g_std),
                        static_cast<const s*>(stats), static_cast<const s*>(noise),
                        static_cast<s*>(g_stats), static_cast<s*>(g_noise),
                        heads::GaussianHead<acc_of<s>>{static_cast<acc_of<s>>(min_std), std_act,
                                                       mean_act, min_std_mode},
                        total, S);
  });
}

namespace {
template <typename s>
heads::NormalActionHead<acc_of<s>> head_of(double min_std, double std_range, double std_offset,
                                           double mean_scale) {
  using acc_t = acc_of<s>;
  return {static_cast<acc_t>(min_std), static_cast<acc_t>(std_range),
          static_cast<acc_t>(std_offset), static_cast<acc_t>(mean_scale)};
}
}  // namespace

cudaError_t normal_action_forward_index64(Dtype dtype, const void* raw, const void* noise,
                                          void* action, bool tanh_normal, double min_std,
                                          double std_range, double std_offset,
                                          double mean_scale, int64_t R, int64_t A) {
  const int64_t total = R * A;
  if (total == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    const auto kernel = tanh_normal ? kh::normal_action_forward_kernel<true, s, int64_t>
                                    : kh::normal_action_forward_kernel<false, s, int64_t>;
    cuda::launch_kernel(kernel, blocks_of(total), kh::kThreads, nullptr,
                        static_cast<const s*>(raw), static_cast<const s*>(noise),
                        static_cast<s*>(action),
                        head_of<s>(min_std, std_range, std_offset, mean_scale), total, A);
  });
}

cudaError_t normal_action_backward_index64(Dtype dtype, const void* raw, const void* noise,
                                           const void* g_action, void* g_raw, bool tanh_normal,
                                           double min_std, double std_range, double std_offset,
                                           double mean_scale, int64_t R, int64_t A) {
  const int64_t total = R * A;
  if (total == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using s = decltype(tag);
    const auto kernel = tanh_normal ? kh::normal_action_backward_kernel<true, s, int64_t>
                                    : kh::normal_action_backward_kernel<false, s, int64_t>;
    cuda::launch_kernel(kernel, blocks_of(total), kh::kThreads, nullptr,
                        static_cast<const s*>(raw), static_cast<const s*>(noise),
                        static_cast<const s*>(g_action), static_cast<s*>(g_raw),
                        head_of<s>(min_std, std_range, std_offset, mean_scale), total, A);
  });
}

}  // namespace emu
}  // namespace dreamer_fast
