"""TorchRL's TD(λ) value estimation (what its Dreamer actor loss uses) on dreamer_fast's
fused reverse scan.

Use::

    from dreamer_fast.integrations import torchrl as df_torchrl
    import torchrl.objectives.value.advantages as advantages
    df_torchrl.install(advantages)     # TDLambdaEstimator now runs the fused scan

:func:`td_lambda_return_estimate` and :func:`vec_td_lambda_return_estimate` have the
signatures of ``torchrl.objectives.value.functional``'s functions of those names
(``gamma, lmbda, next_state_value, reward, done, terminated=None, rolling_gamma=None, *,
time_dim=-2``) and return the same tensor: with ``nv = next_state_value·(1 −
terminated)``, ``g[T] = nv[T−1]`` and, backwards in time,
``g[t] = r[t] + γ[t]·((1 − λ[t])·nv[t] + λ[t]·(g[t+1]·(1 − d[t]) + nv[t]·d[t]))``,
which is one reverse scan ``R[t] = inputs[t] + decay[t]·R[t+1]`` with ``inputs = r +
γ(1 − λ)·nv + γλ·d·nv`` and ``decay = γλ(1 − d)``. :func:`install` replaces both names
in the module that calls them (``torchrl.objectives.value.advantages``:
``TDLambdaEstimator.value_estimate``, the default estimator of ``DreamerActorLoss``);
:func:`uninstall` puts TorchRL's back.

Not covered: ``rolling_gamma=False`` (refused with
:class:`~dreamer_fast.integrations.UnsupportedPeerConfig`), and TorchRL's RSSM modules
(``RSSMPrior`` / ``RSSMPosterior``): their Gaussian scale is
``NormalParamExtractor(scale_mapping='softplus', scale_lb=0.1)``, i.e. ``max(softplus(x),
0.1)``, not the ``softplus(x) + min_std`` of our latent, and they run step by step over
tensordicts (``RSSMRollout``); no mapping is offered for them yet.
"""

from __future__ import annotations

import types

import torch

from dreamer_fast.integrations._common import refuse
from dreamer_fast.ops.scan import reverse_scan

__all__ = ["td_lambda_return_estimate", "vec_td_lambda_return_estimate", "install",
           "uninstall"]

PEER = "torchrl td_lambda_return_estimate"


def _like(x, ref: torch.Tensor) -> torch.Tensor:
    """A scalar or tensor ``gamma``/``lmbda`` as a tensor broadcastable to ``ref``."""
    if isinstance(x, torch.Tensor):
        return x.to(device=ref.device, dtype=ref.dtype)
    return torch.as_tensor(float(x), dtype=ref.dtype, device=ref.device)


def td_lambda_return_estimate(gamma, lmbda, next_state_value, reward, done, terminated=None,
                              rolling_gamma=None, *, time_dim=-2):
    """TorchRL's ``td_lambda_return_estimate`` as one fused reverse scan (module
    docstring); same arguments, same result."""
    if rolling_gamma is False:
        refuse(PEER, "rolling_gamma", False,
               "each step's own discount over the whole tail is not a single reverse scan")
    if terminated is None:
        terminated = done
    if not (next_state_value.shape == reward.shape == done.shape == terminated.shape):
        raise RuntimeError("All input tensors (value, reward and done states) must share a "
                           "unique shape.")
    nv = next_state_value * (~terminated.bool()).to(next_state_value.dtype)
    d = done.to(nv.dtype)
    g, lam = _like(gamma, nv), _like(lmbda, nv)
    gl = g * lam
    inputs = reward + g * (1 - lam) * nv + gl * d * nv
    decay = (gl * (1 - d)).expand(nv.shape)
    axis = time_dim if time_dim >= 0 else nv.dim() + time_dim
    init = nv.select(axis, nv.shape[axis] - 1)
    return reverse_scan(inputs.expand(nv.shape), decay, init, axis)


def vec_td_lambda_return_estimate(gamma, lmbda, next_state_value, reward, done,
                                  terminated=None, rolling_gamma=None, *, time_dim=-2):
    """TorchRL's ``vec_td_lambda_return_estimate`` (the same returns, computed in closed
    form there) as the same fused reverse scan."""
    return td_lambda_return_estimate(gamma, lmbda, next_state_value, reward, done, terminated,
                                     rolling_gamma, time_dim=time_dim)


_NAMES = ("td_lambda_return_estimate", "vec_td_lambda_return_estimate")


def install(module: types.ModuleType) -> None:
    """Replaces the TD(λ) functions a TorchRL module imported (e.g.
    ``torchrl.objectives.value.advantages``) by the fused ones."""
    saved = module.__dict__.setdefault("_dreamer_fast_saved", {})
    ours = {"td_lambda_return_estimate": td_lambda_return_estimate,
            "vec_td_lambda_return_estimate": vec_td_lambda_return_estimate}
    for name in _NAMES:
        if hasattr(module, name):
            saved.setdefault(name, getattr(module, name))
            setattr(module, name, ours[name])


def uninstall(module: types.ModuleType) -> None:
    for name, val in module.__dict__.pop("_dreamer_fast_saved", {}).items():
        setattr(module, name, val)
