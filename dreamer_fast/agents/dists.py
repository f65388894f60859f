"""Output transforms and losses of the world-model and critic heads.

* ``symlog(x) = sign(x)·log(1 + |x|)``, ``symexp`` its inverse (DreamerV3).
* :class:`TwoHot`: a categorical over ``bins`` fixed points ``b_k`` (equally spaced in
  ``[-20, 20]`` in symlog space). A target ``y`` is encoded as the two-hot vector on the
  two bins around ``symlog(y)`` with weights linear in the distance; the loss is the
  cross-entropy ``-Σ_k twohot_k(y)·log softmax(logits)_k``, the prediction
  ``symexp(Σ_k softmax(logits)_k·b_k)``.
* Bernoulli continue head: ``BCE(logit, target)``, mean ``σ(logit)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


class TwoHot:
    """Two-hot symlog regression over ``bins`` points in ``[low, high]`` (symlog space)."""

    def __init__(self, bins: int = 255, low: float = -20.0, high: float = 20.0) -> None:
        self.bins, self.low, self.high = bins, low, high

    def points(self, like: torch.Tensor) -> torch.Tensor:
        return torch.linspace(self.low, self.high, self.bins, device=like.device,
                              dtype=like.dtype)

    def encode(self, target: torch.Tensor) -> torch.Tensor:
        """``target [...]`` -> two-hot weights ``[..., bins]`` of ``symlog(target)``."""
        pts = self.points(target)
        y = symlog(target).clamp(self.low, self.high).contiguous()
        # index of the bin at or below y, then the weight of the one above by distance
        below = (torch.bucketize(y, pts, right=True) - 1).clamp(0, self.bins - 2)
        lo, hi = pts[below], pts[below + 1]
        w_hi = ((y - lo) / (hi - lo)).clamp(0.0, 1.0)
        out = torch.zeros(*y.shape, self.bins, device=y.device, dtype=y.dtype)
        out.scatter_(-1, below.unsqueeze(-1), (1 - w_hi).unsqueeze(-1))
        out.scatter_add_(-1, (below + 1).unsqueeze(-1), w_hi.unsqueeze(-1))
        return out

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy ``[...]`` of ``logits [..., bins]`` against ``target [...]``."""
        return -(self.encode(target.detach()) * F.log_softmax(logits, -1)).sum(-1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """The prediction ``symexp(E[b])`` ``[...]``."""
        return symexp((torch.softmax(logits, -1) * self.points(logits)).sum(-1))


def bernoulli_loss(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logit, target, reduction="none")
