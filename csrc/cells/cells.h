// The recurrent cells as C++ building blocks, forward and backward, written once for the
// single-step ops (cells_ops.cpp: gru_cell, ln_gru_cell; block_gru.cpp: block_gru_cell)
// and for the whole-sequence RSSM ops (rssm/). The GEMMs go through common/gemm.h, the
// gates are one launch of the cell kernels (cells_launch.h, math in cells_math.h), the
// block GRU's dense layers are dense/dense.h's.
//
// A cell's tensors are a run of an op's parameter list P starting at `Cell::first`:
//   gru:       w_ih [3D, I], w_hh [3D, D], then b_ih [3D], b_hh [3D] where present
//   ln_gru:    weight [3D, I + D] (columns for cat(x, h), or cat(h, x) with
//              state_first), then norm_weight [3D], norm_bias [3D] unless norm is off
//   block_gru: W, b, scale of the deter, stoch and action input layers (W [U, D],
//              [U, S], [U, A]; b, scale [U]); W, b, scale of each hidden block layer
//              (W [G, Dg + 3U, Dg] for the first, [G, Dg, Dg] after; b, scale [D]);
//              gru_weight [G, Dg, 3Dg], gru_bias [3D]
// Parameter gradients go to a GradSink under those indices.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "common/grads.h"
#include "dense/dense.h"

namespace dreamer_fast {
namespace cells {

using at::Tensor;

enum Kind : int { kGru = 0, kLnGru = 1, kBlockGru = 2 };

struct Cell {
  Kind kind = kGru;
  int64_t first = 0;                   // index in P of the cell's first tensor
  bool bias_ih = true, bias_hh = true;  // gru: which biases are in P
  int64_t blocks = 1, layers = 1;      // block_gru: G, hidden block layers L
  int act = 1;                         // block_gru: every layer's activation (dense code)
  double eps = 1e-3;                   // ln_gru LayerNorm, block_gru RMSNorm
  double update_bias = -1.0;           // ln_gru (block_gru's is fixed, -1)
  bool norm = true;                    // ln_gru: the LayerNorm (false: no norm tensors)
  bool state_first = false;            // ln_gru: weight columns for cat(h, x), not cat(x, h)

  int64_t param_count() const;
};

// What a cell's forward appends to `saved` and its backward reads, slot by slot (the
// index within the cell's block of cell_saved_count tensors):
//   gru:       x, h, workspace
//   ln_gru:    x, h, parts, stats (stats [B, 0] without the norm)
//   block_gru: h, stoch, a = action / max(1, |action|), (z, stats) of the deter, stoch
//              and action input layers, xcat = their outputs side by side, (out, z,
//              stats) of each hidden layer, parts
namespace slot {
constexpr int64_t kX = 0, kH = 1;                // gru, ln_gru
constexpr int64_t kWorkspace = 2;                // gru
constexpr int64_t kParts = 2, kStats = 3;        // ln_gru
constexpr int64_t kBlockH = 0, kBlockStoch = 1, kBlockA = 2, kBlockXcat = 9;
inline int64_t block_input_z(int64_t i) { return 3 + 2 * i; }  // i: deter, stoch, action
inline int64_t block_input_stats(int64_t i) { return 4 + 2 * i; }
inline int64_t block_hidden_out(int64_t l) { return 10 + 3 * l; }
inline int64_t block_hidden_z(int64_t l) { return 11 + 3 * l; }
inline int64_t block_hidden_stats(int64_t l) { return 12 + 3 * l; }
inline int64_t block_parts(int64_t L) { return 10 + 3 * L; }
}  // namespace slot
int64_t saved_count(const Cell& c);
// The slots holding the cell's state inputs (h; and stoch for block_gru): the sequence
// ops keep those in their own buffers.
std::vector<int64_t> state_slots(const Cell& c);
// The slots only the cell's weight gradients read: x (gru, ln_gru); xcat and the hidden
// layers' outputs (block_gru). The first one is the cell's first weight input.
std::vector<int64_t> weight_input_slots(const Cell& c);

// deter' of one step from x (gru / ln_gru input; undefined for block_gru), the state h
// [B, D] (contiguous), and for block_gru the flat stoch and the raw action. Appends the
// saved_count(c) saved tensors when `saved` is given. `out`, when defined, is a
// contiguous [B, D] buffer (a step of a sequence buffer) that receives deter'.
Tensor forward(at::TensorList P, const Cell& c, const Tensor& x, const Tensor& h,
               const Tensor& stoch, const Tensor& action, std::vector<Tensor>* saved,
               const Tensor& out = Tensor());

struct InputGrads {
  Tensor x, h, stoch, a;  // x for gru / ln_gru; stoch and a (the scaled action) for block_gru
};
// `saved`: the cell's saved_count(c) tensors in slot order. Entries that only weight
// gradients read may be empty placeholders when `g` wants none.
InputGrads backward(at::TensorList P, const Cell& c, const Tensor* saved, const Tensor& d_out,
                    GradSink& g);

// The block GRU's action input a = action / max(1, |action|), and the gradient of the
// raw action from that of a (the divisor is held constant).
Tensor scaled_action(const Tensor& action);
Tensor action_grad(const Tensor& d_a, const Tensor& action);

}  // namespace cells
}  // namespace dreamer_fast
