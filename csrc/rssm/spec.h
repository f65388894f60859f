// The specs of the sequence ops (rssm_observe, rssm_imagine): what the ops need to know
// besides the tensors, passed as one string each and parsed here, in one place.
//
// Format: `key=value` fields separated by `;`, every key exactly once, no spaces.
//   int      decimal (`classes=32`)
//   bool     `0` or `1`
//   float    anything strtod reads in full; the Python side writes repr(float), the
//            shortest string that reads back to the same double, so values are exact
//   name     one of the listed words
//   layers   a comma-separated list of dense layers `has_bias:norm:act` (has_bias a
//            bool, norm one of none|layer|rms, act one of none|silu|elu|tanh|gelu|
//            sigmoid: the names of dreamer_fast/ops/dense.py's NORMS / ACTS); the empty
//            string is the empty list
//
// RSSM spec (the `spec` argument), fields:
//   cell         gru | ln_gru | block_gru
//   classes      int >= 0 (0: Gaussian latents)
//   stoch        int >= 1 (latent groups / Gaussian dims)
//   blocks       int >= 1 (block_gru's G; must divide the deter size)
//   dynlayers    int >= 1 (block_gru's hidden block layers)
//   cell_act     act name (block_gru's layers)
//   cell_bias    bool (gru: both biases present)
//   img_in       layers: one for gru / ln_gru, none for block_gru
//   img_out      layers, at least one (the prior MLP; its last layer gives the stats)
//   obs_out      layers, at least one (the posterior MLP)
//   eps          float > 0 (every dense layer's norm)
//   cell_eps     float > 0 (the cell's LayerNorm / RMSNorm)
//   cell_norm    bool (ln_gru: the LayerNorm on the gates; 0 = none, no norm tensors)
//   cell_state_first  bool (ln_gru: the weight's columns take cat(h, x) instead of
//                cat(x, h), as sheeprl's LayerNormGRUCell)
//   update_bias  float (ln_gru)
//   unimix       float in [0, 1] (categorical latents)
//   min_std      float >= 0 (Gaussian latents)
//   std_act      softplus | abs | sigmoid | sigmoid2 (Gaussian: std = std_act(raw) + min_std)
//   mean_act     none | tanh5 (Gaussian: mean = mean_act(m))
//   min_std_mode add | clamp (Gaussian: clamp is std = max(std_act(raw), min_std))
// e.g. `cell=ln_gru;classes=32;stoch=32;blocks=1;dynlayers=1;cell_act=silu;cell_bias=0;
//       img_in=1:layer:silu;img_out=1:layer:silu,1:none:none;obs_out=0:layer:silu,
//       1:none:none;eps=0.001;cell_eps=0.001;cell_norm=1;cell_state_first=0;update_bias=-1.0;
//       unimix=0.01;min_std=0.1;std_act=softplus;mean_act=none;min_std_mode=add`
//
// Actor spec (`actor_spec`; the empty string when rssm_imagine is given the actions),
// fields:
//   head         tanh_normal | bounded_normal | categorical
//   actions      int >= 1
//   layers       layers, at least one (the MLP on cat(stoch, deter); the last gives 2A
//                raw values for the normal heads, A logits for categorical)
//   eps          float > 0
//   min_std, max_std, std_offset, mean_scale, unimix   floats (the heads' constants)
//
// Parameter tensors (`params`, `actor_params`), in order: the img_in layer, the cell
// (cells/cells.h), the img_out layers, the obs_out layers; the actor's layers. A dense
// layer contributes W [out, in], then b, norm_weight, norm_bias [out] where present
// (bias: has_bias; norm_weight: norm layer or rms; norm_bias: norm layer). The parser
// checks the count, one dtype and device for all, the layers' shapes against each
// other, and names the field a mismatch comes from.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "cells/cells.h"
#include "dense/dense.h"

namespace dreamer_fast {
namespace rssm {

struct Spec {
  cells::Cell cell;     // the recurrent cell; cell.first indexes its first tensor
  int64_t classes = 0;  // 0: Gaussian latents
  int64_t stoch = 0;    // S (latent groups / Gaussian dims)
  std::vector<dense::Layer> img_in, img_out, obs_out;
  double unimix = 0.01, min_std = 0.1;
  int std_act = 0, mean_act = 0, min_std_mode = 0;  // heads_math.h's Gaussian* codes

  bool block_gru() const { return cell.kind == cells::kBlockGru; }
  int64_t flat_stoch() const { return classes ? stoch * classes : stoch; }
  int64_t stats_size() const { return classes ? stoch * classes : 2 * stoch; }
};

enum ActorHead : int { kTanhNormal = 0, kBoundedNormal = 1, kCategorical = 2 };

struct ActorSpec {
  int head = kBoundedNormal;
  int64_t actions = 0;
  std::vector<dense::Layer> layers;  // the MLP, output layer last
  double min_std = 0.1, max_std = 1.0, std_offset = 0.0, mean_scale = 1.0, unimix = 0.01;
};

// `op` names the caller in the errors (TORCH_CHECK: a RuntimeError naming the field).
Spec parse_rssm(const char* op, at::TensorList params, const std::string& spec);
ActorSpec parse_actor(const char* op, at::TensorList params, const std::string& spec);

}  // namespace rssm
}  // namespace dreamer_fast
