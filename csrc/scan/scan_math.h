// Math of the reverse-time scans (λ-return and generic reverse scan).
//
// This header is the single definition of the recurrences. It is included by the
// CPU launcher (C++, at::parallel_for over column tiles) and by the CUDA kernels
// (one thread per column), so the CPU tests exercise exactly the arithmetic the GPU
// runs. It includes nothing but <cstdint>: the .cu files that use it are compiled
// by nvcc without any torch header.
//
// Layout: every tensor is time-major and contiguous, viewed as [T, N]; element
// (t, n) lives at index t * N + n. A "tile" is W adjacent columns [n0, n0 + width)
// with width <= W: the CPU uses W = 64 so the inner loop over columns streams rows
// and vectorises, the GPU uses W = 1 (the carries live in registers).
//
// `acc_t` is the accumulation type (float for float/half/bfloat16, double for
// double). `Cvt` converts storage <-> accumulation type:
//   static acc_t Cvt::load(scalar_t);  static scalar_t Cvt::store(acc_t).
#pragma once

#include <cstdint>

#include "common/math_macros.h"

namespace dreamer_fast {
namespace scan {

// ---------------------------------------------------------------------------
// Per-element steps. Everything below is built from these four functions.
// ---------------------------------------------------------------------------

// R[t] = x[t] + decay[t] * R[t+1]
template <typename acc_t>
DF_HOST_DEVICE acc_t reverse_scan_step(acc_t x, acc_t decay, acc_t next_r) {
  return x + decay * next_r;
}

// R[t] = reward[t] + pcont[t] * ((1 - λ) * next_value[t] + λ * R[t+1])
template <typename acc_t>
DF_HOST_DEVICE acc_t lambda_return_step(acc_t reward, acc_t pcont, acc_t next_value,
                                        acc_t next_r, acc_t lambda) {
  return reward + pcont * ((acc_t(1) - lambda) * next_value + lambda * next_r);
}

// Adjoint carry of both scans: G[t] = gout[t] + decay[t-1] * G[t-1], G[-1] = 0,
// where decay is `decay` for the reverse scan and `λ * pcont` for the λ-return.
template <typename acc_t>
DF_HOST_DEVICE acc_t adjoint_step(acc_t gout, acc_t prev_decay, acc_t prev_g) {
  return gout + prev_decay * prev_g;
}

// d pcont[t] = G[t] * ((1 - λ) * next_value[t] + λ * R[t+1])
template <typename acc_t>
DF_HOST_DEVICE acc_t lambda_return_pcont_grad(acc_t g, acc_t next_value, acc_t next_r,
                                              acc_t lambda) {
  return g * ((acc_t(1) - lambda) * next_value + lambda * next_r);
}

// ---------------------------------------------------------------------------
// Tiles: the time loops over W adjacent columns.
// ---------------------------------------------------------------------------

// Generic reverse scan, forward (one reverse-time pass):
//   R[T] = init;  R[t] = inputs[t] + decay[t] * R[t+1]   for t = T-1 .. 0.
template <int W, typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void reverse_scan_forward_tile(const scalar_t* DF_RESTRICT inputs, const scalar_t* DF_RESTRICT decay,
                                              const scalar_t* DF_RESTRICT init, scalar_t* DF_RESTRICT out,
                                              int64_t T, int64_t N, int64_t n0, int width) {
  acc_t carry[W];
  for (int j = 0; j < width; ++j) carry[j] = Cvt::load(init[n0 + j]);
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t row = t * N + n0;
    for (int j = 0; j < width; ++j) {
      carry[j] = reverse_scan_step<acc_t>(Cvt::load(inputs[row + j]),
                                          Cvt::load(decay[row + j]), carry[j]);
      out[row + j] = Cvt::store(carry[j]);
    }
  }
}

// Generic reverse scan, backward (one forward-time pass). `out` is the saved R.
//   d inputs[t] = G[t];  d decay[t] = G[t] * R[t+1] (R[T] = init);
//   d init = decay[T-1] * G[T-1].
template <int W, typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void reverse_scan_backward_tile(const scalar_t* DF_RESTRICT gout, const scalar_t* DF_RESTRICT decay,
                                               const scalar_t* DF_RESTRICT init, const scalar_t* DF_RESTRICT out,
                                               scalar_t* DF_RESTRICT ginputs, scalar_t* DF_RESTRICT gdecay,
                                               scalar_t* DF_RESTRICT ginit, int64_t T, int64_t N,
                                               int64_t n0, int width) {
  acc_t g[W];
  acc_t prev_decay[W];
  for (int j = 0; j < width; ++j) {
    g[j] = acc_t(0);
    prev_decay[j] = acc_t(0);
  }
  for (int64_t t = 0; t < T; ++t) {
    const int64_t row = t * N + n0;
    // R[t+1]: the next row of `out`, or `init` at the last step. Selecting the row
    // pointer outside the column loop keeps that loop branch-free (it vectorises).
    const scalar_t* next_r_row = (t + 1 < T) ? out + row + N : init + n0;
    for (int j = 0; j < width; ++j) {
      g[j] = adjoint_step<acc_t>(Cvt::load(gout[row + j]), prev_decay[j], g[j]);
      ginputs[row + j] = Cvt::store(g[j]);
      gdecay[row + j] = Cvt::store(g[j] * Cvt::load(next_r_row[j]));
      prev_decay[j] = Cvt::load(decay[row + j]);
    }
  }
  for (int j = 0; j < width; ++j) ginit[n0 + j] = Cvt::store(prev_decay[j] * g[j]);
}

// λ-return, forward (one reverse-time pass):
//   next_value[t] = value[t+1] (t < T-1),  next_value[T-1] = bootstrap,  R[T] = bootstrap,
//   R[t] = reward[t] + pcont[t] * ((1 - λ) * next_value[t] + λ * R[t+1]).
template <int W, typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void lambda_return_forward_tile(const scalar_t* DF_RESTRICT reward, const scalar_t* DF_RESTRICT value,
                                               const scalar_t* DF_RESTRICT pcont,
                                               const scalar_t* DF_RESTRICT bootstrap, scalar_t* DF_RESTRICT out,
                                               acc_t lambda, int64_t T, int64_t N,
                                               int64_t n0, int width) {
  acc_t carry[W];       // R[t+1]
  acc_t next_value[W];  // value[t+1]
  for (int j = 0; j < width; ++j) {
    carry[j] = Cvt::load(bootstrap[n0 + j]);
    next_value[j] = carry[j];
  }
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t row = t * N + n0;
    for (int j = 0; j < width; ++j) {
      carry[j] = lambda_return_step<acc_t>(Cvt::load(reward[row + j]),
                                           Cvt::load(pcont[row + j]), next_value[j],
                                           carry[j], lambda);
      out[row + j] = Cvt::store(carry[j]);
      next_value[j] = Cvt::load(value[row + j]);
    }
  }
}

// λ-return, backward (one forward-time pass). With decay[t] = λ pcont[t]:
//   G[t] = gout[t] + λ pcont[t-1] G[t-1]
//   d reward[t] = G[t]
//   d pcont[t]  = G[t] * ((1 - λ) next_value[t] + λ R[t+1])
//   d value[0]  = 0;  d value[t] = (1 - λ) pcont[t-1] G[t-1]   (t >= 1)
//   d bootstrap = pcont[T-1] G[T-1]   (it is both next_value[T-1] and R[T])
template <int W, typename Cvt, typename scalar_t, typename acc_t>
DF_HOST_DEVICE void lambda_return_backward_tile(
    const scalar_t* DF_RESTRICT gout, const scalar_t* DF_RESTRICT value, const scalar_t* DF_RESTRICT pcont,
    const scalar_t* DF_RESTRICT bootstrap, const scalar_t* DF_RESTRICT out, scalar_t* DF_RESTRICT greward, scalar_t* DF_RESTRICT gvalue,
    scalar_t* DF_RESTRICT gpcont, scalar_t* DF_RESTRICT gbootstrap, acc_t lambda, int64_t T, int64_t N, int64_t n0,
    int width) {
  acc_t g[W];           // G[t-1]
  acc_t prev_pcont[W];  // pcont[t-1]
  for (int j = 0; j < width; ++j) {
    g[j] = acc_t(0);
    prev_pcont[j] = acc_t(0);
  }
  for (int64_t t = 0; t < T; ++t) {
    const int64_t row = t * N + n0;
    // next_value[t] and R[t+1]: the next rows of `value` and `out`, or `bootstrap`
    // at the last step (row pointers chosen outside the column loop, see above).
    const bool last = (t + 1 == T);
    const scalar_t* next_value_row = last ? bootstrap + n0 : value + row + N;
    const scalar_t* next_r_row = last ? bootstrap + n0 : out + row + N;
    for (int j = 0; j < width; ++j) {
      // Gradient reaching value[t] through next_value[t-1].
      gvalue[row + j] = Cvt::store((acc_t(1) - lambda) * prev_pcont[j] * g[j]);
      g[j] = adjoint_step<acc_t>(Cvt::load(gout[row + j]), lambda * prev_pcont[j], g[j]);
      greward[row + j] = Cvt::store(g[j]);
      gpcont[row + j] = Cvt::store(lambda_return_pcont_grad<acc_t>(
          g[j], Cvt::load(next_value_row[j]), Cvt::load(next_r_row[j]), lambda));
      prev_pcont[j] = Cvt::load(pcont[row + j]);
    }
  }
  for (int j = 0; j < width; ++j) gbootstrap[n0 + j] = Cvt::store(prev_pcont[j] * g[j]);
}

}  // namespace scan
}  // namespace dreamer_fast
