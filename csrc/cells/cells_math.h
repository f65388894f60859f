// Math of the recurrent cells (torch.nn.GRUCell and the LayerNorm GRU of
// DreamerV2), forward and backward, written once for the CPU launcher and the CUDA
// kernels. Includes only <cmath>/<cstdint>; no torch headers (nvcc compiles the .cu
// users of this file without torch).
//
// Layouts (row-major, one row per batch element b):
//   gi, gh   [B, 3H]  input / hidden projections, gate order (r, z, n) like torch
//   parts    [B, 3H]  cat([x, h]) @ W.T before LayerNorm, chunk order (reset, cand, update)
//   hx, hy   [B, H]
// `acc_t` is the accumulation type (float for float/half/bfloat16, double for double),
// `Cvt` converts storage <-> accumulation type (static load/store).
//
// Row functions take a `Lanes` policy (common/scalar_math.h).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/scalar_math.h"

namespace dreamer_fast {
namespace cells {

// ---------------------------------------------------------------------------
// torch.nn.GRUCell:  r = σ(gi_r + gh_r),  z = σ(gi_z + gh_z),
//                    n = tanh(gi_n + r ⊙ gh_n),  h' = (1 − z) ⊙ n + z ⊙ h
// with gi = x W_ih^T + b_ih and gh = h W_hh^T + b_hh (the GEMMs run outside).
// Saved for backward, per element: r, z, n, gh_n  (workspace [B, 4H]).
// ---------------------------------------------------------------------------

template <typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void gru_forward_element(const scalar_t* DF_RESTRICT gi,
                                        const scalar_t* DF_RESTRICT gh,
                                        const scalar_t* DF_RESTRICT hx, scalar_t* DF_RESTRICT hy,
                                        scalar_t* DF_RESTRICT workspace, int64_t b, int64_t j,
                                        int64_t H) {
  const int64_t g = b * 3 * H, s = b * H + j, w = b * 4 * H;
  const acc_t gh_n = Cvt::load(gh[g + 2 * H + j]);
  const acc_t r = sigmoid<acc_t>(Cvt::load(gi[g + j]) + Cvt::load(gh[g + j]));
  const acc_t z = sigmoid<acc_t>(Cvt::load(gi[g + H + j]) + Cvt::load(gh[g + H + j]));
  const acc_t n = df_tanh(Cvt::load(gi[g + 2 * H + j]) + r * gh_n);
  const acc_t h = Cvt::load(hx[s]);
  hy[s] = Cvt::store((acc_t(1) - z) * n + z * h);
  workspace[w + j] = Cvt::store(r);
  workspace[w + H + j] = Cvt::store(z);
  workspace[w + 2 * H + j] = Cvt::store(n);
  workspace[w + 3 * H + j] = Cvt::store(gh_n);
}

// Backward of the gate math for one element. Outputs:
//   dgi [B, 3H]: d gi = (dr_pre, dz_pre, dn_pre)
//   dgh [B, 3H]: d gh = (dr_pre, dz_pre, dn_pre ⊙ r)
//   dh_direct [B, H]: the part of d hx not through gh, dh' ⊙ z
// with dn_pre = dh' (1 − z)(1 − n²), dz_pre = dh' (h − n) z (1 − z),
//      dr_pre = dn_pre gh_n r (1 − r).
template <typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void gru_backward_element(const scalar_t* DF_RESTRICT grad_hy,
                                         const scalar_t* DF_RESTRICT workspace,
                                         const scalar_t* DF_RESTRICT hx,
                                         scalar_t* DF_RESTRICT dgi, scalar_t* DF_RESTRICT dgh,
                                         scalar_t* DF_RESTRICT dh_direct, int64_t b, int64_t j,
                                         int64_t H) {
  const int64_t g = b * 3 * H, s = b * H + j, w = b * 4 * H;
  const acc_t r = Cvt::load(workspace[w + j]);
  const acc_t z = Cvt::load(workspace[w + H + j]);
  const acc_t n = Cvt::load(workspace[w + 2 * H + j]);
  const acc_t gh_n = Cvt::load(workspace[w + 3 * H + j]);
  const acc_t dy = Cvt::load(grad_hy[s]);
  const acc_t h = Cvt::load(hx[s]);
  const acc_t dn_pre = dy * (acc_t(1) - z) * (acc_t(1) - n * n);
  const acc_t dz_pre = dy * (h - n) * z * (acc_t(1) - z);
  const acc_t dr_pre = dn_pre * gh_n * r * (acc_t(1) - r);
  dgi[g + j] = Cvt::store(dr_pre);
  dgi[g + H + j] = Cvt::store(dz_pre);
  dgi[g + 2 * H + j] = Cvt::store(dn_pre);
  dgh[g + j] = Cvt::store(dr_pre);
  dgh[g + H + j] = Cvt::store(dz_pre);
  dgh[g + 2 * H + j] = Cvt::store(dn_pre * r);
  dh_direct[s] = Cvt::store(dy * z);
}

// ---------------------------------------------------------------------------
// LayerNorm GRU (DreamerV2, NM512/dreamerv3-torch, sheeprl):
//   y = LayerNorm(parts) with affine (gamma, beta) and eps, over all 3H columns
//   reset, cand, update = y[:H], y[H:2H], y[2H:]
//   r = σ(reset),  c = tanh(r ⊙ cand),  u = σ(update + update_bias)
//   h' = u ⊙ c + (1 − u) ⊙ h
// Saved for backward: parts (the raw GEMM output) and per-row (mean, rstd) in acc_t.
// ---------------------------------------------------------------------------

template <typename Cvt, typename Lanes, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void ln_gru_forward_row(const scalar_t* DF_RESTRICT parts,
                                       const scalar_t* DF_RESTRICT hx,
                                       const scalar_t* DF_RESTRICT gamma,
                                       const scalar_t* DF_RESTRICT beta, acc_t eps,
                                       acc_t update_bias, int64_t H, scalar_t* DF_RESTRICT hy,
                                       acc_t* DF_RESTRICT row_stats, const Lanes& lanes) {
  const int64_t C = 3 * H;
  acc_t sum = 0;
  DF_SIMD_SUM(sum)
  for (int64_t k = lanes.lane; k < C; k += lanes.count) sum += Cvt::load(parts[k]);
  const acc_t mean = lanes.sum(sum) / acc_t(C);
  acc_t sq = 0;  // two-pass variance: no cancellation for rows with a large mean
  DF_SIMD_SUM(sq)
  for (int64_t k = lanes.lane; k < C; k += lanes.count) {
    const acc_t d = Cvt::load(parts[k]) - mean;
    sq += d * d;
  }
  const acc_t rstd = df_rsqrt(lanes.sum(sq) / acc_t(C) + eps);
  DF_SIMD
  for (int64_t j = lanes.lane; j < H; j += lanes.count) {
    const acc_t y_r = (Cvt::load(parts[j]) - mean) * rstd * Cvt::load(gamma[j]) +
                      Cvt::load(beta[j]);
    const acc_t y_c = (Cvt::load(parts[H + j]) - mean) * rstd * Cvt::load(gamma[H + j]) +
                      Cvt::load(beta[H + j]);
    const acc_t y_u = (Cvt::load(parts[2 * H + j]) - mean) * rstd *
                          Cvt::load(gamma[2 * H + j]) + Cvt::load(beta[2 * H + j]);
    const acc_t r = sigmoid<acc_t>(y_r);
    const acc_t c = df_tanh(r * y_c);
    const acc_t u = sigmoid<acc_t>(y_u + update_bias);
    hy[j] = Cvt::store(u * c + (acc_t(1) - u) * Cvt::load(hx[j]));
  }
  if (lanes.lane == 0) {
    row_stats[0] = mean;
    row_stats[1] = rstd;
  }
}

// Backward of one LN-GRU row. Given dh' (grad_hy), writes
//   dy [3H] (acc_t):       dL/dy, the LayerNorm output     -> d beta  = Σ_b dy
//   dy_xhat [3H] (acc_t):  dy ⊙ x̂                          -> d gamma = Σ_b dy ⊙ x̂
//   dparts [3H]:           dL/dparts = rstd (ĝ − mean(ĝ) − x̂ mean(ĝ ⊙ x̂)), ĝ = dy ⊙ gamma
//   dh_direct [H]:         dh' ⊙ (1 − u), the part of d hx not through the GEMM
// Gate adjoints: dc = dh' u, du_pre = dh' (c − h) u (1 − u), dc_pre = dc (1 − c²),
//   dy_cand = dc_pre r, dy_reset = dc_pre y_cand r (1 − r), dy_update = du_pre.
template <typename Cvt, typename Lanes, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void ln_gru_backward_row(
    const scalar_t* DF_RESTRICT grad_hy, const scalar_t* DF_RESTRICT parts,
    const scalar_t* DF_RESTRICT hx, const scalar_t* DF_RESTRICT gamma,
    const scalar_t* DF_RESTRICT beta, const acc_t* DF_RESTRICT row_stats, acc_t update_bias,
    int64_t H, acc_t* DF_RESTRICT dy, acc_t* DF_RESTRICT dy_xhat,
    scalar_t* DF_RESTRICT dparts, scalar_t* DF_RESTRICT dh_direct, const Lanes& lanes) {
  const int64_t C = 3 * H;
  const acc_t mean = row_stats[0], rstd = row_stats[1];
  acc_t sum_g = 0, sum_gx = 0;  // Σ ĝ and Σ ĝ x̂ over the row
  DF_SIMD_SUM(sum_g, sum_gx)
  for (int64_t j = lanes.lane; j < H; j += lanes.count) {
    const acc_t x_r = (Cvt::load(parts[j]) - mean) * rstd;
    const acc_t x_c = (Cvt::load(parts[H + j]) - mean) * rstd;
    const acc_t x_u = (Cvt::load(parts[2 * H + j]) - mean) * rstd;
    const acc_t g_r = Cvt::load(gamma[j]), g_c = Cvt::load(gamma[H + j]),
                g_u = Cvt::load(gamma[2 * H + j]);
    const acc_t y_r = x_r * g_r + Cvt::load(beta[j]);
    const acc_t y_c = x_c * g_c + Cvt::load(beta[H + j]);
    const acc_t y_u = x_u * g_u + Cvt::load(beta[2 * H + j]);
    const acc_t r = sigmoid<acc_t>(y_r);
    const acc_t c = df_tanh(r * y_c);
    const acc_t u = sigmoid<acc_t>(y_u + update_bias);
    const acc_t h = Cvt::load(hx[j]);
    const acc_t d_out = Cvt::load(grad_hy[j]);
    const acc_t dc_pre = d_out * u * (acc_t(1) - c * c);
    const acc_t dy_u = d_out * (c - h) * u * (acc_t(1) - u);
    const acc_t dy_c = dc_pre * r;
    const acc_t dy_r = dc_pre * y_c * r * (acc_t(1) - r);
    dh_direct[j] = Cvt::store(d_out * (acc_t(1) - u));
    dy[j] = dy_r;
    dy[H + j] = dy_c;
    dy[2 * H + j] = dy_u;
    dy_xhat[j] = dy_r * x_r;
    dy_xhat[H + j] = dy_c * x_c;
    dy_xhat[2 * H + j] = dy_u * x_u;
    sum_g += dy_r * g_r + dy_c * g_c + dy_u * g_u;
    sum_gx += dy_r * g_r * x_r + dy_c * g_c * x_c + dy_u * g_u * x_u;
  }
  const acc_t mean_g = lanes.sum(sum_g) / acc_t(C);
  const acc_t mean_gx = lanes.sum(sum_gx) / acc_t(C);
  lanes.sync();  // dy was written by other lanes
  DF_SIMD
  for (int64_t k = lanes.lane; k < C; k += lanes.count) {
    const acc_t x = (Cvt::load(parts[k]) - mean) * rstd;
    const acc_t g = dy[k] * Cvt::load(gamma[k]);
    dparts[k] = Cvt::store(rstd * (g - mean_g - x * mean_gx));
  }
}

// ---------------------------------------------------------------------------
// Block GRU gates (DreamerV3 core). `parts` [B, 3D] is the output of the last
// block-diagonal linear layer: block g (of G, Dg = D / G units each) owns columns
// [3 Dg g, 3 Dg (g + 1)) = (reset_g, cand_g, update_g). Unit j = g Dg + k:
//   r = σ(reset),  c = tanh(r ⊙ cand),  u = σ(update + update_bias)   (update_bias = −1)
//   h' = u ⊙ c + (1 − u) ⊙ h
// ---------------------------------------------------------------------------

DF_HOST_DEVICE int64_t block_gate_column(int64_t j, int64_t Dg) {
  return (j / Dg) * 3 * Dg + (j % Dg);  // column of reset_j; cand at +Dg, update at +2 Dg
}

template <typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void block_gru_forward_element(const scalar_t* DF_RESTRICT parts,
                                              const scalar_t* DF_RESTRICT hx,
                                              scalar_t* DF_RESTRICT hy, acc_t update_bias,
                                              int64_t b, int64_t j, int64_t D, int64_t Dg) {
  const int64_t c0 = b * 3 * D + block_gate_column(j, Dg), s = b * D + j;
  const acc_t r = sigmoid<acc_t>(Cvt::load(parts[c0]));
  const acc_t c = df_tanh(r * Cvt::load(parts[c0 + Dg]));
  const acc_t u = sigmoid<acc_t>(Cvt::load(parts[c0 + 2 * Dg]) + update_bias);
  hy[s] = Cvt::store(u * c + (acc_t(1) - u) * Cvt::load(hx[s]));
}

// d parts (same block layout) and dh_direct = dh' (1 − u).
template <typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void block_gru_backward_element(const scalar_t* DF_RESTRICT grad_hy,
                                               const scalar_t* DF_RESTRICT parts,
                                               const scalar_t* DF_RESTRICT hx,
                                               scalar_t* DF_RESTRICT dparts,
                                               scalar_t* DF_RESTRICT dh_direct,
                                               acc_t update_bias, int64_t b, int64_t j,
                                               int64_t D, int64_t Dg) {
  const int64_t c0 = b * 3 * D + block_gate_column(j, Dg), s = b * D + j;
  const acc_t cand = Cvt::load(parts[c0 + Dg]);
  const acc_t r = sigmoid<acc_t>(Cvt::load(parts[c0]));
  const acc_t c = df_tanh(r * cand);
  const acc_t u = sigmoid<acc_t>(Cvt::load(parts[c0 + 2 * Dg]) + update_bias);
  const acc_t h = Cvt::load(hx[s]);
  const acc_t d_out = Cvt::load(grad_hy[s]);
  const acc_t dc_pre = d_out * u * (acc_t(1) - c * c);
  dparts[c0] = Cvt::store(dc_pre * cand * r * (acc_t(1) - r));
  dparts[c0 + Dg] = Cvt::store(dc_pre * r);
  dparts[c0 + 2 * Dg] = Cvt::store(d_out * (c - h) * u * (acc_t(1) - u));
  dh_direct[s] = Cvt::store(d_out * (acc_t(1) - u));
}

// ---------------------------------------------------------------------------
// Whole rows of the element functions above, for the CPU launcher: the loops live
// here, behind restrict-qualified parameters, so the compiler vectorises them.
// ---------------------------------------------------------------------------

template <typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void gru_forward_row(const scalar_t* DF_RESTRICT gi,
                                    const scalar_t* DF_RESTRICT gh,
                                    const scalar_t* DF_RESTRICT hx, scalar_t* DF_RESTRICT hy,
                                    scalar_t* DF_RESTRICT workspace, int64_t b, int64_t H) {
  DF_SIMD
  for (int64_t j = 0; j < H; ++j)
    gru_forward_element<Cvt, scalar_t, acc_t>(gi, gh, hx, hy, workspace, b, j, H);
}

template <typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void gru_backward_row(const scalar_t* DF_RESTRICT grad_hy,
                                     const scalar_t* DF_RESTRICT workspace,
                                     const scalar_t* DF_RESTRICT hx, scalar_t* DF_RESTRICT dgi,
                                     scalar_t* DF_RESTRICT dgh, scalar_t* DF_RESTRICT dh_direct,
                                     int64_t b, int64_t H) {
  DF_SIMD
  for (int64_t j = 0; j < H; ++j)
    gru_backward_element<Cvt, scalar_t, acc_t>(grad_hy, workspace, hx, dgi, dgh, dh_direct, b,
                                               j, H);
}

template <typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void block_gru_forward_row(const scalar_t* DF_RESTRICT parts,
                                          const scalar_t* DF_RESTRICT hx,
                                          scalar_t* DF_RESTRICT hy, acc_t update_bias, int64_t b,
                                          int64_t D, int64_t Dg) {
  DF_SIMD
  for (int64_t j = 0; j < D; ++j)
    block_gru_forward_element<Cvt, scalar_t, acc_t>(parts, hx, hy, update_bias, b, j, D, Dg);
}

template <typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void block_gru_backward_row(const scalar_t* DF_RESTRICT grad_hy,
                                           const scalar_t* DF_RESTRICT parts,
                                           const scalar_t* DF_RESTRICT hx,
                                           scalar_t* DF_RESTRICT dparts,
                                           scalar_t* DF_RESTRICT dh_direct, acc_t update_bias,
                                           int64_t b, int64_t D, int64_t Dg) {
  DF_SIMD
  for (int64_t j = 0; j < D; ++j)
    block_gru_backward_element<Cvt, scalar_t, acc_t>(grad_hy, parts, hx, dparts, dh_direct,
                                                     update_bias, b, j, D, Dg);
}

}  // namespace cells
}  // namespace dreamer_fast
