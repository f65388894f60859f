// The pieces of an RSSM step and of the actor as C++ building blocks, for the
// whole-sequence ops in rssm_ops.cpp (observe, imagine). Every GEMM goes through
// gemm.h (cuBLAS / oneDNN / BLAS); every pointwise or row-wise stage is one launch of the
// kernels shared with the single-layer ops (dense epilogues, GRU gates, heads).
//
// Parameters arrive as one flat tensor list plus an integer and a float spec, built
// by dreamer_fast/ops/rssm.py from the nn modules (see `parse_rssm` /
// `parse_actor` for the exact layout). Weight gradients are *deferred*: a backward
// pass over T steps records (dz_t, x_t) pairs and `Grads::finish` turns each weight's
// pairs into one GEMM over all T·B rows, instead of T skinny GEMMs each reading and
// writing the whole weight gradient.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <tuple>
#include <vector>

#include "dense/dense.h"

namespace dreamer_fast {
namespace rssm {

using at::Tensor;

// A dense layer `act(norm(x W^T + b))`: indices into the parameter list (-1 = absent).
struct DenseRef {
  int64_t w = -1, b = -1, nw = -1, nb = -1;
  int norm = 0, act = 0;
  double eps = 1e-3;
};

enum Cell : int { kGru = 0, kLnGru = 1, kBlockGru = 2 };

struct Spec {
  int cell = kGru;
  int64_t classes = 0;  // 0: Gaussian latents
  int64_t stoch = 0;    // S (latent groups / Gaussian dims)
  int64_t blocks = 1, dynlayers = 1;
  int cell_act = 1;
  bool cell_bias = true;
  int64_t cell_first = 0;  // index of the first cell tensor
  std::vector<DenseRef> img_in, img_out, obs_out;
  double cell_eps = 1e-3, update_bias = -1.0, unimix = 0.01, min_std = 0.1;

  int64_t flat_stoch() const { return classes ? stoch * classes : stoch; }
  int64_t stats_size() const { return classes ? stoch * classes : 2 * stoch; }
};

// spec ints: [cell, classes, stoch, blocks, dynlayers, cell_act, cell_bias, n_img_in,
//             n_img_out, n_obs_out, then (has_bias, norm, act) per dense layer in the
//             order img_in, img_out, obs_out]
// floats:    [dense eps, cell eps, update_bias, unimix, min_std]
// tensors:   img_in layer tensors, cell tensors, img_out layers, obs_out layers; a dense
//            layer contributes W, then b, norm_weight, norm_bias where present; cells:
//            gru (w_ih, w_hh[, b_ih, b_hh]), ln_gru (weight, norm_weight, norm_bias),
//            block_gru (9 input-layer tensors, 3 per hidden layer, gru_weight, gru_bias).
Spec parse_rssm(const char* op, at::TensorList params, at::IntArrayRef ints,
                at::ArrayRef<double> floats);

enum ActorHead : int { kTanhNormal = 0, kBoundedNormal = 1, kCategorical = 2 };

struct ActorSpec {
  int head = kBoundedNormal;
  int64_t actions = 0;
  std::vector<DenseRef> layers;  // the MLP, output layer last
  double min_std = 0.1, max_std = 1.0, std_offset = 0.0, mean_scale = 1.0, unimix = 0.01;
};

// ints: [head, actions, n_layers, then (has_bias, norm, act) per layer]
// floats: [dense eps, min_std, max_std, std_offset, mean_scale, unimix]
ActorSpec parse_actor(const char* op, at::TensorList params, at::IntArrayRef ints,
                      at::ArrayRef<double> floats);

// dst [C, R] = src^T for src [R, C]; dst may be a column block of a wider buffer
// (unit column stride). Tiled on the CPU for float / double, ATen's copy otherwise.
void copy_transposed(const Tensor& dst, const Tensor& src);

// Deferred parameter gradients (see the file comment). Accumulating an imagination
// step's products at once instead (N = 1024 rows each) measured slower: every step
// then transposes its dz for the product.
class Grads {
 public:
  // `wanted` false: nobody needs these gradients (imagination with the world model
  // detached); every record is dropped and the norm-parameter sums are not computed.
  explicit Grads(at::TensorList params, bool wanted = true)
      : params_(params.vec()), out_(params.size()), wanted_(wanted) {}
  bool wanted() const { return wanted_; }
  // dW[idx](:, col0:col0+cols of x) += dz^T x
  void mm(int64_t idx, const Tensor& dz, const Tensor& x, int64_t col0 = 0);
  // db[idx] += sum over rows of dz
  void rowsum(int64_t idx, const Tensor& dz);
  // mm / rowsum with dz given transposed, dzT [N, rows]: steps that are consecutive
  // column blocks of one [N, T·B] buffer are then the product's left operand as they
  // are, where `mm` would transpose all T·B rows of dz at once in `finish` (a cold
  // 8 MB copy at 1024 x 15 x 128 that cost more than the product).
  void mm_t(int64_t idx, const Tensor& dzT, const Tensor& x, int64_t col0 = 0);
  void rowsum_t(int64_t idx, const Tensor& dzT);
  // block-diagonal weight [G, in_g, out_g]: dW[idx][:, row0:row0+in_g] += x_g^T dy_g
  void block(int64_t idx, const Tensor& dy, const Tensor& x, int64_t G, int64_t row0 = 0);
  // the x rows of the block GRU's first hidden weight: [G, rows, Dg] from dz^T x
  void block_x(int64_t idx, const Tensor& dz, const Tensor& x, int64_t G, int64_t row0);
  void add(int64_t idx, const Tensor& g);
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

// ---- dense layers -------------------------------------------------------------------

struct LayerSaved {
  Tensor x, z, stats;
};

dense::Params layer_params(at::TensorList P, const DenseRef& r);
// out = layer(x); appends (x, z, stats) to `saved` when given. `out` (optional): the
// step of a sequence buffer the output is written to (see dense::forward).
Tensor layer_forward(at::TensorList P, const DenseRef& r, const Tensor& x,
                     std::vector<Tensor>* saved, const Tensor& out = Tensor());
// The epilogue on a precomputed linear output z (bias already added).
Tensor layer_epilogue(at::TensorList P, const DenseRef& r, const Tensor& z, const Tensor& x,
                      std::vector<Tensor>* saved, const Tensor& out = Tensor());
// dz of a layer (the gradient at its linear output); records the norm parameter grads.
Tensor layer_backward_dz(at::TensorList P, const DenseRef& r, const LayerSaved& s,
                         const Tensor& dout, Grads& g);
// Full layer backward: records dW, db; returns dx when `need_dx`.
Tensor layer_backward(at::TensorList P, const DenseRef& r, const LayerSaved& s,
                      const Tensor& dout, Grads& g, bool need_dx);

// ---- the recurrent cell ------------------------------------------------------------

// One cell step: deter' from (x = img_in output, or nothing for block_gru), deter,
// and for block_gru the flat stoch and action. Appends what backward needs.
// `out`, when defined, is a contiguous [B, D] buffer (a step of a sequence buffer) that
// receives deter' and is returned.
Tensor cell_forward(at::TensorList P, const Spec& s, const Tensor& x, const Tensor& deter,
                    const Tensor& stoch, const Tensor& action, std::vector<Tensor>* saved,
                    const Tensor& out = Tensor());
int64_t cell_saved_count(const Spec& s);
// Indices, among a cell's cell_saved_count saved tensors, of those that only its weight
// gradients read: the GRU cells' input x; the block GRU's concatenated input projections
// and hidden-layer outputs. The first one is the cell's first weight input.
std::vector<int64_t> cell_weight_input_slots(const Spec& s);
struct CellGrads {
  Tensor x, deter, stoch, action;  // x for gru/ln_gru; stoch/action for block_gru
};
CellGrads cell_backward(at::TensorList P, const Spec& s, const Tensor* saved,
                        const Tensor& d_deter_out, Grads& g);

// ---- latent heads ------------------------------------------------------------------

struct HeadOut {
  Tensor sample, a, b;  // categorical: one-hot [R, S*K], logits, (undefined);
                        // Gaussian: sample [R, S], mean, std
};
HeadOut latent_forward(const Spec& s, const Tensor& stats, const Tensor& noise);
// d stats [R, stats_size] from the output grads (each may be undefined).
Tensor latent_backward(const Spec& s, const Tensor& stats, const Tensor& noise,
                       const Tensor& g_sample, const Tensor& g_a, const Tensor& g_b);

// ---- actor heads --------------------------------------------------------------------

// action [R, A] from the actor MLP output raw [R, 2A] (or [R, A]) and noise.
Tensor action_forward(const ActorSpec& a, const Tensor& raw, const Tensor& noise);
Tensor action_backward(const ActorSpec& a, const Tensor& raw, const Tensor& noise,
                       const Tensor& g_action);

}  // namespace rssm
}  // namespace dreamer_fast
