// Matrix products (see gemm.h).
#include "common/gemm.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <cctype>
#include <cstdlib>
#include <optional>
#include <string>

namespace dreamer_fast {
namespace gemm {

namespace {

// torch's `mkldnn::_linear_pointwise(X, W, B?, attr, scalars, algorithm)`:
// Y = X W^T + B with W [N, K] dense (any strides). Absent from builds without oneDNN.
const std::optional<c10::OperatorHandle>& onednn_linear() {
  static const std::optional<c10::OperatorHandle> op =
      c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  return op;
}

// `mkldnn::_reorder_linear_weight(W, batch_size?)`: W [N, K] in oneDNN's blocked layout.
const std::optional<c10::OperatorHandle>& onednn_reorder() {
  static const std::optional<c10::OperatorHandle> op =
      c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_linear_weight", ""});
  return op;
}

thread_local PackedWeights* active_packs = nullptr;

bool same_view(const Tensor& x, const Tensor& y) {
  return x.data_ptr() == y.data_ptr() && x.sizes() == y.sizes() && x.strides() == y.strides();
}

// Below this many multiply-adds (and fewer than 64 rows) the primitive's fixed cost
// outweighs its faster inner loop (a one-row product is faster through at::mm, a
// 16-row one through oneDNN).
constexpr int64_t kMinMacs = int64_t{1} << 21;
constexpr int64_t kMinRows = 64;

// oneDNN's fast kernels read a weight W [N, K] in row- or column-major order; any
// other strides (a column block of a wider weight) send it to a reference loop much
// slower than a copy.
bool dense_either_way(const Tensor& W) {
  const int64_t N = W.size(0), K = W.size(1);
  return (W.stride(1) == 1 && (W.stride(0) == K || N == 1)) ||
         (W.stride(0) == 1 && (W.stride(1) == N || K == 1));
}

// Whether a product of M rows with the right operand `b` [K, N] takes oneDNN.
bool onednn_for(int64_t M, const Tensor& b) {
  if (!b.device().is_cpu() || b.scalar_type() != at::kFloat || b.dim() != 2) return false;
  const int64_t K = b.size(0), N = b.size(1);
  if (M == 0 || K == 0 || N == 0) return false;
  if (M < kMinRows && M * K * N < kMinMacs) return false;
  if (!at::globalContext().userEnabledMkldnn()) return false;
  // At "medium" at::mm itself runs float32 products through oneDNN with bf16
  // arithmetic (where the CPU has it); this inner product would stay IEEE float32.
  if (at::globalContext().float32MatmulPrecision() == at::Float32MatmulPrecision::MEDIUM)
    return false;
  return onednn_linear().has_value();
}

Tensor onednn_mm(const Tensor& a, const Tensor& b, const Tensor& bias) {
  torch::jit::Stack stack;
  stack.reserve(6);
  stack.emplace_back(a.contiguous());
  const Tensor packed = active_packs ? active_packs->find(b) : Tensor();
  const Tensor W = b.t();  // [N, K]
  stack.emplace_back(packed.defined() ? packed : dense_either_way(W) ? W : W.contiguous());
  stack.emplace_back(bias.defined() ? c10::IValue(bias) : c10::IValue());
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<std::optional<c10::Scalar>>());
  stack.emplace_back(std::string(""));
  onednn_linear()->callBoxed(&stack);
  return std::move(stack[0]).toTensor();
}

// Products below this many multiply-adds run on the calling thread alone while
// libgomp's idle workers spin (OMP_WAIT_POLICY unset or ACTIVE). Why: a parallel region
// must wait for every worker of the team, and on a machine whose cores are busy with
// other jobs a spinning worker is often descheduled, so one region can cost a
// scheduler slice (milliseconds). The per-step products of a sequence (B = 16 rows:
// [16, 1024] x [1024, 1536] is 25M multiply-adds, about 1 ms on one core) then cost
// more in waiting than a second thread saves: the fused LN-GRU observe at B16xT64 took
// 14.4 s with two threads against 3.2 s with one beside a busy machine (1.6 s with
// OMP_WAIT_POLICY=PASSIVE and two threads). Larger products (the imagination's
// thousands of rows, the weight gradients over all steps) keep every thread.
constexpr int64_t kSerialMacs = int64_t{1} << 26;

// libgomp reads OMP_WAIT_POLICY once, when it is loaded; so do we.
bool passive_waits() {
  static const bool passive = [] {
    const char* v = std::getenv("OMP_WAIT_POLICY");
    std::string s = v ? v : "";
    for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return s == "passive";
  }();
  return passive;
}

// While alive, torch's intra-op work on this thread (the BLAS / oneDNN product, any
// at::parallel_for inside it) uses `threads` threads; the previous count comes back
// after. at::set_num_threads sets this thread's OpenMP and MKL thread counts.
class ProductThreads {
 public:
  explicit ProductThreads(const Tensor& a, const Tensor& b) {
    if (!a.device().is_cpu() || a.dim() != 2 || b.dim() != 2) return;
    prev_ = at::get_num_threads();
    const int want = product_threads(a.size(0), a.size(1), b.size(1));
    if (want < prev_) {
      at::set_num_threads(want);
      changed_ = true;
    }
  }
  ~ProductThreads() {
    if (changed_) at::set_num_threads(prev_);
  }
  ProductThreads(const ProductThreads&) = delete;
  ProductThreads& operator=(const ProductThreads&) = delete;

 private:
  int prev_ = 0;
  bool changed_ = false;
};

}  // namespace

int product_threads(int64_t M, int64_t K, int64_t N) {
  const int n = at::get_num_threads();
  if (n <= 1 || passive_waits()) return n;
  return M * K * N < kSerialMacs ? 1 : n;
}

SequenceThreads::SequenceThreads(const Tensor& like, int64_t rows) {
  constexpr int64_t kSerialRows = 64;
  if (!like.device().is_cpu() || rows > kSerialRows || passive_waits()) return;
  prev_ = at::get_num_threads();
  if (prev_ > 1) {
    at::set_num_threads(1);
    changed_ = true;
  }
}

SequenceThreads::~SequenceThreads() {
  if (changed_) at::set_num_threads(prev_);
}

bool uses_onednn(const Tensor& a, const Tensor& b) {
  return a.device().is_cpu() && a.scalar_type() == at::kFloat && a.dim() == 2 &&
         onednn_for(a.size(0), b);
}

Tensor mm(const Tensor& a, const Tensor& b) {
  const ProductThreads threads(a, b);
  // A left operand that is not row-major would be copied for the primitive: a single
  // layer's weight gradient dz^T x, with dz^T a transposed view of thousands of rows,
  // took ~1.5x longer that way than through at::mm, which reads the view through the
  // BLAS transpose flag. (Grads::finish instead makes one transposed copy that several
  // products share, and routes those to oneDNN.)
  const bool row_major = a.is_contiguous() || a.size(0) <= 1;
  return row_major && uses_onednn(a, b) ? onednn_mm(a, b, Tensor()) : at::mm(a, b);
}

Tensor addmm(const Tensor& c, const Tensor& a, const Tensor& b) {
  const ProductThreads threads(a, b);
  if (!uses_onednn(a, b)) return at::addmm(c, a, b);
  if (c.dim() == 1 && c.is_contiguous() && c.scalar_type() == at::kFloat)
    return onednn_mm(a, b, c);  // a bias: added inside the primitive
  return onednn_mm(a, b, Tensor()).add_(c);
}

Tensor& addmm_(Tensor& out, const Tensor& a, const Tensor& b) {
  const ProductThreads threads(a, b);
  if (!uses_onednn(a, b)) return out.addmm_(a, b);
  return out.add_(onednn_mm(a, b, Tensor()));
}

PackedWeights::PackedWeights(int64_t rows) : outer_(active_packs), rows_(rows) {
  active_packs = this;
}

PackedWeights::~PackedWeights() { active_packs = outer_; }

void PackedWeights::add(const Tensor& b) {
  if (!onednn_reorder().has_value()) return;
  if (!onednn_for(rows_, b) || find(b).defined()) return;
  torch::jit::Stack stack;
  stack.emplace_back(b.t().contiguous());
  stack.emplace_back(c10::IValue(rows_));
  onednn_reorder()->callBoxed(&stack);
  entries_.push_back({b, std::move(stack[0]).toTensor()});
}

Tensor PackedWeights::find(const Tensor& b) const {
  for (const Entry& e : entries_)
    if (same_view(e.view, b)) return e.packed;
  return Tensor();
}

}  // namespace gemm
}  // namespace dreamer_fast
