"""The Dreamer actor: an MLP on the model feature and one of three action heads.

``Actor(feat_size, action_size, head=...)(feat)`` returns an action distribution for
``feat [..., F]``; the MLP is ``layers`` :class:`~dreamer_fast.nn.Dense` layers (norm +
act) and a linear output of ``2A`` (normal heads: ``raw_mean, raw_std``) or ``A``
(categorical: logits). The heads, with ``ε`` standard normal noise and ``u`` uniform
[0, 1) noise (noise is an input, so fused and reference rollouts are identical):

``tanh_normal`` (DreamerV1)::

    mean = mean_scale · tanh(raw_mean / mean_scale)
    std  = softplus(raw_std + softplus⁻¹(init_std)) + min_std
    action = tanh(mean + std · ε)                       (reparameterised)

``bounded_normal`` (DreamerV3 continuous control)::

    mean = tanh(raw_mean)
    std  = (max_std − min_std) · σ(raw_std + 2) + min_std
    action = clip(mean + std · ε, −1, 1)                 (straight-through clip)

``categorical`` (discrete actions)::

    probs = (1 − unimix) · softmax(logits) + unimix / A
    action = onehot(first k with u < cumsum(probs)[k]) + probs − sg(probs)   (straight-through)

All actions lie in [−1, 1] (continuous) or are one-hot ``[..., A]`` (discrete).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dreamer_fast.nn.dense import MLP, shared_eps
from dreamer_fast.nn.flat_params import FlatParams
from dreamer_fast.ops import categorical_sample, categorical_sample_ref
from dreamer_fast.ops._dispatch import check_backend, use_fused
from dreamer_fast.ops.rssm_spec import HEADS, ActorSpec
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _normal_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return -((x - mean) / std) ** 2 / 2 - torch.log(std) - _LOG_SQRT_2PI


class _NormalBase:
    """Shared by the two normal heads: ``mean, std [..., A]`` and the reparameterised
    Gaussian draw ``mean + std · ε``."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean, self.std = mean, std

    def noise_shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape)

    def gaussian(self, noise: torch.Tensor | None) -> torch.Tensor:
        noise = torch.randn_like(self.mean) if noise is None else noise
        return self.mean + self.std * noise


class TanhNormal(_NormalBase):
    """``tanh(N(mean, std))`` per action dim; ``mean, std [..., A]`` (pre-tanh)."""

    def sample(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(self.gaussian(noise))

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """``log N(atanh(a)) − log(1 − a²)`` summed over actions; ``a`` is clamped to
        ``±(1 − 1e-6)`` so the edges stay finite."""
        a = action.clamp(-1 + 1e-6, 1 - 1e-6)
        pre = torch.atanh(a)
        logp = _normal_log_prob(pre, self.mean, self.std) - torch.log1p(-a * a)
        return logp.sum(-1)

    def entropy(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One-sample estimate ``−log p(a)`` (the tanh entropy has no closed form)."""
        pre = self.gaussian(noise)
        logp = _normal_log_prob(pre, self.mean, self.std) - 2 * (
            math.log(2.0) - pre - F.softplus(-2 * pre))  # log(1 - tanh(x)^2), stable
        return -logp.sum(-1)

    def mode(self) -> torch.Tensor:
        return torch.tanh(self.mean)


class BoundedNormal(_NormalBase):
    """``N(mean, std)`` with ``|mean| < 1``; samples clipped to [−1, 1] with a
    straight-through gradient. ``log_prob``/``entropy`` are those of the unclipped normal.

    For a score-function (REINFORCE) loss, score the unclipped draw ``gaussian(noise)``
    with the same noise, not the clipped action: the normal density of a clipped value
    is biased (mass beyond ±1 is scored at ±1), which pushes the std up."""

    def sample(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        x = self.gaussian(noise)
        return x + (x.clamp(-1.0, 1.0) - x).detach()

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return _normal_log_prob(action, self.mean, self.std).sum(-1)

    def entropy(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        return (0.5 + _LOG_SQRT_2PI + torch.log(self.std)).sum(-1)

    def mode(self) -> torch.Tensor:
        return self.mean


class OneHotCategorical:
    """Categorical over ``A`` actions with a uniform mix; one-hot samples, straight-through.
    ``logits [..., A]``; the sampling noise is uniform ``[..., 1]``."""

    def __init__(self, logits: torch.Tensor, unimix: float, fused: bool) -> None:
        self.logits, self.unimix, self._fused = logits, float(unimix), fused
        probs = torch.softmax(logits, -1)
        if unimix:
            probs = (1 - unimix) * probs + unimix / logits.shape[-1]
        self.probs = probs

    def noise_shape(self) -> tuple[int, ...]:
        return (*self.logits.shape[:-1], 1)

    def sample(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        drawn_here = noise is None
        if drawn_here:
            noise = torch.rand(self.noise_shape(), device=self.logits.device,
                               dtype=self.logits.dtype)
        fn = categorical_sample if self._fused else categorical_sample_ref
        sample, _ = fn(self.logits.unsqueeze(-2), noise, self.unimix,
                       check_range=not drawn_here)
        return sample.squeeze(-2)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return (action * torch.log(self.probs)).sum(-1)

    def entropy(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        return -(self.probs * torch.log(self.probs)).sum(-1)

    def mode(self) -> torch.Tensor:
        return F.one_hot(self.probs.argmax(-1), self.logits.shape[-1]).to(self.logits.dtype)


ActionDist = TanhNormal | BoundedNormal | OneHotCategorical


class Actor(FlatParams, nn.Module):
    """Policy ``π(a | feat)``: ``MLP(feat) -> head`` (see the module docstring)."""

    def __init__(self, feat_size: int, action_size: int, *, head: str = "bounded_normal",
                 units: int = 512, layers: int = 2, norm: str = "layer", act: str = "silu",
                 eps: float = 1e-3, min_std: float | None = None, max_std: float = 1.0,
                 init_std: float = 5.0, mean_scale: float = 5.0, unimix: float = 0.01,
                 device=None, dtype=None, backend: str = "auto") -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"Actor: `head` must be one of {HEADS}, got {head!r}")
        if action_size < 1:
            raise ValueError(f"Actor: `action_size` must be >= 1, got {action_size}")
        if min_std is None:
            min_std = 1e-4 if head == "tanh_normal" else 0.1
        if min_std < 0 or (head == "bounded_normal" and not min_std < max_std):
            raise ValueError(f"Actor: need 0 <= `min_std` < `max_std`, got {min_std}, {max_std}")
        if head == "tanh_normal" and not (init_std > 0 and mean_scale > 0):
            raise ValueError(f"Actor: `init_std` and `mean_scale` must be > 0, got "
                             f"{init_std}, {mean_scale}")
        if not 0.0 <= unimix < 1.0:
            raise ValueError(f"Actor: `unimix` must be in [0, 1), got {unimix}")
        self.feat_size, self.action_size, self.head = feat_size, action_size, head
        self.min_std, self.max_std = float(min_std), float(max_std)
        self.mean_scale, self.unimix = float(mean_scale), float(unimix)
        # softplus(raw + std_offset) = init_std at raw = 0
        self.std_offset = float(init_std + math.log(-math.expm1(-init_std)))
        self.backend = check_backend(backend)
        out = action_size if head == "categorical" else 2 * action_size
        self.units = units
        self.net = MLP(feat_size, units, layers, out, norm, act, eps, device=device, dtype=dtype,
                       backend=backend)
        self._spec = ActorSpec(
            head=head, action_size=action_size, feat_size=feat_size, units=units,
            layers=tuple(d.spec() for d in self.net), eps=shared_eps("Actor", list(self.net)),
            min_std=self.min_std, max_std=self.max_std, std_offset=self.std_offset,
            mean_scale=self.mean_scale, unimix=self.unimix)

    def spec(self) -> ActorSpec:
        """The structure and constants of this actor (fixed at construction)."""
        return self._spec

    def spec_params(self) -> list[torch.Tensor]:
        """The MLP's parameters as the flat list of :meth:`spec`."""
        return [t for d in self.net for t in d.spec_params()]

    def dist_from_raw(self, raw: torch.Tensor) -> ActionDist:
        """The head applied to the MLP output ``raw [..., 2A]`` (or ``[..., A]``)."""
        if self.head == "categorical":
            return OneHotCategorical(raw, self.unimix, use_fused(self.backend, raw))
        raw_mean, raw_std = raw.chunk(2, -1)
        if self.head == "tanh_normal":
            mean = self.mean_scale * torch.tanh(raw_mean / self.mean_scale)
            std = F.softplus(raw_std + self.std_offset) + self.min_std
            return TanhNormal(mean, std)
        mean = torch.tanh(raw_mean)
        std = (self.max_std - self.min_std) * torch.sigmoid(raw_std + 2.0) + self.min_std
        return BoundedNormal(mean, std)

    def forward(self, feat: torch.Tensor) -> ActionDist:
        if feat.shape[-1] != self.feat_size:
            raise ValueError(f"Actor: `feat` must have last dim {self.feat_size}, got "
                             f"{tuple(feat.shape)}")
        return self.dist_from_raw(self.net(feat))

    def noise_size(self) -> int:
        """Noise values per sampled action: ``A`` (normal heads) or 1 (categorical)."""
        return 1 if self.head == "categorical" else self.action_size

    def draw_noise(self, *batch: int, like: torch.Tensor) -> torch.Tensor:
        """Sampling noise ``[*batch, noise_size()]``: uniform [0, 1) for the categorical
        head, standard normal otherwise."""
        shape = (*batch, self.noise_size())
        if self.head == "categorical":
            return torch.rand(shape, device=like.device, dtype=like.dtype)
        return torch.randn(shape, device=like.device, dtype=like.dtype)

    def extra_repr(self) -> str:
        return f"head={self.head!r}, action_size={self.action_size}"
