// The matrix products of every op, in one place.
//
// On CUDA, and for every dtype but float32 on the CPU, these are ATen's own
// at::mm / at::addmm (cuBLAS, or the CPU BLAS). For float32 on the CPU they go to
// oneDNN's inner-product primitive (the `mkldnn::_linear_pointwise` op that torch
// itself registers), looked up through the dispatcher at first use, when it exists,
// torch.backends.mkldnn is enabled and the product is big enough to repay its fixed
// cost. Why: torch's CPU wheels route float32 at::mm to MKL, whose kernels on the
// AMD EPYC (Zen 4) CPUs we run on are slower than oneDNN's for every shape an RSSM
// uses (both IEEE float32, same results to float32 rounding). At
// torch.set_float32_matmul_precision("medium") they stay with at::mm, which then runs
// float32 products through oneDNN with bf16 arithmetic itself.
//
// Shapes: a [M, K], b [K, N] (any strides; views of a weight are not copied), c a
// bias [N] or a full [M, N] addend. Results are new contiguous [M, N] tensors.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace dreamer_fast {
namespace gemm {

using at::Tensor;

// a @ b
Tensor mm(const Tensor& a, const Tensor& b);
// c + a @ b   (c: [N] or [M, N])
Tensor addmm(const Tensor& c, const Tensor& a, const Tensor& b);
// out += a @ b, in place; returns out
Tensor& addmm_(Tensor& out, const Tensor& a, const Tensor& b);

// The intra-op threads a CPU product [M, K] x [K, N] runs on: torch's count
// (at::get_num_threads()), except 1 for products under 2^26 multiply-adds while
// OpenMP's idle threads spin (OMP_WAIT_POLICY not PASSIVE), so that the per-step
// products of a sequence do not wait for descheduled workers on a busy machine (see
// gemm.cpp). mm/addmm/addmm_ apply it around each CPU product.
int product_threads(int64_t M, int64_t K, int64_t N);

// While alive (RAII, this thread; instances nest): all intra-op work of this thread
// (products, ATen's elementwise ops, at::parallel_for) runs on the calling thread alone
// when `like` is a CPU tensor, `rows` <= 64 and OpenMP's idle threads spin. For the
// sequence ops (observe, imagine and their backwards): at few rows a sequence is a long
// chain of small steps, each of which would open parallel regions, and on a busy machine
// every region can wait a scheduler slice for a descheduled worker (see gemm.cpp).
class SequenceThreads {
 public:
  SequenceThreads(const Tensor& like, int64_t rows);
  ~SequenceThreads();
  SequenceThreads(const SequenceThreads&) = delete;
  SequenceThreads& operator=(const SequenceThreads&) = delete;

 private:
  int prev_ = 0;
  bool changed_ = false;
};

// Whether mm(a, b) takes the oneDNN path.
bool uses_onednn(const Tensor& a, const Tensor& b);

// Weights reused by many products within one op call (the per-step GEMMs of a
// sequence), packed once into oneDNN's blocked layout: an unpacked weight is
// re-blocked inside every product, which at B=16 costs as much as the product.
// While an instance is alive (RAII, per thread; instances nest), mm/addmm/addmm_
// whose right operand `b` is exactly a registered tensor view (same data pointer,
// sizes and strides) use its packed copy. Register `b` as it will be passed: W.t() for
// x W^T, W for dz W. Registering does nothing where the oneDNN path is not taken
// (CUDA, meta, non-float32). The parameters must not change while it is alive.
class PackedWeights {
 public:
  explicit PackedWeights(int64_t rows);  // rows: the M of the products (a layout hint)
  ~PackedWeights();
  PackedWeights(const PackedWeights&) = delete;
  PackedWeights& operator=(const PackedWeights&) = delete;
  void add(const Tensor& b);
  // The packed copy of `b`, or an undefined tensor.
  Tensor find(const Tensor& b) const;

 private:
  struct Entry {
    Tensor view, packed;
  };
  std::vector<Entry> entries_;
  PackedWeights* outer_;
  int64_t rows_;
};

}  // namespace gemm
}  // namespace dreamer_fast
