// Parameter-gradient sinks (see grads.h).
#include "common/grads.h"

#include <algorithm>

#include "common/gemm.h"

namespace dreamer_fast {

namespace {

// The row concatenation of 2-D pieces. Pieces that are consecutive row blocks of one
// contiguous buffer (per-step slices of a [T, B, F] sequence buffer) come back as one
// view of that buffer, without a copy.
Tensor cat_rows(const std::vector<Tensor>& ts) {
  if (ts.size() == 1) return ts[0];
  const Tensor& first = ts[0];
  bool adjacent = first.dim() == 2 && first.is_contiguous();
  int64_t rows = 0;
  for (size_t i = 0; adjacent && i < ts.size(); ++i) {
    const Tensor& t = ts[i];
    adjacent = t.dim() == 2 && t.is_contiguous() && t.size(1) == first.size(1) &&
               t.is_alias_of(first) &&
               t.storage_offset() == first.storage_offset() + rows * first.size(1);
    rows += t.size(0);
  }
  if (adjacent) return first.as_strided({rows, first.size(1)}, {first.size(1), 1});
  return at::cat(ts);
}

// The column concatenation of 2-D pieces [C, n_i]. Pieces that are consecutive column
// blocks of one row-major buffer (the steps of a transposed sequence buffer [C, T·B])
// come back as one view of that buffer, without a copy.
Tensor cat_cols(const std::vector<Tensor>& ts) {
  if (ts.size() == 1) return ts[0];
  const Tensor& first = ts[0];
  bool adjacent = first.dim() == 2 && first.stride(1) == 1;
  int64_t cols = 0;
  for (size_t i = 0; adjacent && i < ts.size(); ++i) {
    const Tensor& t = ts[i];
    adjacent = t.dim() == 2 && t.stride(1) == 1 && t.size(0) == first.size(0) &&
               t.stride(0) == first.stride(0) && t.is_alias_of(first) &&
               t.storage_offset() == first.storage_offset() + cols;
    cols += t.size(1);
  }
  if (adjacent) return first.as_strided({first.size(0), cols}, {first.stride(0), 1});
  return at::cat(ts, 1);
}

}  // namespace

// Sizes spelled out rather than -1: with no rows (an empty batch) -1 is ambiguous.
Tensor block_weight_grad(const Tensor& dy, const Tensor& x, int64_t G) {
  const int64_t R = dy.size(0), in_g = x.size(1) / G, out_g = dy.size(1) / G;
  const Tensor dyb = dy.reshape({R, G, out_g}).transpose(0, 1);  // [G, R, out_g]
  const Tensor xb = x.reshape({R, G, in_g}).transpose(0, 1);     // [G, R, in_g]
  return at::bmm(xb.transpose(1, 2), dyb);
}

Tensor block_x_weight_grad(const Tensor& dz, const Tensor& x, int64_t G) {
  const int64_t cols = x.size(1), out_g = dz.size(1) / G;
  return gemm::mm(x.t(), dz).reshape({cols, G, out_g}).permute({1, 0, 2});
}

// ---- ImmediateGrads -------------------------------------------------------------------

void ImmediateGrads::mm(int64_t idx, const Tensor& dz, const Tensor& x, int64_t col0) {
  entries_[idx].push_back({kMm, col0, dz, x});
}

void ImmediateGrads::rowsum(int64_t idx, const Tensor& dz) {
  entries_[idx].push_back({kRowSum, 0, dz, Tensor()});
}

void ImmediateGrads::block(int64_t idx, const Tensor& dy, const Tensor& x, int64_t G,
                           int64_t row0) {
  entries_[idx].push_back({kBlock, row0, block_weight_grad(dy, x, G), Tensor()});
}

void ImmediateGrads::block_x(int64_t idx, const Tensor& dz, const Tensor& x, int64_t G,
                             int64_t row0) {
  entries_[idx].push_back({kBlock, row0, block_x_weight_grad(dz, x, G), Tensor()});
}

void ImmediateGrads::add(int64_t idx, const Tensor& g) {
  entries_[idx].push_back({kAdd, 0, g, Tensor()});
}

Tensor ImmediateGrads::take(int64_t idx) {
  std::vector<Piece> ps = std::move(entries_[idx]);
  entries_[idx].clear();
  if (ps.empty()) return Tensor();
  const Kind kind = ps[0].kind;
  std::sort(ps.begin(), ps.end(), [](const Piece& p, const Piece& q) { return p.off < q.off; });
  for (const Piece& p : ps) TORCH_INTERNAL_ASSERT(p.kind == kind, "ImmediateGrads: mixed kinds");
  if (kind == kRowSum || kind == kAdd) {
    TORCH_INTERNAL_ASSERT(ps.size() == 1, "ImmediateGrads: one sum per parameter");
    return kind == kAdd ? ps[0].a : ps[0].a.sum(0);
  }
  std::vector<Tensor> parts;
  for (const Piece& p : ps) parts.push_back(kind == kMm ? p.b : p.a);
  if (kind == kBlock) return parts.size() == 1 ? parts[0] : at::cat(parts, 1);
  // column blocks of one product: dz^T [x_0, x_1, ...]
  for (const Piece& p : ps)
    TORCH_INTERNAL_ASSERT(p.a.is_same(ps[0].a), "ImmediateGrads: column blocks need one dz");
  return gemm::mm(ps[0].a.t(), parts.size() == 1 ? parts[0] : at::cat(parts, 1));
}

// ---- Grads ----------------------------------------------------------------------------

Tensor& Grads::dst(int64_t idx) {
  if (!out_[idx].defined()) out_[idx] = at::zeros_like(params_[idx]);
  return out_[idx];
}

void Grads::record(int64_t idx, Kind kind, int64_t off, const Tensor& a, const Tensor& b,
                   int64_t G) {
  if (!wanted_) return;
  Entry& e = entries_[{idx, kind, off}];
  e.a.push_back(a);
  if (b.defined()) e.b.push_back(b);
  e.G = G;
}

void Grads::accumulate(Tensor& dst, Kind kind, int64_t off, const Tensor& a, const Tensor& b,
                       int64_t G) {
  switch (kind) {
    case kMm: {
      const Tensor g = gemm::mm(a.t(), b);  // [N, cols]
      dst.narrow(1, off, g.size(1)).add_(g);
      break;
    }
    case kRowSum:
      dst.add_(a.sum(0));
      break;
    case kMmT: {  // a = dz^T [N, rows]
      const Tensor g = gemm::mm(a, b);
      dst.narrow(1, off, g.size(1)).add_(g);
      break;
    }
    case kRowSumT:
      dst.add_(a.sum(1));
      break;
    case kBlock: {
      const Tensor g = block_weight_grad(a, b, G);
      dst.narrow(1, off, g.size(1)).add_(g);
      break;
    }
    case kBlockX: {
      const Tensor g = block_x_weight_grad(a, b, G);
      dst.narrow(1, off, g.size(1)).add_(g);
      break;
    }
  }
}

void Grads::mm(int64_t idx, const Tensor& dz, const Tensor& x, int64_t col0) {
  record(idx, kMm, col0, dz, x, 1);
}

void Grads::rowsum(int64_t idx, const Tensor& dz) { record(idx, kRowSum, 0, dz, Tensor(), 1); }

void Grads::mm_t(int64_t idx, const Tensor& dzT, const Tensor& x, int64_t col0) {
  record(idx, kMmT, col0, dzT, x, 1);
}

void Grads::rowsum_t(int64_t idx, const Tensor& dzT) {
  record(idx, kRowSumT, 0, dzT, Tensor(), 1);
}

void Grads::block(int64_t idx, const Tensor& dy, const Tensor& x, int64_t G, int64_t row0) {
  record(idx, kBlock, row0, dy, x, G);
}

void Grads::block_x(int64_t idx, const Tensor& dz, const Tensor& x, int64_t G, int64_t row0) {
  record(idx, kBlockX, row0, dz, x, G);
}

void Grads::add(int64_t idx, const Tensor& g) {
  // a finished gradient (norm weights): nothing to concatenate, add at once
  if (wanted_) dst(idx).add_(g);
}

std::vector<Tensor> Grads::finish() {
  TORCH_INTERNAL_ASSERT(wanted_, "Grads::finish on gradients nobody wanted");
  // One dz list often feeds several products in a row (the column blocks of one weight,
  // then its bias: the map orders a weight's entries before its bias's): it is
  // concatenated once and, for oneDNN, transposed once.
  struct Shared {
    const void* first = nullptr;
    size_t n = 0;
    Tensor rows, rows_t;
  } shared;
  for (auto& [key, e] : entries_) {
    const auto [idx, kind, off] = key;
    // Backward passes record their steps last-to-first; in first-to-last order the
    // saved inputs that are steps of one forward buffer are adjacent row blocks, which
    // cat_rows then reads as one view. (Both lists flip together: pairs stay matched.)
    std::reverse(e.a.begin(), e.a.end());
    std::reverse(e.b.begin(), e.b.end());
    const void* first = e.a.front().unsafeGetTensorImpl();
    const bool transposed = kind == kMmT || kind == kRowSumT;
    if (first != shared.first || e.a.size() != shared.n)
      shared = {first, e.a.size(), transposed ? cat_cols(e.a) : cat_rows(e.a)};
    Tensor a = shared.rows;
    const Tensor b = e.b.empty() ? Tensor() : cat_rows(e.b);
    if (kind == kMm && gemm::uses_onednn(a.t(), b)) {
      if (!shared.rows_t.defined()) shared.rows_t = a.t().contiguous();
      a = shared.rows_t.t();  // its transpose, the product's left operand, is contiguous
    }
    accumulate(dst(idx), static_cast<Kind>(kind), off, a, b, e.G);
  }
  entries_.clear();
  for (size_t i = 0; i < params_.size(); ++i) dst(static_cast<int64_t>(i));
  return std::move(out_);
}

}  // namespace dreamer_fast
