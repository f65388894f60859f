// The RSSM's and the actor's specs and their latent / action heads, for the
// whole-sequence ops in rssm_ops.cpp (observe, imagine). The dense layers and the
// recurrent cell are the single-step ops' own (dense/dense.h, cells/cells.h); every GEMM
// goes through common/gemm.h, every pointwise or row-wise stage is one launch of the
// kernels shared with the single-layer ops.
//
// Parameters arrive as one flat tensor list plus a spec, built by
// dreamer_fast/ops/rssm.py from the nn modules (see `parse_rssm` / `parse_actor` for the
// exact layout). Weight gradients are deferred (common/grads.h, Grads): one product per
// weight over all T·B rows in `finish`.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "cells/cells.h"
#include "common/grads.h"
#include "dense/dense.h"

namespace dreamer_fast {
namespace rssm {

using at::Tensor;

using DenseRef = dense::Layer;

struct Spec {
  cells::Cell cell;     // the recurrent cell; cell.first indexes its first tensor
  int64_t classes = 0;  // 0: Gaussian latents
  int64_t stoch = 0;    // S (latent groups / Gaussian dims)
  std::vector<DenseRef> img_in, img_out, obs_out;
  double unimix = 0.01, min_std = 0.1;

  bool block_gru() const { return cell.kind == cells::kBlockGru; }
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
