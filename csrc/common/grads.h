// Where a backward pass puts its parameter gradients. The building blocks of a backward
// (dense layers, cells) name a parameter by its index in the op's parameter list and
// say how its gradient is formed from the pass's tensors; the sink decides when the
// products run:
//   ImmediateGrads  at once, one product per parameter (the single-step ops);
//   Grads           deferred: a pass over T steps records (dz_t, x_t) pairs and
//                   `finish` turns each weight's pairs into one product over all T·B
//                   rows, instead of T skinny products each reading and writing the
//                   whole weight gradient (the sequence ops).
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <tuple>
#include <vector>

namespace dreamer_fast {

using at::Tensor;

class GradSink {
 public:
  virtual ~GradSink() = default;
  // false: nobody needs these gradients; every record is dropped and the callers skip
  // what only the gradients read (the norm-parameter column sums).
  virtual bool wanted() const = 0;
  // dW[idx](:, col0:col0+cols of x) += dz^T x
  virtual void mm(int64_t idx, const Tensor& dz, const Tensor& x, int64_t col0 = 0) = 0;
  // db[idx] += sum over rows of dz
  virtual void rowsum(int64_t idx, const Tensor& dz) = 0;
  // block-diagonal weight [G, in_g, out_g]: dW[idx][:, row0:row0+in_g] += x_g^T dy_g
  virtual void block(int64_t idx, const Tensor& dy, const Tensor& x, int64_t G,
                     int64_t row0 = 0) = 0;
  // the rows of a block weight that every block reads from one shared input x:
  // dW[idx][:, row0:row0+cols of x] += [G, cols, out_g] from x^T dz
  virtual void block_x(int64_t idx, const Tensor& dz, const Tensor& x, int64_t G,
                       int64_t row0) = 0;
  // a finished gradient (the norm weights' column sums)
  virtual void add(int64_t idx, const Tensor& g) = 0;
};

// The products behind `block` and `block_x`, shared by both sinks.
Tensor block_weight_grad(const Tensor& dy, const Tensor& x, int64_t G);    // [G, in_g, out_g]
Tensor block_x_weight_grad(const Tensor& dz, const Tensor& x, int64_t G);  // [G, cols, out_g]

// One gradient per parameter, each formed when it is taken. The pieces of a weight
// (column blocks of one mm over the same dz; row blocks of a block weight) are joined
// the way the single-step ops have always formed them: one product over the
// concatenated inputs, and the concatenation of the block pieces.
class ImmediateGrads final : public GradSink {
 public:
  explicit ImmediateGrads(size_t n) : entries_(n) {}
  bool wanted() const override { return true; }
  void mm(int64_t idx, const Tensor& dz, const Tensor& x, int64_t col0 = 0) override;
  void rowsum(int64_t idx, const Tensor& dz) override;
  void block(int64_t idx, const Tensor& dy, const Tensor& x, int64_t G,
             int64_t row0 = 0) override;
  void block_x(int64_t idx, const Tensor& dz, const Tensor& x, int64_t G,
               int64_t row0) override;
  void add(int64_t idx, const Tensor& g) override;
  // The gradient of parameter idx; undefined when nothing was recorded for it.
  Tensor take(int64_t idx);

 private:
  enum Kind : int { kMm, kRowSum, kBlock, kAdd };
  struct Piece {
    Kind kind;
    int64_t off;
    Tensor a, b;
  };
  std::vector<std::vector<Piece>> entries_;
};

// Deferred gradients (see the file comment).
class Grads final : public GradSink {
 public:
  // `wanted` false: nobody needs these gradients (imagination with the world model
  // detached); every record is dropped and the norm-parameter sums are not computed.
  explicit Grads(at::TensorList params, bool wanted = true)
      : params_(params.vec()), out_(params.size()), wanted_(wanted) {}
  bool wanted() const override { return wanted_; }
  void mm(int64_t idx, const Tensor& dz, const Tensor& x, int64_t col0 = 0) override;
  void rowsum(int64_t idx, const Tensor& dz) override;
  // mm / rowsum with dz given transposed, dzT [N, rows]: steps that are consecutive
  // column blocks of one [N, T·B] buffer are then the product's left operand as they
  // are, where `mm` would transpose all T·B rows of dz at once in `finish`.
  void mm_t(int64_t idx, const Tensor& dzT, const Tensor& x, int64_t col0 = 0);
  void rowsum_t(int64_t idx, const Tensor& dzT);
  void block(int64_t idx, const Tensor& dy, const Tensor& x, int64_t G,
             int64_t row0 = 0) override;
  void block_x(int64_t idx, const Tensor& dz, const Tensor& x, int64_t G,
               int64_t row0) override;
  void add(int64_t idx, const Tensor& g) override;
  // One tensor per parameter (zeros where nothing was recorded).
  std::vector<Tensor> finish();

 private:
  enum Kind : int { kMm, kRowSum, kBlock, kBlockX, kMmT, kRowSumT };
  struct Entry {
    std::vector<Tensor> a, b;
    int64_t G = 1;
  };
  Tensor& dst(int64_t idx);
  void record(int64_t idx, Kind kind, int64_t off, const Tensor& a, const Tensor& b, int64_t G);
  static void accumulate(Tensor& dst, Kind kind, int64_t off, const Tensor& a, const Tensor& b,
                         int64_t G);
  std::vector<Tensor> params_, out_;
  bool wanted_;
  std::map<std::tuple<int64_t, int, int64_t>, Entry> entries_;
};

}  // namespace dreamer_fast
