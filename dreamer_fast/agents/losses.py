"""The learning objectives, as functions of the models' predictions.

World model, on a replayed batch ``[B, T, ...]`` (predictions from
:meth:`.world_model.WorldModel.forward`)::

    L = mean_{b,t}( L_dec + s_r·L_reward + s_c·L_cont + s_kl·L_kl )

* ``L_dec``: vector obs ``Σ_d (dec_d − y_d)²`` with ``y = symlog(x)`` (``symlog_mse``,
  V3) or ``x``; images ``Σ_pixels (dec − (x/255 − 0.5))²``.
* ``L_reward``: two-hot symlog cross-entropy (V3) or ``(r̂ − r)²/2`` (V1/V2).
* ``L_cont``: ``BCE(cont_logit, 1 − is_terminal)``.
* ``L_kl`` with ``dyn = max(free, KL(sg(post)‖prior))``, ``rep = max(free,
  KL(post‖sg(prior)))``: ``free_bits`` (V3) ``s_dyn·dyn + s_rep·rep``; ``balance``
  (V1/V2) ``α·dyn + (1 − α)·rep`` (V1: α = 0.5, free = 3 nats).

Actor and critic, on an imagined trajectory of ``N`` rollouts over ``H`` steps
(predictions from :meth:`.behavior.ActorCritic.predict`; ``R [N, H]`` the λ-returns,
``v [N, H+1]`` the values they bootstrap from, ``w [N, H]`` from :func:`trajectory_weight`,
``S`` the return scale)::

    actor:  mean_{n,t} w_t · (−objective_t − η·H[π(·|feat_t)])
            dynamics:   objective_t = R_t / S      (differentiated through the dynamics)
            reinforce:  objective_t = log π(a_t|feat_t) · sg((R_t − v_t) / S)
    critic: mean_{n,t} w_t · ℓ(critic(sg(feat_t)), sg(R_t))
            ℓ = (v − R)²/2 (``mse``), (out − symlog R)²/2 with v = symexp(out)
            (``symlog_mse``), or two-hot symlog cross-entropy + slow_reg × the
            cross-entropy towards the slow critic's prediction (V3)
"""

from __future__ import annotations

import torch

from dreamer_fast.agents.dists import TwoHot, bernoulli_loss, symlog
from dreamer_fast.agents.networks import image_target, mse


def world_model_loss(preds: dict[str, torch.Tensor], data: dict[str, torch.Tensor], cfg,
                     obs_key: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(L, metrics)``. ``preds``: ``dec`` (decoder output, shaped like the observation),
    ``reward`` ``[B, T, bins|1]``, ``cont`` (logit) ``[B, T]``, ``kl_dyn`` =
    ``KL(sg(post)‖prior)`` and ``kl_rep`` = ``KL(post‖sg(prior))`` ``[B, T]``; ``data``:
    the batch, ``data[obs_key]`` the observation."""
    m = cfg.model
    obs = data[obs_key]
    if obs_key == "image":
        dec = mse(preds["dec"], image_target(obs), 3)
    else:
        target = symlog(obs) if m.decoder == "symlog_mse" else obs
        dec = mse(preds["dec"], target, 1)
    if m.reward_head == "twohot":
        rew = TwoHot(m.bins).loss(preds["reward"], data["reward"])
    else:
        rew = 0.5 * (preds["reward"].squeeze(-1) - data["reward"]) ** 2
    cont = bernoulli_loss(preds["cont"], 1.0 - data["is_terminal"].float())
    dyn = preds["kl_dyn"].clamp(min=m.kl_free)
    rep = preds["kl_rep"].clamp(min=m.kl_free)
    if m.kl == "free_bits":
        kl, kl_value = m.kl_dyn * dyn + m.kl_rep * rep, dyn
    else:
        kl = m.kl_balance * dyn + (1 - m.kl_balance) * rep
        kl_value = preds["kl_dyn"].detach()  # KL(post‖prior), before the free nats
    kl = m.kl_scale * kl
    loss = (dec + m.reward_scale * rew + m.cont_scale * cont + kl).mean()
    metrics = {"wm/loss": loss.detach(), "wm/dec": dec.mean(), "wm/reward": rew.mean(),
               "wm/cont": cont.mean(), "wm/kl": kl_value.mean()}
    return loss, metrics


def trajectory_weight(cont: torch.Tensor) -> torch.Tensor:
    """``w_t = Π_{k=1..t} c_k`` (``w_0 = 1``) ``[N, H]`` for the continue probabilities
    ``c_1..c_H`` ``[N, H]``: no credit after a predicted episode end."""
    with torch.no_grad():
        return torch.cumprod(torch.cat([torch.ones_like(cont[:, :1]), cont[:, :-1]], 1), 1)


def actor_loss(policy, taken: torch.Tensor | None, ret: torch.Tensor, value: torch.Tensor,
               weight: torch.Tensor, scale: torch.Tensor, *, grad: str,
               entropy: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(L_actor, metrics)``. ``policy``: the action distribution at ``feat[:, :H]``;
    ``taken [N, H, A]``: the actions it drew (``reinforce`` only); ``ret [N, H]``;
    ``value [N, H]``: the REINFORCE baseline ``v_t``; ``grad``: ``'dynamics'`` or
    ``'reinforce'``; ``entropy``: ``η``."""
    if grad == "dynamics":
        objective = ret / scale
    else:
        adv = ((ret - value) / scale).detach()
        objective = policy.log_prob(taken) * adv
    ent = policy.entropy()
    loss = (weight * (-objective - entropy * ent)).mean()
    return loss, {"actor/loss": loss.detach(), "actor/entropy": ent.mean().detach()}


def critic_loss(out: torch.Tensor, ret: torch.Tensor, weight: torch.Tensor, *,
                twohot: TwoHot | None, slow: torch.Tensor | None = None,
                slow_reg: float = 0.0, symlog_target: bool = False,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(L_critic, metrics)``. ``out [N, H, bins|1]``: the critic's outputs at
    ``sg(feat[:, :H])``; ``ret [N, H]``: its target; ``slow [N, H]``: the slow critic's
    prediction there (regularised towards with ``slow_reg``; two-hot only);
    ``symlog_target``: the single output predicts ``symlog(R)`` (``symlog_mse`` critic,
    whose value is ``symexp(out)``), ``ℓ = (out − symlog(R))²/2``."""
    target = ret.detach()
    if twohot is not None:
        loss = twohot.loss(out, target)
        if slow is not None:
            loss = loss + slow_reg * twohot.loss(out, slow)
    elif symlog_target:
        loss = 0.5 * (out.squeeze(-1) - symlog(target)) ** 2
    else:
        loss = 0.5 * (out.squeeze(-1) - target) ** 2
    loss = (weight * loss).mean()
    return loss, {"critic/loss": loss.detach()}
