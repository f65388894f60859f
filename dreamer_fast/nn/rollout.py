"""The imagination rollout: ``H`` steps of actor + RSSM image step from a batch of
start states.

``imagine(rssm, actor, start, horizon, grad='none', noise=None, wm_grad=False)``
and ``imagine_ref`` (same signature; a plain Python loop over ``actor`` and
``RSSM.img_step``). ``imagine`` runs all ``H`` steps in one native call
(:func:`dreamer_fast.ops.rssm_imagine` on ``rssm.spec()`` / ``actor.spec()`` and their
``spec_params()``) with one fused backward, when the modules' backends select the fused
kernels (``'fused'``, or ``'auto'`` where they exist for the device); otherwise it is
``imagine_ref``. For ``t = 0 .. H-1``::

    feat_t   = cat([flatten(stoch_t), deter_t])           (RSSM.get_feat)
    action_t = actor(feat_t).sample(noise["action"][:, t])
    state_{t+1} = rssm.img_step(state_t, action_t, noise["stoch"][:, t])

with ``state_0 = start``. Everything is batch-major; ``N`` start states:

* ``start``: an RSSM state dict with batch ``[N]`` (``deter``, ``stoch``, and ``logit``
  or ``mean``/``std``), e.g. the posteriors of a ``[B, T]`` batch flattened to ``B·T``.
* ``noise``: ``{"action": [N, H, actor.noise_size()], "stoch": [N, H, S]}``; drawn
  with :func:`draw_imagine_noise` when ``None``.
* returns a dict: ``feat [N, H+1, F]`` (index 0 is the start), the state entries
  ``deter``, ``stoch``, ``logit`` or ``mean``/``std`` ``[N, H+1, ...]`` (index 0 copies
  the start) and ``action [N, H, A]``. With the fused kernels ``deter`` and ``stoch``
  are views of ``feat`` (the op writes the features once, straight from its state
  buffers); treat the outputs as read-only.

Gradient modes:

* ``grad='none'`` (DreamerV2/V3 REINFORCE): the rollout runs without autograd and the
  outputs carry no graph; recompute log-probs and entropies from ``feat[:, :-1]``.
* ``grad='dynamics'`` (DreamerV1, V2 continuous): the outputs are differentiable w.r.t.
  the actor's parameters and ``start``; also w.r.t. the world model's parameters when
  ``wm_grad=True`` (they are treated as constants by default, so an actor loss never
  writes world-model gradients). The fused backward keeps, per step, each layer's
  input, pre-activation and norm statistics (actor MLP, RSSM input layer, cell, prior
  MLP): about ``N · H · (2·hidden·(actor layers + prior layers + 2) + 4·deter)`` values
  for the GRU cells, the same as the eager graph holds minus autograd's bookkeeping.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.func import functional_call

from dreamer_fast.ops._dispatch import use_fused
from dreamer_fast.ops.rssm import rssm_imagine

GRAD_MODES = ("none", "dynamics")
_OP = "imagine"


def draw_imagine_noise(rssm, actor, n: int, horizon: int,
                       like: torch.Tensor) -> dict[str, torch.Tensor]:
    """All sampling noise of one rollout: ``action [N, H, noise_size]``, ``stoch [N, H, S]``."""
    return {"action": actor.draw_noise(n, horizon, like=like),
            "stoch": rssm.draw_noise(n, horizon, like=like)}


def _state_keys(rssm) -> tuple[str, ...]:
    return ("deter", "stoch", "logit") if rssm.classes else ("deter", "stoch", "mean", "std")


def _state_shapes(rssm) -> dict[str, tuple[int, ...]]:
    s = (rssm.stoch, rssm.classes) if rssm.classes else (rssm.stoch,)
    shapes = {"deter": (rssm.deter,), "stoch": s}
    if rssm.classes:
        shapes["logit"] = s
    else:
        shapes["mean"] = shapes["std"] = s
    return shapes


def check_imagine_args(rssm, actor, start, horizon, grad, noise,
                       wm_grad) -> tuple[int, dict[str, torch.Tensor] | None]:
    """Validates the arguments shared by ``imagine`` and ``imagine_ref``; returns ``N``."""
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"{_OP}: `horizon` must be an int >= 1, got {horizon!r}")
    if grad not in GRAD_MODES:
        raise ValueError(f"{_OP}: `grad` must be one of {GRAD_MODES}, got {grad!r}")
    if not isinstance(wm_grad, bool):
        raise TypeError(f"{_OP}: `wm_grad` must be a bool, got {type(wm_grad).__name__}")
    if wm_grad and grad != "dynamics":
        raise ValueError(f"{_OP}: `wm_grad=True` needs grad='dynamics'")
    if actor.feat_size != rssm.feat_size:
        raise ValueError(f"{_OP}: the actor takes features of size {actor.feat_size} but the "
                         f"RSSM's features have size {rssm.feat_size}")
    if actor.action_size != rssm.action_size:
        raise ValueError(f"{_OP}: the actor outputs {actor.action_size} actions but the RSSM "
                         f"expects action_size={rssm.action_size}")
    if not isinstance(start, dict):
        raise TypeError(f"{_OP}: `start` must be an RSSM state dict, got {type(start).__name__}")
    p = next(rssm.parameters())
    n = None
    for key, shape in _state_shapes(rssm).items():
        if key not in start:
            raise ValueError(f"{_OP}: `start` is missing {key!r} (an RSSM state has "
                             f"{sorted(_state_shapes(rssm))})")
        x = start[key]
        if not isinstance(x, torch.Tensor) or x.dim() != 1 + len(shape) or \
                tuple(x.shape[1:]) != shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{_OP}: `start[{key!r}]` must have shape [N, "
                             f"{', '.join(map(str, shape))}], got {got}")
        n = x.shape[0] if n is None else n
        if x.shape[0] != n:
            raise ValueError(f"{_OP}: `start[{key!r}]` has batch {x.shape[0]}, but `start` "
                             f"['deter'] has {n}")
        if x.dtype != p.dtype or x.device != p.device:
            raise ValueError(f"{_OP}: `start[{key!r}]` is {x.dtype} on {x.device}; the "
                             f"model is {p.dtype} on {p.device}")
    if n < 1:
        raise ValueError(f"{_OP}: `start` must hold at least one state, got N={n}")
    if noise is not None:
        if not isinstance(noise, dict) or set(noise) != {"action", "stoch"}:
            raise ValueError(f"{_OP}: `noise` must be a dict with keys 'action' and 'stoch'")
        want = {"action": (n, horizon, actor.noise_size()), "stoch": (n, horizon, rssm.stoch)}
        for key, shape in want.items():
            x = noise[key]
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"{_OP}: `noise[{key!r}]` must have shape {shape}, got {got}")
            if x.dtype != p.dtype or x.device != p.device:
                raise ValueError(f"{_OP}: `noise[{key!r}]` is {x.dtype} on {x.device}; the "
                                 f"model is {p.dtype} on {p.device}")
    return n


class _ImageStep(nn.Module):
    """``rssm.img_step`` as a module forward, so ``functional_call`` can run it with
    detached world-model parameters."""

    def __init__(self, rssm) -> None:
        super().__init__()
        self.rssm = rssm

    def forward(self, state, action, noise):
        return self.rssm.img_step(state, action, noise)


def _stack_trajectory(states, actions, rssm) -> dict[str, torch.Tensor]:
    out = {k: torch.stack([s[k] for s in states], 1) for k in _state_keys(rssm)}
    out["feat"] = rssm.get_feat(out)
    out["action"] = torch.stack(actions, 1)
    return out


def imagine_ref(rssm, actor, start: dict[str, torch.Tensor], horizon: int, grad: str = "none",
                noise: dict[str, torch.Tensor] | None = None,
                wm_grad: bool = False) -> dict[str, torch.Tensor]:
    """Reference rollout: a Python loop over ``actor`` and ``rssm.img_step`` (see the
    module docstring for shapes and gradient modes)."""
    n = check_imagine_args(rssm, actor, start, horizon, grad, noise, wm_grad)
    if noise is None:
        noise = draw_imagine_noise(rssm, actor, n, horizon, like=start["deter"])
    step = _ImageStep(rssm)
    if grad == "dynamics" and not wm_grad:
        params = {k: v.detach() for k, v in step.named_parameters()}
        img_step = lambda *a: functional_call(step, params, a)  # noqa: E731
    else:
        img_step = step
    ctx = torch.no_grad() if grad == "none" else contextlib.nullcontext()
    with ctx:
        state = {k: start[k] for k in _state_keys(rssm)}
        states, actions = [state], []
        for t in range(horizon):
            dist = actor(rssm.get_feat(state))
            action = dist.sample(noise["action"][:, t])
            state = img_step(state, action, noise["stoch"][:, t])
            state = {k: state[k] for k in _state_keys(rssm)}
            states.append(state)
            actions.append(action)
        return _stack_trajectory(states, actions, rssm)


def imagine(rssm, actor, start: dict[str, torch.Tensor], horizon: int, grad: str = "none",
            noise: dict[str, torch.Tensor] | None = None,
            wm_grad: bool = False) -> dict[str, torch.Tensor]:
    """The rollout as one native call (see the module docstring); falls back to
    :func:`imagine_ref` when the modules' backend is ``'ref'`` (or ``'auto'`` without
    kernels for the device)."""
    n = check_imagine_args(rssm, actor, start, horizon, grad, noise, wm_grad)
    like = start["deter"]
    if not (use_fused(rssm.backend, like) and use_fused(actor.backend, like)):
        return imagine_ref(rssm, actor, start, horizon, grad, noise, wm_grad)
    if noise is None:
        noise = draw_imagine_noise(rssm, actor, n, horizon, like=like)
    params = rssm.spec_params()
    if not wm_grad:
        params = [p.detach() for p in params]
    ctx = torch.no_grad() if grad == "none" else contextlib.nullcontext()
    with ctx:
        _, _, a, b, action, feat = rssm_imagine(
            params, rssm.spec(), start["deter"], rssm.flatten_stoch(start["stoch"]), None,
            noise["action"], noise["stoch"], horizon, actor.spec_params(), actor.spec(),
            feat_out=True)
        flat = rssm.spec().flat_stoch
        stoch = feat[..., :flat]
        if rssm.classes:
            stoch = stoch.unflatten(-1, (rssm.stoch, rssm.classes))
        out = {"deter": feat[..., flat:], "stoch": stoch}
        # the distribution's statistics come for steps 1..H (the op's a / b)
        steps = rssm.state_from_flat(None, a, a, b)
        for k in _state_keys(rssm)[2:]:
            out[k] = torch.cat([start[k].unsqueeze(1), steps[k]], 1)
        out["feat"] = feat
        out["action"] = action
        return out
