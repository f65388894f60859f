// Where every entry of a sequence op's saved-tensor list lives. Built once from the
// spec(s) and the sequence length, by the forward that fills the list and by the
// backward that reads it, so both index it by name:
//   global entries       by name (ObserveGlobal / ImagineGlobal), then observe's prior
//                        MLP (run once over all steps) and imagine's actor hidden-layer
//                        buffers
//   per-step blocks      step t, part (actor, img_in, cell, img_out / obs_out), and
//                        within a part a dense layer's (x, z, stats) or a cell slot
//                        (cells::slot)
// An entry that only repeats a sequence buffer (a step's state is a row block of
// `deters`) or that nobody will read (imagine without world-model gradients) is an
// empty [0] placeholder; the backward takes the buffer instead.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <vector>

#include "cells/cells.h"
#include "dense/dense.h"
#include "rssm/spec.h"

namespace dreamer_fast {
namespace rssm {

enum ObserveGlobal : int64_t {
  kObsKeep,        // keep mask, time-major [T, B, 1]
  kObsAction,      // masked actions [T, B, A]
  kObsEmbed,       // [T, B, E]
  kObsDeters,      // deter of every step [T, B, D]
  kObsPostStats,   // posterior stats [T, B, stats]
  kObsPostNoise,   // [T, B, S]
  kObsPriorNoise,  // [T, B, S]
  kObsPriorStats,  // prior stats [T·B, stats] (placeholder: the last prior layer's z)
  kObsGlobals
};

enum ImagineGlobal : int64_t {
  kImgStochNoise,   // [H, N, S]
  kImgActionNoise,  // [H, N, A or 1] (placeholder without the actor)
  kImgActions,      // the step actions [H, N, A]
  kImgStats,        // the prior stats [H, N, stats]
  kImgRaws,         // the actor's raw outputs [H, N, 2A or A] (placeholder without it)
  kImgDeters,       // states 0..H [H + 1, N, D]
  kImgStochs,       // [H + 1, N, flat stoch]
  kImgGlobals
};

// The per-step parts, in order; a part a call does not have is empty.
enum class Part : int { kActor, kImgIn, kCell, kPost, kCount };
// kPost: observe's posterior MLP (obs_out) / imagine's prior MLP (img_out)

// A dense layer's saved entries, in dense::layer_forward's order.
enum LayerSlot : int64_t { kLayerX = 0, kLayerZ = 1, kLayerStats = 2, kLayerSaved = 3 };

class SavedLayout {
 public:
  static SavedLayout observe(const Spec& s, int64_t T) {
    SavedLayout L;
    L.n_lead_ = kObsGlobals;
    L.n_global_ = kObsGlobals + kLayerSaved * static_cast<int64_t>(s.img_out.size());
    L.steps_ = T;
    L.set_parts(0, s.img_in.size(), cells::saved_count(s.cell), s.obs_out.size());
    return L;
  }
  static SavedLayout imagine(const Spec& s, const ActorSpec* actor, int64_t H) {
    SavedLayout L;
    const int64_t actor_layers = actor ? static_cast<int64_t>(actor->layers.size()) : 0;
    L.n_lead_ = kImgGlobals;
    L.n_global_ = kImgGlobals + (actor ? actor_layers - 1 : 0);
    L.steps_ = H;
    L.set_parts(actor_layers, s.img_in.size(), cells::saved_count(s.cell), s.img_out.size());
    return L;
  }

  int64_t size() const { return n_global_ + steps_ * per_step_; }
  // observe: layer l of the prior MLP over all steps
  int64_t prior_layer(int64_t l, LayerSlot k) const { return n_lead_ + kLayerSaved * l + k; }
  // imagine: the output buffer [H, N, U] of actor layer l (all but the last layer)
  int64_t actor_hidden(int64_t l) const { return n_lead_ + l; }
  int64_t part(int64_t t, Part p) const {
    return n_global_ + t * per_step_ + offset_[static_cast<int>(p)];
  }
  int64_t part_size(Part p) const { return size_[static_cast<int>(p)]; }
  int64_t layer(int64_t t, Part p, int64_t l, LayerSlot k) const {
    return part(t, p) + kLayerSaved * l + k;
  }
  int64_t cell(int64_t t, int64_t slot) const { return part(t, Part::kCell) + slot; }

  dense::LayerSaved layer_saved(at::TensorList saved, int64_t t, Part p, int64_t l) const {
    return {saved[layer(t, p, l, kLayerX)], saved[layer(t, p, l, kLayerZ)],
            saved[layer(t, p, l, kLayerStats)]};
  }
  dense::LayerSaved prior_saved(at::TensorList saved, int64_t l) const {
    return {saved[prior_layer(l, kLayerX)], saved[prior_layer(l, kLayerZ)],
            saved[prior_layer(l, kLayerStats)]};
  }
  std::vector<at::Tensor> cell_saved(at::TensorList saved, int64_t t) const {
    const int64_t first = part(t, Part::kCell);
    return {saved.begin() + first, saved.begin() + first + part_size(Part::kCell)};
  }

  // Moves the entries a part's forward appended (in its own order) into place.
  void store(std::vector<at::Tensor>& saved, int64_t t, Part p,
             std::vector<at::Tensor>&& entries) const {
    TORCH_INTERNAL_ASSERT(static_cast<int64_t>(entries.size()) == part_size(p),
                          "SavedLayout: part ", static_cast<int>(p), " has ", entries.size(),
                          " entries, expected ", part_size(p));
    std::move(entries.begin(), entries.end(), saved.begin() + part(t, p));
  }
  void store_prior(std::vector<at::Tensor>& saved, std::vector<at::Tensor>&& entries) const {
    TORCH_INTERNAL_ASSERT(static_cast<int64_t>(entries.size()) == n_global_ - n_lead_);
    std::move(entries.begin(), entries.end(), saved.begin() + n_lead_);
  }

  void check(const char* op, at::TensorList saved) const {
    TORCH_CHECK(static_cast<int64_t>(saved.size()) == size(), op, ": `saved` has ",
                saved.size(), " tensors, expected ", size());
  }

 private:
  void set_parts(int64_t actor_layers, size_t img_in_layers, int64_t cell, size_t post_layers) {
    size_ = {kLayerSaved * actor_layers, kLayerSaved * static_cast<int64_t>(img_in_layers), cell,
             kLayerSaved * static_cast<int64_t>(post_layers)};
    int64_t off = 0;
    for (int p = 0; p < static_cast<int>(Part::kCount); ++p) {
      offset_[p] = off;
      off += size_[p];
    }
    per_step_ = off;
  }

  int64_t n_lead_ = 0, n_global_ = 0, steps_ = 0, per_step_ = 0;
  std::array<int64_t, static_cast<int>(Part::kCount)> size_{}, offset_{};
};

}  // namespace rssm
}  // namespace dreamer_fast
