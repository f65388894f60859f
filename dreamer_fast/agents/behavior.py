"""Actor-critic learning in imagination (DreamerV1/V2/V3).

From ``N = B·T`` detached posterior states, :func:`dreamer_fast.nn.imagine` rolls the
actor and the RSSM forward ``H`` steps: ``feat [N, H+1, F]`` (index 0 = start),
``action [N, H, A]`` (``action[:, t]`` leads from step ``t`` to ``t+1``). Then::

    r_t  = reward_head(feat[:, t])        c_t = σ(cont_head(feat[:, t]))     t = 1..H
    v_t  = value(feat[:, t])                                                 t = 0..H
    R    = lambda_return(r[1:], v[:-1], γ·c[1:], bootstrap=v[H], λ)          [N, H]
         i.e. R_t = r_{t+1} + γ c_{t+1} ((1 − λ) v_{t+1} + λ R_{t+1}),  R_H = v_H
    w_t  = Π_{k=1..t} c_k    (w_0 = 1; no credit after a predicted episode end)

``value`` is the critic (V1, V3) or the slow target critic (V2).

Actor loss ``mean_{n,t} w_t · (−objective_t − η·H[π(·|feat_t)])`` with

* ``dynamics`` gradients (V1; V2 continuous): ``objective_t = R_t / S``, differentiated
  through the imagined dynamics (``imagine(grad='dynamics')``);
* ``reinforce`` (V2 discrete, V3): ``objective_t = log π(a_t|feat_t) · sg((R_t − v_t) /
  S)``; for the bounded-normal head ``a_t`` is the unclipped Gaussian sample
  ``mean_t + std_t·ε_t`` (the dynamics saw its clip to [−1, 1]).

``S = max(1, P95 − P5)`` with EMA (decay 0.99) percentiles of ``R`` when
``return_norm`` (V3), else 1.

Critic loss on ``sg(feat[:, :H])`` against ``sg(R)``: ``(v − R)²/2`` (V1/V2) or the
two-hot symlog cross-entropy plus ``slow_reg ×`` the cross-entropy towards the slow
critic's prediction (V3), weighted by ``w``. The slow critic follows the critic by an
EMA with fraction ``slow_fraction`` per update (V3) or a hard copy every
``1/slow_fraction`` updates (V2 target network).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dreamer_fast import ops
from dreamer_fast.agents.dists import TwoHot
from dreamer_fast.agents.networks import head
from dreamer_fast.nn import Actor, draw_imagine_noise, imagine
from dreamer_fast.ops._dispatch import use_fused


class ActorCritic(nn.Module):
    def __init__(self, cfg, feat_size: int, action_size: int, discrete: bool,
                 backend: str) -> None:
        super().__init__()
        b, m = cfg.behavior, cfg.model
        self.cfg, self.backend = b, backend
        if discrete:
            head_type = "categorical"
        elif b.actor_head == "auto":
            head_type = "tanh_normal" if cfg.algo == "v1" else "bounded_normal"
        else:
            head_type = b.actor_head
        grad = b.actor_grad
        if grad == "auto":
            grad = "reinforce" if discrete else "dynamics"
        self.actor_grad = grad
        self.actor = Actor(feat_size, action_size, head=head_type, units=m.units,
                           layers=m.layers, norm=m.norm, act=m.act, min_std=b.min_std,
                           max_std=b.max_std, unimix=m.unimix, backend=backend)
        self.twohot = TwoHot(m.bins) if b.critic == "twohot" else None
        self.critic = head(feat_size, m.bins if self.twohot else 1, m.units, m.layers, m.norm,
                           m.act, backend, zero_init=m.zero_init_heads)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        # EMA percentiles of the returns (V3); `ret_init` 0 until the first update.
        self.register_buffer("ret_lo", torch.zeros(()))
        self.register_buffer("ret_hi", torch.zeros(()))
        self.register_buffer("ret_init", torch.zeros(()))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        # the two percentiles as a device tensor made once (not in checkpoints): building
        # it from a list every update would be a blocking host-to-device copy
        self.register_buffer("ret_q", torch.tensor([b.return_norm_low, b.return_norm_high]),
                             persistent=False)

    # ---- values ------------------------------------------------------------------------

    def _mean(self, out: torch.Tensor) -> torch.Tensor:
        return self.twohot.mean(out) if self.twohot else out.squeeze(-1)

    def _value(self, net: nn.Module, feat: torch.Tensor) -> torch.Tensor:
        return self._mean(net(feat))

    def value(self, feat: torch.Tensor) -> torch.Tensor:
        return self._value(self.critic, feat)

    def target_value(self, feat: torch.Tensor) -> torch.Tensor:
        net = self.slow_critic if self.cfg.slow_critic == "target" else self.critic
        return self._value(net, feat)

    # ---- losses ------------------------------------------------------------------------

    def _return_scale(self, ret: torch.Tensor) -> torch.Tensor:
        b = self.cfg
        if not b.return_norm:
            return torch.ones((), device=ret.device)
        flat = ret.detach().flatten().float()
        if flat.numel() > 1 << 16:  # quantile of a subsample: the exact one sorts everything
            flat = flat[torch.randperm(flat.numel(), device=flat.device)[: 1 << 16]]
        lo, hi = torch.quantile(flat, self.ret_q)
        d = b.return_norm_decay
        # EMA, the first update taking the percentiles as they are; chosen on the device
        # (torch.where) rather than by reading `ret_init` back, which would stall the host
        # until the GPU has finished the rollout (and forbid capturing the update)
        with torch.no_grad():
            first = self.ret_init == 0
            self.ret_lo.copy_(torch.where(first, lo, self.ret_lo * d + (1 - d) * lo))
            self.ret_hi.copy_(torch.where(first, hi, self.ret_hi * d + (1 - d) * hi))
            self.ret_init.fill_(1)
        return torch.clamp(self.ret_hi - self.ret_lo, min=1.0)

    def imagine(self, wm, start: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        grad = "dynamics" if self.actor_grad == "dynamics" else "none"
        n, horizon = start["deter"].shape[0], self.cfg.horizon
        # The noise is drawn here and kept: REINFORCE needs the unclipped sample (below).
        noise = draw_imagine_noise(wm.rssm, self.actor, n, horizon, like=start["deter"])
        traj = imagine(wm.rssm, self.actor, start, horizon, grad=grad,
                                        noise=noise)
        traj["action_noise"] = noise["action"]
        return traj

    def losses(self, wm, traj: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                                   dict]:
        """``(actor_loss, critic_loss, metrics)`` for a rollout from :meth:`imagine`."""
        b = self.cfg
        feat, action = traj["feat"], traj["action"]
        dynamics = self.actor_grad == "dynamics"
        # REINFORCE needs no gradient through rewards, continues or values: compute them
        # without a graph. One critic pass over all H+1 steps serves both the values and
        # (for the first H steps) the critic loss.
        feat_sg = feat.detach()
        with torch.set_grad_enabled(dynamics):
            reward = wm.reward_mean(feat[:, 1:])                     # [N, H]
            cont = wm.cont_prob(feat[:, 1:])                         # [N, H]
        critic_out = self.critic(feat_sg)                            # [N, H+1, bins|1]
        if dynamics:
            value = self.target_value(feat)                          # [N, H+1]
        elif b.slow_critic == "target":
            with torch.no_grad():
                value = self.target_value(feat_sg)
        else:
            value = self._mean(critic_out).detach()
        pcont = b.discount * cont
        lam_fn = ops.lambda_return if use_fused(self.backend, feat) else ops.lambda_return_ref
        ret = lam_fn(reward, value[:, :-1], pcont, value[:, -1], b.lambda_, axis=1)
        with torch.no_grad():
            weight = torch.cumprod(torch.cat([torch.ones_like(cont[:, :1]), cont[:, :-1]], 1),
                                   1).detach()
        scale = self._return_scale(ret)
        dist = self.actor(feat[:, :-1] if dynamics else feat_sg[:, :-1])
        if dynamics:
            objective = ret / scale
        else:
            adv = ((ret - value[:, :-1]) / scale).detach()
            if self.actor.head == "bounded_normal":
                # The rollout fed the dynamics clip(mean + std·ε, −1, 1); the score function
                # must be that of the unclipped sample mean + std·ε, which the Gaussian
                # really drew (the log-density of the clipped value is biased: with a
                # lagging critic it inflates the policy's std).
                taken = (dist.mean + dist.std * traj["action_noise"]).detach()
            else:
                taken = action.detach()
            objective = dist.log_prob(taken) * adv
        entropy = dist.entropy()
        actor_loss = (weight * (-objective - b.entropy * entropy)).mean()

        out, target = critic_out[:, :-1], ret.detach()
        if self.twohot:
            critic_loss = self.twohot.loss(out, target)
            if b.slow_critic == "ema" and b.slow_reg:
                with torch.no_grad():
                    slow = self._value(self.slow_critic, feat_sg[:, :-1])
                critic_loss = critic_loss + b.slow_reg * self.twohot.loss(out, slow)
        else:
            critic_loss = 0.5 * (out.squeeze(-1) - target) ** 2
        critic_loss = (weight * critic_loss).mean()
        metrics = {k: v.detach() for k, v in {
            "actor/loss": actor_loss, "actor/entropy": entropy.mean(),
            "critic/loss": critic_loss, "imag/return": ret.mean(),
            "imag/reward": reward.mean(), "imag/return_scale": scale,
            "imag/value": value.mean()}.items()}
        return actor_loss, critic_loss, metrics

    @torch.no_grad()
    def update_slow_critic(self) -> None:
        b = self.cfg
        self.updates += 1
        if b.slow_critic == "ema":
            for slow, p in zip(self.slow_critic.parameters(), self.critic.parameters()):
                slow.lerp_(p, b.slow_fraction)
        elif b.slow_critic == "target":
            period = max(1, round(1.0 / b.slow_fraction)) if b.slow_fraction > 0 else 0
            if period and int(self.updates) % period == 0:
                self.slow_critic.load_state_dict(self.critic.state_dict())
