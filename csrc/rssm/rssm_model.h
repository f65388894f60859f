// The latent and action heads of the whole-sequence ops in rssm_ops.cpp (observe,
// imagine), and the transposed copy their backward uses. The dense layers and the
// recurrent cell are the single-step ops' own (dense/dense.h, cells/cells.h); every GEMM
// goes through common/gemm.h, every pointwise or row-wise stage is one launch of the
// kernels shared with the single-layer ops.
//
// Parameters arrive as one flat tensor list plus a spec string (rssm/spec.h: format,
// parameter order, checks), built by dreamer_fast/ops/_native_spec.py. Weight gradients
// are deferred (common/grads.h, Grads): one product per weight over all T·B rows.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "cells/cells.h"
#include "common/grads.h"
#include "dense/dense.h"
#include "rssm/spec.h"

namespace dreamer_fast {
namespace rssm {

using at::Tensor;

using DenseRef = dense::Layer;

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
