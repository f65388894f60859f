// Whole-sequence RSSM ops, each one native call forward and one backward:
//
//   rssm_observe: T posterior steps (image step + posterior MLP + sample) over a
//     batch-major sequence. The action part of the RSSM input layer and the embed part of
//     the posterior's first layer are one GEMM over all T·B rows up front; the prior MLP
//     and prior head (off the recurrence) run once over all T·B rows after the loop; all
//     weight gradients are one GEMM each over T·B rows (common/grads.h, Grads).
//   rssm_imagine: H image steps from N start states, the action of each step either given
//     ([N, H, A]) or sampled from the actor (MLP + head) on the step's feature
//     cat(stoch, deter). Used for RSSM.img_step (H = 1), imagine_with_action and the
//     imagination rollout of behaviour learning, which asks (`feat_out`) for the
//     features of steps 0..H as one [N, H + 1, F] output instead of deter and stoch.
//
// Noise is an input. Internally everything is time-major; inputs and outputs are
// batch-major. Saved activations travel as a Tensor[] output (empty when `save` is
// false, e.g. under no_grad), laid out by SavedLayout (saved_layout.h), which forward
// and backward both index by name; the Python side registers autograd
// (dreamer_fast/ops/rssm.py). rssm_imagine's `save_wm_inputs` = false (no
// world-model parameter needs a gradient) keeps empty placeholders where tensors only
// the world-model weight gradients read would be: same layout, less memory. The specs
// are strings (spec.h).
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <string>
#include <unordered_set>

#include "common/gemm.h"
#include "rssm/rssm_model.h"
#include "rssm/saved_layout.h"

namespace dreamer_fast {
namespace rssm {
namespace {

using TensorVec = std::vector<Tensor>;

// Always a new tensor (contiguous() would return a view of `x` when a dimension is 1):
// inputs are masked and saved, outputs must not share memory with the saved buffers.
Tensor time_major(const Tensor& x) {
  return x.transpose(0, 1).clone(at::MemoryFormat::Contiguous);
}
Tensor batch_major(const Tensor& x) {
  return x.transpose(0, 1).clone(at::MemoryFormat::Contiguous);
}
// An empty [0] tensor: an absent output, or a saved-entry placeholder (see `dealias`).
Tensor empty0(const Tensor& like) { return at::empty({0}, like.options()); }
Tensor opt(const std::optional<Tensor>& t) {
  return (t.has_value() && t->defined() && t->numel() > 0) ? *t : Tensor();
}
// [B, T, ...] upstream gradient -> [T, B, features] (undefined stays undefined)
Tensor grad_tm(const std::optional<Tensor>& g) {
  const Tensor t = opt(g);
  if (!t.defined()) return t;
  return time_major(t.reshape({t.size(0), t.size(1), -1}));
}
// Undefined-aware helpers for the optional upstream gradients.
Tensor at_step(const Tensor& t, int64_t i) { return t.defined() ? t[i] : Tensor(); }
Tensor flat_rows(const Tensor& t) { return t.defined() ? t.flatten(0, 1) : t; }
Tensor plus(const Tensor& a, const Tensor& b) {
  if (!a.defined()) return b;
  return b.defined() ? a + b : a;
}

// x = cat(a, b, 1) through a dense layer's linear part, as two GEMMs into one output:
// a W[:, :Fa]^T + b W[:, Fa:]^T (+ bias).
Tensor split_linear(at::TensorList P, const DenseRef& r, const Tensor& a, const Tensor& b) {
  const Tensor& W = P[r.w];
  const int64_t Fa = a.size(1), Fb = b.size(1);
  TORCH_INTERNAL_ASSERT(W.size(1) == Fa + Fb);
  Tensor z = r.b >= 0 ? gemm::addmm(P[r.b], a, W.narrow(1, 0, Fa).t())
                      : gemm::mm(a, W.narrow(1, 0, Fa).t());
  return gemm::addmm_(z, b, W.narrow(1, Fa, Fb).t());
}

// Backward of split_linear given dz: records dW (both column blocks) and db, returns
// d cat(a, b) [R, Fa + Fb].
Tensor split_linear_backward(at::TensorList P, const DenseRef& r, const Tensor& dz,
                             const Tensor& a, const Tensor& b, Grads& g) {
  g.mm(r.w, dz, a, 0);
  g.mm(r.w, dz, b, a.size(1));
  if (r.b >= 0) g.rowsum(r.b, dz);
  return gemm::mm(dz, P[r.w]);
}

// Outputs of an op must not share memory (autograd and torch.compile treat every
// output as a fresh tensor). The saved entries that are by construction views of a
// sequence buffer (a step's state is a row block of `deters` / `stochs`) are stored as
// empty0 placeholders and rebuilt from the buffer in backward (see `or_else`); any
// other entry that still shares storage with an earlier one (e.g. a layer without
// norm and activation, whose output is its z and the next layer's input) is copied.
bool is_placeholder(const Tensor& t) { return t.dim() == 1 && t.size(0) == 0; }
Tensor or_else(const Tensor& saved, const Tensor& rebuilt) {
  return is_placeholder(saved) ? rebuilt : saved;
}
void dealias(TensorVec& saved) {
  std::unordered_set<const void*> seen;
  for (Tensor& t : saved) {
    if (is_placeholder(t)) continue;
    if (!seen.insert(t.storage().unsafeGetStorageImpl()).second) t = t.clone();
  }
}

// Packing of the weights the per-step products reuse (gemm.h, PackedWeights). Each
// registers the right operand exactly as the step code passes it: W.t() for x W^T in
// forward, W for dz W in backward (column blocks as the same narrow views).
void pack_layers(gemm::PackedWeights& pk, at::TensorList P, const std::vector<DenseRef>& layers,
                 bool backward, size_t first = 0) {
  for (size_t l = first; l < layers.size(); ++l)
    pk.add(backward ? P[layers[l].w] : P[layers[l].w].t());
}
// A layer whose input is cat(a, b) with a of `Fa` features, run as two products.
void pack_split(gemm::PackedWeights& pk, at::TensorList P, const DenseRef& r, int64_t Fa,
                bool backward) {
  const Tensor& W = P[r.w];
  if (backward) {
    pk.add(W.narrow(1, 0, Fa));  // observe needs d a only (imagine: pack_layers, d cat(a, b))
  } else {
    pk.add(W.narrow(1, 0, Fa).t());
    pk.add(W.narrow(1, Fa, W.size(1) - Fa).t());
  }
}
void pack_cell(gemm::PackedWeights& pk, at::TensorList P, const Spec& s, bool backward) {
  const int64_t c = s.cell.first;
  auto add = [&](const Tensor& W) { pk.add(backward ? W : W.t()); };
  if (s.cell.kind == cells::kGru) {
    add(P[c]);
    add(P[c + 1]);
  } else if (s.cell.kind == cells::kLnGru) {
    add(P[c]);
  }
  // block_gru: block-diagonal products (bmm) and a per-call weight copy, not packed
}

// The sizes the parameters fix (parse_rssm has checked that the layers agree with each
// other): the deter, action and embed sizes the inputs must have.
struct ModelSizes {
  int64_t deter, action, embed;
};
ModelSizes model_sizes(at::TensorList P, const Spec& s) {
  const int64_t D = P[s.img_out[0].w].size(1);
  // block_gru: the action input layer's W [U, A] is the cell's 7th tensor (cells.h)
  const int64_t A = s.block_gru() ? P[s.cell.first + 6].size(1)
                                  : P[s.img_in[0].w].size(1) - s.flat_stoch();
  return {D, A, P[s.obs_out[0].w].size(1) - D};
}
void check_size(const char* op, const char* name, int64_t got, int64_t want, const char* what) {
  TORCH_CHECK(got == want, op, ": `", name, "` has ", got, " features in its last dimension, "
              "but the parameters take ", want, " (", what, ")");
}

void check_seq(const char* op, const char* name, const Tensor& t, const Tensor& like,
               at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, op, ": `", name, "` must have shape ", shape, ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type() && t.device() == like.device(), op, ": `",
              name, "` is ", t.scalar_type(), " on ", t.device(), ", expected ",
              like.scalar_type(), " on ", like.device());
}

// ---------------------------------------------------------------------------------------
// observe
// ---------------------------------------------------------------------------------------

constexpr const char* kObserve = "rssm_observe";

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, TensorVec> observe(
    at::TensorList P, const std::string& spec, const Tensor& embed,
    const Tensor& action, const Tensor& keep, const Tensor& deter0, const Tensor& stoch0,
    const Tensor& prior_noise, const Tensor& post_noise, const std::optional<Tensor>& init_deter_opt,
    const std::optional<Tensor>& init_stoch_opt, bool save) {
  const Spec s = parse_rssm(kObserve, P, spec);
  const Tensor init_deter = opt(init_deter_opt), init_stoch = opt(init_stoch_opt);
  TORCH_CHECK(embed.dim() == 3 && action.dim() == 3, kObserve,
              ": `embed` and `action` must be [B, T, E] and [B, T, A]");
  const int64_t B = embed.size(0), T = embed.size(1), E = embed.size(2), A = action.size(2);
  const int64_t D = deter0.size(1), SF = s.flat_stoch(), S = s.stoch;
  TORCH_CHECK(T >= 1, kObserve, ": the sequence must have T >= 1 steps");
  TORCH_CHECK(deter0.dim() == 2, kObserve, ": `deter` must be [B, D], got ", deter0.sizes());
  const ModelSizes m = model_sizes(P, s);
  check_size(kObserve, "embed", E, m.embed, "the posterior MLP's input is cat(deter, embed)");
  check_size(kObserve, "action", A, m.action, "the RSSM's action size");
  check_size(kObserve, "deter", D, m.deter, "the deter size");
  check_seq(kObserve, "action", action, embed, {B, T, A});
  check_seq(kObserve, "keep", keep, embed, {B, T});
  check_seq(kObserve, "deter", deter0, embed, {B, D});
  check_seq(kObserve, "stoch", stoch0, embed, {B, SF});
  check_seq(kObserve, "prior_noise", prior_noise, embed, {B, T, S});
  check_seq(kObserve, "post_noise", post_noise, embed, {B, T, S});
  TORCH_CHECK(init_deter.defined() == init_stoch.defined(), kObserve,
              ": `init_deter` and `init_stoch` must both be given (the state a reset starts "
              "from) or both be None (resets to zeros)");
  if (init_deter.defined()) {
    check_seq(kObserve, "init_deter", init_deter, embed, {D});
    check_seq(kObserve, "init_stoch", init_stoch, embed, {SF});
  }
  TORCH_CHECK(P[0].scalar_type() == embed.scalar_type() && P[0].device() == embed.device(),
              kObserve, ": parameters are ", P[0].scalar_type(), " on ", P[0].device(),
              ", inputs ", embed.scalar_type(), " on ", embed.device());
  const c10::OptionalDeviceGuard guard(embed.device());
  const gemm::SequenceThreads threads(embed, B);
  gemm::PackedWeights packs(B);
  if (!s.block_gru()) pack_split(packs, P, s.img_in[0], SF, false);
  pack_cell(packs, P, s, false);
  pack_split(packs, P, s.obs_out[0], D, false);
  pack_layers(packs, P, s.obs_out, false, 1);

  const Tensor keepT = time_major(keep).unsqueeze(-1);               // [T, B, 1]
  const Tensor actT = time_major(action).mul_(keepT);                // masked actions
  // where a sequence restarts the state becomes (init_deter, init_stoch) (the learned
  // initial state), or zeros without them: state * keep + init * (1 - keep)
  const Tensor resetT = init_deter.defined() ? 1 - keepT : Tensor();
  const Tensor embT = time_major(embed);                             // [T, B, E]
  const Tensor postNT = time_major(post_noise), priorNT = time_major(prior_noise);
  const DenseRef& o0 = s.obs_out[0];
  // The embed part of the posterior's first layer for all steps at once.
  const Tensor W0 = P[o0.w];
  Tensor e_proj = gemm::mm(embT.view({T * B, E}), W0.narrow(1, D, E).t());
  if (o0.b >= 0) e_proj.add_(P[o0.b]);
  e_proj = e_proj.view({T, B, -1});
  Tensor a_proj;
  if (!s.block_gru()) {
    const DenseRef& r = s.img_in[0];
    a_proj = gemm::mm(actT.view({T * B, A}), P[r.w].narrow(1, SF, A).t());
    if (r.b >= 0) a_proj.add_(P[r.b]);
    a_proj = a_proj.view({T, B, -1});
  }

  Tensor deters = at::empty({T, B, D}, embed.options());
  Tensor post_stoch = at::empty({T, B, SF}, embed.options());
  Tensor post_stats = at::empty({T, B, s.stats_size()}, embed.options());
  Tensor post_a = at::empty({T, B, s.classes ? SF : S}, embed.options());
  Tensor post_b = s.classes ? empty0(embed) : at::empty({T, B, S}, embed.options());
  const SavedLayout L = SavedLayout::observe(s, T);
  TensorVec saved(save ? L.size() : 0);
  Tensor deter = deter0.contiguous(), stoch = stoch0.contiguous();
  for (int64_t t = 0; t < T; ++t) {
    TensorVec img_in_sv, cell_sv, post_sv;
    const auto into = [save](TensorVec& part) { return save ? &part : nullptr; };
    const Tensor k = keepT[t];
    Tensor deter_in = deter * k, stoch_in = stoch * k;
    if (resetT.defined()) {
      deter_in.addcmul_(resetT[t], init_deter);
      stoch_in.addcmul_(resetT[t], init_stoch);
    }
    if (!s.block_gru()) {
      const DenseRef& r = s.img_in[0];
      const Tensor z = gemm::addmm(a_proj[t], stoch_in, P[r.w].narrow(1, 0, SF).t());
      const Tensor x = dense::layer_epilogue(P, r, z, stoch_in, into(img_in_sv));
      deter = cells::forward(P, s.cell, x, deter_in, Tensor(), Tensor(), into(cell_sv), deters[t]);
    } else {
      deter = cells::forward(P, s.cell, Tensor(), deter_in, stoch_in, actT[t], into(cell_sv),
                             deters[t]);
    }
    // posterior MLP on cat(deter, embed); the embed part is in e_proj. Its first layer's
    // x is deters[t]: a placeholder.
    const Tensor z0 = gemm::addmm(e_proj[t], deter, W0.narrow(1, 0, D).t());
    Tensor h = dense::layer_epilogue(P, o0, z0, empty0(deter), into(post_sv));
    for (size_t l = 1; l < s.obs_out.size(); ++l)
      h = dense::layer_forward(P, s.obs_out[l], h, into(post_sv));
    if (save) {
      L.store(saved, t, Part::kImgIn, std::move(img_in_sv));
      L.store(saved, t, Part::kCell, std::move(cell_sv));
      L.store(saved, t, Part::kPost, std::move(post_sv));
    }
    const HeadOut ho = latent_forward(s, h, postNT[t]);
    post_stats[t].copy_(h);
    post_stoch[t].copy_(ho.sample);
    post_a[t].copy_(ho.a);
    if (ho.b.defined()) post_b[t].copy_(ho.b);
    stoch = ho.sample;
  }
  // The prior of every step at once: it does not feed the recurrence.
  TensorVec prior_saved;
  Tensor hp = deters.view({T * B, D});
  for (const DenseRef& r : s.img_out) hp = dense::layer_forward(P, r, hp, save ? &prior_saved : nullptr);
  const Tensor prior_stats = hp;
  const HeadOut prior = latent_forward(s, prior_stats, priorNT.view({T * B, S}));
  if (save) {
    L.store_prior(saved, std::move(prior_saved));
    saved[L.prior_layer(0, kLayerX)] = empty0(hp);  // = deters
    // prior_stats is the last prior layer's output: its z when that layer has no
    // epilogue (then a placeholder)
    const int64_t last_z = L.prior_layer(static_cast<int64_t>(s.img_out.size()) - 1, kLayerZ);
    saved[kObsPriorStats] = prior_stats.is_same(saved[last_z]) ? empty0(hp) : prior_stats;
    saved[kObsKeep] = keepT;
    saved[kObsAction] = actT;
    saved[kObsEmbed] = embT;
    saved[kObsDeters] = deters;
    saved[kObsPostStats] = post_stats;
    saved[kObsPostNoise] = postNT;
    saved[kObsPriorNoise] = priorNT;
    dealias(saved);
  }
  auto bm = [&](const Tensor& t) { return t.numel() ? batch_major(t.view({T, B, -1})) : t; };
  return {bm(deters),   bm(post_stoch), bm(post_a), s.classes ? empty0(embed) : bm(post_b),
          bm(prior.sample), bm(prior.a), s.classes ? empty0(embed) : bm(prior.b), saved};
}

std::tuple<TensorVec, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> observe_backward(
    const std::optional<Tensor>& g_deter, const std::optional<Tensor>& g_post_stoch,
    const std::optional<Tensor>& g_post_a, const std::optional<Tensor>& g_post_b,
    const std::optional<Tensor>& g_prior_stoch, const std::optional<Tensor>& g_prior_a,
    const std::optional<Tensor>& g_prior_b, at::TensorList saved, at::TensorList P,
    const std::string& spec, bool init) {
  const Spec s = parse_rssm(kObserve, P, spec);
  TORCH_CHECK(static_cast<int64_t>(saved.size()) > kObsGlobals, kObserve,
              "_backward: `saved` has only ", saved.size(), " tensors");
  const Tensor &keepT = saved[kObsKeep], &actT = saved[kObsAction], &embT = saved[kObsEmbed];
  const Tensor &deters = saved[kObsDeters], &post_stats = saved[kObsPostStats];
  const Tensor &postNT = saved[kObsPostNoise], &priorNT = saved[kObsPriorNoise];
  const int64_t T = deters.size(0), B = deters.size(1), D = deters.size(2);
  const int64_t E = embT.size(2), A = actT.size(2), SF = s.flat_stoch(), S = s.stoch;
  const SavedLayout L = SavedLayout::observe(s, T);
  L.check("rssm_observe_backward", saved);
  const int64_t n_prior = static_cast<int64_t>(s.img_out.size());
  const Tensor prior_stats =
      or_else(saved[kObsPriorStats], saved[L.prior_layer(n_prior - 1, kLayerZ)]);
  const c10::OptionalDeviceGuard guard(deters.device());
  const gemm::SequenceThreads threads(deters, B);
  Grads g(P);
  gemm::PackedWeights packs(B);
  if (!s.block_gru()) pack_split(packs, P, s.img_in[0], SF, true);
  pack_cell(packs, P, s, true);
  pack_split(packs, P, s.obs_out[0], D, true);
  pack_layers(packs, P, s.obs_out, true, 1);

  // prior head + MLP over all T·B rows
  Tensor d = latent_backward(s, prior_stats, priorNT.view({T * B, S}),
                             flat_rows(grad_tm(g_prior_stoch)),
                             flat_rows(grad_tm(g_prior_a)), flat_rows(grad_tm(g_prior_b)));
  for (int64_t l = n_prior - 1; l >= 0; --l) {
    dense::LayerSaved ls = L.prior_saved(saved, l);
    ls.x = or_else(ls.x, deters.view({T * B, D}));
    d = dense::layer_backward(P, s.img_out[l], ls, d, g, true);
  }
  const Tensor dd_all = plus(d.view({T, B, D}), grad_tm(g_deter));
  const Tensor gsT = grad_tm(g_post_stoch), gaT = grad_tm(g_post_a),
               gbT = grad_tm(g_post_b);

  const DenseRef& o0 = s.obs_out[0];
  const Tensor& W0 = P[o0.w];
  TensorVec dz_obs(T), dz_in(T);
  Tensor d_actT = s.block_gru() ? at::empty({T, B, A}, deters.options()) : Tensor();
  Tensor carry_deter, carry_stoch;
  // the reset states' gradients: sum over steps and rows of (1 - keep) ⊙ d state_in
  Tensor d_init_deter = init ? at::zeros({1, D}, deters.options()) : empty0(deters);
  Tensor d_init_stoch = init ? at::zeros({1, SF}, deters.options()) : empty0(deters);
  for (int64_t t = T - 1; t >= 0; --t) {
    // dd is accumulated in place below: never a view of dd_all
    Tensor dd = carry_deter.defined() ? dd_all[t] + carry_deter : dd_all[t].clone();
    Tensor dh = latent_backward(s, post_stats[t], postNT[t], plus(at_step(gsT, t), carry_stoch),
                                at_step(gaT, t), at_step(gbT, t));
    for (int64_t l = static_cast<int64_t>(s.obs_out.size()) - 1; l >= 1; --l)
      dh = dense::layer_backward(P, s.obs_out[l], L.layer_saved(saved, t, Part::kPost, l), dh, g,
                                 true);
    // the first posterior layer reads cat(deters[t], embed[t]): its x is not saved
    const Tensor dz0 =
        dense::layer_backward_dz(P, o0, L.layer_saved(saved, t, Part::kPost, 0), dh, g);
    g.mm(o0.w, dz0, deters[t], 0);
    g.mm(o0.w, dz0, embT[t], D);
    if (o0.b >= 0) g.rowsum(o0.b, dz0);
    dz_obs[t] = dz0;
    gemm::addmm_(dd, dz0, W0.narrow(1, 0, D));
    const TensorVec cell_sv = L.cell_saved(saved, t);
    const cells::InputGrads cg = cells::backward(P, s.cell, cell_sv.data(), dd, g);
    Tensor d_stoch_in;
    if (!s.block_gru()) {
      const DenseRef& r = s.img_in[0];
      const dense::LayerSaved ls = L.layer_saved(saved, t, Part::kImgIn, 0);  // x = stoch_in
      const Tensor dz = dense::layer_backward_dz(P, r, ls, cg.x, g);
      g.mm(r.w, dz, ls.x, 0);
      g.mm(r.w, dz, actT[t], SF);
      if (r.b >= 0) g.rowsum(r.b, dz);
      dz_in[t] = dz;
      d_stoch_in = gemm::mm(dz, P[r.w].narrow(1, 0, SF));
    } else {
      d_stoch_in = cg.stoch;
      d_actT[t].copy_(cells::action_grad(cg.a, actT[t]));
    }
    carry_deter = cg.h * keepT[t];
    carry_stoch = d_stoch_in * keepT[t];
    if (init) {
      const Tensor reset_row = (1 - keepT[t]).t();  // [1, B]
      gemm::addmm_(d_init_deter, reset_row, cg.h);
      gemm::addmm_(d_init_stoch, reset_row, d_stoch_in);
    }
  }
  // input gradients of the batched projections
  const Tensor d_embed = gemm::mm(at::cat(dz_obs), W0.narrow(1, D, E)).view({T, B, E});
  if (!s.block_gru()) {
    const DenseRef& r = s.img_in[0];
    d_actT = gemm::mm(at::cat(dz_in), P[r.w].narrow(1, SF, A)).view({T, B, A});
  }
  d_actT = d_actT * keepT;
  return {g.finish(),  batch_major(d_embed), batch_major(d_actT), carry_deter, carry_stoch,
          init ? d_init_deter.view({D}) : d_init_deter, init ? d_init_stoch.view({SF}) : d_init_stoch};
}

// ---------------------------------------------------------------------------------------
// imagine
// ---------------------------------------------------------------------------------------

constexpr const char* kImagine = "rssm_imagine";

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, TensorVec> imagine(
    at::TensorList P, const std::string& spec, at::TensorList AP,
    const std::string& actor_spec, const Tensor& deter0,
    const Tensor& stoch0, const std::optional<Tensor>& actions_opt, const Tensor& action_noise,
    const Tensor& stoch_noise, int64_t horizon, bool save, bool feat_out,
    bool save_wm_inputs) {
  const Spec s = parse_rssm(kImagine, P, spec);
  const Tensor actions = opt(actions_opt);
  const bool use_actor = !actions.defined();
  ActorSpec as;
  if (use_actor) as = parse_actor(kImagine, AP, actor_spec);
  TORCH_CHECK(horizon >= 1, kImagine, ": `horizon` must be >= 1, got ", horizon);
  TORCH_CHECK(deter0.dim() == 2, kImagine, ": `deter` must be [N, D], got ", deter0.sizes());
  const int64_t N = deter0.size(0), D = deter0.size(1), SF = s.flat_stoch(), S = s.stoch,
                H = horizon;
  const ModelSizes m = model_sizes(P, s);
  check_size(kImagine, "deter", D, m.deter, "the deter size");
  check_seq(kImagine, "stoch", stoch0, deter0, {N, SF});
  check_seq(kImagine, "stoch_noise", stoch_noise, deter0, {N, H, S});
  int64_t A;
  if (use_actor) {
    A = as.actions;
    check_size(kImagine, "actor_spec", A, m.action, "the RSSM's action size; `actor_spec` "
               "field 'actions'");
    check_seq(kImagine, "action_noise", action_noise, deter0,
              {N, H, as.head == kCategorical ? 1 : A});
    TORCH_CHECK(AP[as.layers[0].w].size(1) == SF + D, kImagine, ": the actor takes features of ",
                AP[as.layers[0].w].size(1), ", the RSSM's have ", SF + D);
  } else {
    TORCH_CHECK(actions.dim() == 3, kImagine, ": `actions` must be [N, H, A]");
    A = actions.size(2);
    check_size(kImagine, "actions", A, m.action, "the RSSM's action size");
    check_seq(kImagine, "actions", actions, deter0, {N, H, A});
  }
  TORCH_CHECK(P[0].scalar_type() == deter0.scalar_type() && P[0].device() == deter0.device(),
              kImagine, ": parameters are ", P[0].scalar_type(), " on ", P[0].device(),
              ", states ", deter0.scalar_type(), " on ", deter0.device());
  const c10::OptionalDeviceGuard guard(deter0.device());
  const gemm::SequenceThreads threads(deter0, N);
  gemm::PackedWeights packs(N);
  if (use_actor) {
    pack_split(packs, AP, as.layers[0], SF, false);
    pack_layers(packs, AP, as.layers, false, 1);
  }
  if (!s.block_gru()) pack_split(packs, P, s.img_in[0], SF, false);
  pack_cell(packs, P, s, false);
  pack_layers(packs, P, s.img_out, false);
  const Tensor snT = time_major(stoch_noise);
  const Tensor anT = use_actor ? time_major(action_noise) : Tensor();
  const Tensor givenT = use_actor ? Tensor() : time_major(actions);

  // Sequence buffers with the start state at index 0: step t reads its state from
  // [t] and writes the next one to [t + 1], so every per-step input that the weight
  // gradients need is a row block of one buffer (no concatenation in Grads::finish).
  Tensor deters = at::empty({H + 1, N, D}, deter0.options());
  Tensor stochs = at::empty({H + 1, N, SF}, deter0.options());
  deters[0].copy_(deter0);
  stochs[0].copy_(stoch0);
  Tensor stats_all = at::empty({H, N, s.stats_size()}, deter0.options());
  Tensor out_a = s.classes ? Tensor() : at::empty({H, N, S}, deter0.options());
  Tensor out_b = s.classes ? Tensor() : at::empty({H, N, S}, deter0.options());
  Tensor acts = use_actor ? at::empty({H, N, A}, deter0.options()) : givenT;
  Tensor raws =
      use_actor ? at::empty({H, N, AP[as.layers.back().w].size(0)}, deter0.options()) : Tensor();
  // The actor's layers write their outputs into sequence buffers (when saving): step t
  // of hidden[l] is layer l + 1's input at step t, so its weight gradient reads the
  // steps as one row block (no concatenation in Grads::finish). The last layer writes
  // into raws.
  const int64_t L = use_actor ? static_cast<int64_t>(as.layers.size()) : 0;
  const SavedLayout layout = SavedLayout::imagine(s, use_actor ? &as : nullptr, H);
  TensorVec saved(save ? layout.size() : 0);
  TensorVec hidden;
  for (int64_t l = 0; save && l + 1 < L; ++l)
    hidden.push_back(at::empty({H, N, AP[as.layers[l].w].size(0)}, deter0.options()));
  // Placeholders (see SavedLayout): entries that are steps of the sequence buffers, and
  // without world-model gradients those only the world model's weight gradients read
  // (they would hold memory until the backward).
  const auto drop = [&](int64_t idx) { saved[idx] = empty0(deter0); };
  for (int64_t t = 0; t < H; ++t) {
    TensorVec actor_sv, img_in_sv, cell_sv, prior_sv;
    const auto into = [save](TensorVec& part) { return save ? &part : nullptr; };
    const Tensor deter = deters[t], stoch = stochs[t];
    if (use_actor) {
      const auto out_of = [&](int64_t l) {
        return l + 1 == L ? raws[t] : save ? hidden[l][t] : Tensor();
      };
      // first actor layer on feat = cat(stoch, deter) as two GEMMs into one output; its
      // x is (stochs, deters)[t]
      const DenseRef& r0 = as.layers[0];
      Tensor h = split_linear(AP, r0, stoch, deter);
      h = dense::layer_epilogue(AP, r0, h, empty0(h), into(actor_sv), out_of(0));
      for (int64_t l = 1; l < L; ++l)
        h = dense::layer_forward(AP, as.layers[l], h, into(actor_sv), out_of(l));
      acts[t].copy_(action_forward(as, h, anT[t]));
    }
    const Tensor action = acts[t];
    if (!s.block_gru()) {
      const DenseRef& r = s.img_in[0];
      const Tensor z = split_linear(P, r, stoch, action);
      // x = (stochs, acts)[t]
      const Tensor x = dense::layer_epilogue(P, r, z, empty0(z), into(img_in_sv));
      cells::forward(P, s.cell, x, deter, Tensor(), Tensor(), into(cell_sv), deters[t + 1]);
    } else {
      cells::forward(P, s.cell, Tensor(), deter, stoch, action, into(cell_sv), deters[t + 1]);
    }
    Tensor h = deters[t + 1];
    for (const DenseRef& r : s.img_out) h = dense::layer_forward(P, r, h, into(prior_sv));
    if (save) {
      layout.store(saved, t, Part::kActor, std::move(actor_sv));
      layout.store(saved, t, Part::kImgIn, std::move(img_in_sv));
      layout.store(saved, t, Part::kCell, std::move(cell_sv));
      layout.store(saved, t, Part::kPost, std::move(prior_sv));
      for (int64_t l = 1; l < L; ++l) drop(layout.layer(t, Part::kActor, l, kLayerX));  // hidden
      for (const int64_t slot : cells::state_slots(s.cell)) drop(layout.cell(t, slot));
      drop(layout.layer(t, Part::kPost, 0, kLayerX));  // deters[t + 1]
      if (!save_wm_inputs) {
        for (const int64_t slot : cells::weight_input_slots(s.cell)) drop(layout.cell(t, slot));
        for (size_t l = 1; l < s.img_out.size(); ++l)
          drop(layout.layer(t, Part::kPost, static_cast<int64_t>(l), kLayerX));
      }
    }
    const HeadOut ho = latent_forward(s, h, snT[t]);
    stochs[t + 1].copy_(ho.sample);
    stats_all[t].copy_(h);
    if (!s.classes) {
      out_a[t].copy_(ho.a);
      out_b[t].copy_(ho.b);
    }
  }
  if (save) {
    saved[kImgStochNoise] = snT;
    saved[kImgActionNoise] = use_actor ? anT : empty0(deter0);
    saved[kImgActions] = acts;
    saved[kImgStats] = stats_all;
    saved[kImgRaws] = use_actor ? raws : empty0(deter0);
    saved[kImgDeters] = deters;
    saved[kImgStochs] = stochs;
    for (size_t l = 0; l < hidden.size(); ++l)
      saved[layout.actor_hidden(static_cast<int64_t>(l))] = hidden[l];
    dealias(saved);
  }
  const Tensor a_all = s.classes ? stats_all : out_a;
  const Tensor b_out = s.classes ? empty0(deter0) : batch_major(out_b);
  if (!feat_out)
    return {batch_major(deters.narrow(0, 1, H)), batch_major(stochs.narrow(0, 1, H)),
            batch_major(a_all), b_out, batch_major(acts), empty0(deter0), saved};
  // The features cat(stoch, deter) of steps 0..H, start included, as one output written
  // straight from the buffers, in place of the deter and stoch outputs (left empty): a
  // caller building them from those would copy every state twice more (start + steps,
  // then the two parts side by side).
  Tensor feat = at::empty({N, H + 1, SF + D}, deter0.options());
  feat.narrow(2, 0, SF).copy_(stochs.transpose(0, 1));
  feat.narrow(2, SF, D).copy_(deters.transpose(0, 1));
  return {empty0(deter0), empty0(deter0), batch_major(a_all), b_out, batch_major(acts), feat,
          saved};
}

std::tuple<TensorVec, TensorVec, Tensor, Tensor, Tensor> imagine_backward(
    const std::optional<Tensor>& g_deter, const std::optional<Tensor>& g_stoch,
    const std::optional<Tensor>& g_a, const std::optional<Tensor>& g_b,
    const std::optional<Tensor>& g_action, const std::optional<Tensor>& g_feat,
    at::TensorList saved, at::TensorList P,
    const std::string& spec, at::TensorList AP,
    const std::string& actor_spec, bool use_actor,
    bool need_params, bool need_actor_params) {
  const Spec s = parse_rssm(kImagine, P, spec);
  ActorSpec as;
  if (use_actor) as = parse_actor(kImagine, AP, actor_spec);
  TORCH_CHECK(static_cast<int64_t>(saved.size()) > kImgGlobals, kImagine,
              "_backward: `saved` has only ", saved.size(), " tensors");
  const Tensor &snT = saved[kImgStochNoise], &anT = saved[kImgActionNoise];
  const Tensor &acts = saved[kImgActions], &stats_all = saved[kImgStats];
  const Tensor &raws = saved[kImgRaws], &deters = saved[kImgDeters], &stochs = saved[kImgStochs];
  const int64_t H = acts.size(0), N = acts.size(1), A = acts.size(2);
  const int64_t SF = s.flat_stoch();
  const SavedLayout layout = SavedLayout::imagine(s, use_actor ? &as : nullptr, H);
  layout.check("rssm_imagine_backward", saved);
  const c10::OptionalDeviceGuard guard(acts.device());
  const gemm::SequenceThreads threads(acts, N);
  gemm::PackedWeights packs(N);
  if (use_actor) pack_layers(packs, AP, as.layers, true);
  if (!s.block_gru()) pack_layers(packs, P, s.img_in, true);
  pack_cell(packs, P, s, true);
  pack_layers(packs, P, s.img_out, true);
  Tensor gdT = grad_tm(g_deter), gsT = grad_tm(g_stoch);
  const Tensor gaT = grad_tm(g_a), gbT = grad_tm(g_b);
  // the gradient of `feat` (feat_out): rows 1..H join the steps' deter / stoch
  // gradients, row 0 is the start's
  const Tensor gf = opt(g_feat);
  Tensor g_start_deter, g_start_stoch;
  if (gf.defined()) {
    const int64_t D = deters.size(2);
    TORCH_CHECK(gf.dim() == 3 && gf.size(0) == N && gf.size(1) == H + 1 &&
                    gf.size(2) == SF + D,
                kImagine, "_backward: `g_feat` must be [", N, ", ", H + 1, ", ", SF + D,
                "], got ", gf.sizes());
    // time-major [H, N, ·] views, not copies: each step's rows are read once, by the
    // add that joins them to the carried gradient
    const Tensor steps = gf.narrow(1, 1, H).transpose(0, 1);
    gdT = plus(gdT, steps.narrow(2, SF, D));
    gsT = plus(gsT, steps.narrow(2, 0, SF));
    g_start_deter = gf.select(1, 0).narrow(1, SF, D);
    g_start_stoch = gf.select(1, 0).narrow(1, 0, SF);
  }
  const Tensor gactT = grad_tm(g_action);
  Grads g(P, need_params), ga(AP, use_actor && need_actor_params);
  // dz^T of each actor layer into a transposed sequence buffer [U, H·N]: step t's
  // columns t·N .. t·N + N are written while its dz is still in cache, and the deferred
  // weight gradient reads the whole buffer as its product's left operand (Grads::mm_t).
  // Transposing all H·N rows of dz at the end instead would read them cold, costing
  // more than the product itself.
  const int64_t L = use_actor ? static_cast<int64_t>(as.layers.size()) : 0;
  TensorVec actor_dzT;
  for (int64_t l = 0; ga.wanted() && l < L; ++l)
    actor_dzT.push_back(at::empty({AP[as.layers[l].w].size(0), H * N}, acts.options()));
  // Records layer r's weight (x at column col0) and bias gradients of step t from dz.
  const auto record_actor = [&](int64_t l, int64_t t, const Tensor& dz,
                                std::initializer_list<std::pair<Tensor, int64_t>> xs) {
    if (!ga.wanted()) return;
    const DenseRef& r = as.layers[l];
    const Tensor dzT = actor_dzT[l].narrow(1, t * N, N);
    copy_transposed(dzT, dz);
    for (const auto& [x, col0] : xs) ga.mm_t(r.w, dzT, x, col0);
    if (r.b >= 0) ga.rowsum_t(r.b, dzT);
  };
  Tensor d_actions = use_actor ? empty0(acts) : at::empty({H, N, A}, acts.options());
  Tensor carry_deter, carry_stoch;
  if (need_params) {  // the cell's first weight input (last step): kept, or dropped
    const Tensor& x = saved[layout.cell(H - 1, cells::weight_input_slots(s.cell)[0])];
    TORCH_CHECK(x.numel() > 0, kImagine,
                "_backward: world-model parameter gradients were asked for, but the forward "
                "ran with save_wm_inputs=False and kept no inputs for them");
  }
  for (int64_t t = H - 1; t >= 0; --t) {
    Tensor dh = latent_backward(s, stats_all[t], snT[t], plus(at_step(gsT, t), carry_stoch),
                                at_step(gaT, t), at_step(gbT, t));
    for (int64_t l = static_cast<int64_t>(s.img_out.size()) - 1; l >= 0; --l) {
      dense::LayerSaved ls = layout.layer_saved(saved, t, Part::kPost, l);
      if (l == 0) ls.x = deters[t + 1];
      dh = dense::layer_backward(P, s.img_out[l], ls, dh, g, true);
    }
    const Tensor dd = plus(plus(at_step(gdT, t), carry_deter), dh);
    // the cell's saved entries with its state inputs taken from the buffers
    TensorVec cell_sv = layout.cell_saved(saved, t);
    for (const int64_t slot : cells::state_slots(s.cell))
      cell_sv[slot] = slot == cells::slot::kBlockStoch && s.block_gru() ? stochs[t] : deters[t];
    const cells::InputGrads cg = cells::backward(P, s.cell, cell_sv.data(), dd, g);
    Tensor d_stoch, d_act;
    if (!s.block_gru()) {
      const DenseRef& r = s.img_in[0];
      const Tensor dz =
          dense::layer_backward_dz(P, r, layout.layer_saved(saved, t, Part::kImgIn, 0), cg.x, g);
      const Tensor dx = split_linear_backward(P, r, dz, stochs[t], acts[t], g);
      d_stoch = dx.narrow(1, 0, SF);
      d_act = dx.narrow(1, SF, A);
    } else {
      d_stoch = cg.stoch;
      d_act = cells::action_grad(cg.a, acts[t]);
    }
    Tensor d_deter = cg.h;
    d_act = plus(d_act, at_step(gactT, t));
    if (use_actor) {
      Tensor dr = action_backward(as, raws[t], anT[t], d_act);
      for (int64_t l = L - 1; l >= 0; --l) {
        const DenseRef& r = as.layers[l];
        const Tensor dz =
            dense::layer_backward_dz(AP, r, layout.layer_saved(saved, t, Part::kActor, l), dr, ga);
        // layer 0's input is feat = cat(stoch, deter), read as its two parts
        if (l > 0)
          record_actor(l, t, dz, {{saved[layout.actor_hidden(l - 1)][t], 0}});
        else
          record_actor(l, t, dz, {{stochs[t], 0}, {deters[t], SF}});
        dr = gemm::mm(dz, AP[r.w]);
      }
      d_stoch = d_stoch + dr.narrow(1, 0, SF);
      d_deter = d_deter + dr.narrow(1, SF, dr.size(1) - SF);
    } else {
      d_actions[t].copy_(d_act);
    }
    carry_deter = d_deter;
    carry_stoch = d_stoch.contiguous();
  }
  if (gf.defined()) {
    carry_deter = carry_deter + g_start_deter;
    carry_stoch = carry_stoch + g_start_stoch;
  }
  TensorVec dP = need_params ? g.finish() : TensorVec{};
  TensorVec dA = (use_actor && need_actor_params) ? ga.finish() : TensorVec{};
  return {dP, dA, carry_deter, carry_stoch,
          use_actor ? d_actions : batch_major(d_actions)};
}

}  // namespace
}  // namespace rssm

TORCH_LIBRARY_FRAGMENT(dreamer_fast, m) {
  m.def(
      "rssm_observe(Tensor[] params, str spec, Tensor embed, Tensor action, "
      "Tensor keep, Tensor deter, Tensor stoch, Tensor prior_noise, Tensor post_noise, "
      "Tensor? init_deter, Tensor? init_stoch, "
      "bool save) -> (Tensor deter, Tensor post_stoch, Tensor post_a, Tensor post_b, "
      "Tensor prior_stoch, Tensor prior_a, Tensor prior_b, Tensor[] saved)");
  m.def(
      "rssm_observe_backward(Tensor? g_deter, Tensor? g_post_stoch, Tensor? g_post_a, "
      "Tensor? g_post_b, Tensor? g_prior_stoch, Tensor? g_prior_a, Tensor? g_prior_b, "
      "Tensor[] saved, Tensor[] params, str spec, bool init) -> "
      "(Tensor[], Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "rssm_imagine(Tensor[] params, str spec, Tensor[] actor_params, "
      "str actor_spec, Tensor deter, Tensor stoch, Tensor? actions, "
      "Tensor action_noise, Tensor stoch_noise, int horizon, bool save, bool feat_out, "
      "bool save_wm_inputs) "
      "-> (Tensor deter, Tensor stoch, Tensor a, Tensor b, Tensor action, Tensor feat, "
      "Tensor[] saved)");
  m.def(
      "rssm_imagine_backward(Tensor? g_deter, Tensor? g_stoch, Tensor? g_a, Tensor? g_b, "
      "Tensor? g_action, Tensor? g_feat, Tensor[] saved, Tensor[] params, str spec, "
      "Tensor[] actor_params, str actor_spec, bool use_actor, "
      "bool need_params, bool need_actor_params) -> (Tensor[], Tensor[], Tensor, Tensor, "
      "Tensor)");
}

namespace {
// The same bodies serve every key. On Meta (DF_DEVICE_LAUNCH launches nothing there)
// they give FakeTensor and torch.compile every output shape, the saved list included.
void impl_sequence_ops(torch::Library& m) {
  m.impl("rssm_observe", &rssm::observe);
  m.impl("rssm_observe_backward", &rssm::observe_backward);
  m.impl("rssm_imagine", &rssm::imagine);
  m.impl("rssm_imagine_backward", &rssm::imagine_backward);
}
}  // namespace

TORCH_LIBRARY_IMPL(dreamer_fast, Meta, m) { impl_sequence_ops(m); }
TORCH_LIBRARY_IMPL(dreamer_fast, CPU, m) { impl_sequence_ops(m); }
#ifdef DREAMER_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(dreamer_fast, CUDA, m) { impl_sequence_ops(m); }
#endif

}  // namespace dreamer_fast
