"""Actor-critic in imagination (DreamerV1/V2/V3): the actor, the critic, the slow critic
and the return normaliser, and the predictions their losses (:mod:`.losses`) score.

From ``N = B·T`` detached posterior states, :func:`dreamer_fast.nn.imagine` rolls the
actor and the RSSM forward ``H`` steps: ``feat [N, H+1, F]`` (index 0 = start),
``action [N, H, A]`` (``action[:, t]`` leads from step ``t`` to ``t+1``). Then::

    r_t  = reward_head(feat[:, t])        c_t = σ(cont_head(feat[:, t]))     t = 1..H
    v_t  = value(feat[:, t])                                                 t = 0..H
    R    = lambda_return(r[1:], v[:-1], γ·c[1:], bootstrap=v[H], λ)          [N, H]
         i.e. R_t = r_{t+1} + γ c_{t+1} ((1 − λ) v_{t+1} + λ R_{t+1}),  R_H = v_H

``value`` is the critic (V1, V3) or the slow target critic (V2). With ``dynamics``
actor gradients (V1; V2 continuous) ``r``, ``c``, ``v`` and ``R`` stay differentiable
through the imagined dynamics; with ``reinforce`` (V2 discrete, V3) they are constants.

Return scale ``S = max(1, P95 − P5)`` with EMA (decay 0.99) percentiles of ``R`` when
``return_norm`` (V3), else 1. The slow critic follows the critic by an EMA with
fraction ``slow_fraction`` per update (V3) or a hard copy every ``1/slow_fraction``
updates (V2 target network).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dreamer_fast import ops
from dreamer_fast.agents.dists import TwoHot, symexp
from dreamer_fast.agents.networks import constant_params, head
from dreamer_fast.nn import Actor, draw_imagine_noise, imagine
from dreamer_fast.ops._dispatch import choose


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
        norm = m.norm if b.norm == "auto" else b.norm
        self.actor = Actor(feat_size, action_size, head=head_type, units=m.units,
                           layers=m.layers, norm=norm, act=m.act, min_std=b.min_std,
                           max_std=b.max_std, unimix=m.unimix, backend=backend)
        self.twohot = TwoHot(m.bins) if b.critic == "twohot" else None
        self.critic = head(feat_size, m.bins if self.twohot else 1, m.units, m.layers, norm,
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
        self.sync = None  # data-parallel: percentiles over every rank's returns

    # ---- values ------------------------------------------------------------------------

    def _mean(self, out: torch.Tensor) -> torch.Tensor:
        if self.twohot:
            return self.twohot.mean(out)
        if self.cfg.critic == "symlog_mse":
            return symexp(out.squeeze(-1))
        return out.squeeze(-1)

    def _value(self, net: nn.Module, feat: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        return self._mean((constant_params(net) if frozen else net)(feat))

    def value(self, feat: torch.Tensor) -> torch.Tensor:
        return self._value(self.critic, feat)

    def target_value(self, feat: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """The values the returns bootstrap from; ``frozen``: the critic's parameters are
        constants of the graph (the actor's dynamics gradient passes through to ``feat``)."""
        net = self.slow_critic if self.cfg.slow_critic == "target" else self.critic
        return self._value(net, feat, frozen)

    # ---- predictions -------------------------------------------------------------------

    def return_scale(self, ret: torch.Tensor) -> torch.Tensor:
        """``S`` of the module docstring for the returns ``ret``, updating the EMA."""
        b = self.cfg
        if not b.return_norm:
            return torch.ones((), device=ret.device)
        flat = ret.detach().flatten().float()
        ranks = 1 if self.sync is None else self.sync.d.world
        cap = max(1, (1 << 16) // ranks)
        if flat.numel() > cap:  # quantile of a subsample: the exact one sorts everything
            flat = flat[torch.randperm(flat.numel(), device=flat.device)[:cap]]
        if self.sync is not None:
            # every rank's returns (each subsampled with its own RNG): all ranks then take
            # the same percentiles and keep the same EMA buffers
            flat = self.sync.gather(flat)
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
        """The ``H``-step rollout from ``start`` (``[N, ...]`` states): ``feat [N, H+1, F]``,
        ``action [N, H, A]``, ``action_noise`` (the policy's standard-normal draws)."""
        grad = "dynamics" if self.actor_grad == "dynamics" else "none"
        n, horizon = start["deter"].shape[0], self.cfg.horizon
        # The noise is drawn here and kept: REINFORCE needs the unclipped sample.
        noise = draw_imagine_noise(wm.rssm, self.actor, n, horizon, like=start["deter"])
        traj = imagine(wm.rssm, self.actor, start, horizon, grad=grad, noise=noise)
        traj["action_noise"] = noise["action"]
        return traj

    def lambda_return(self, reward: torch.Tensor, cont: torch.Tensor,
                      value: torch.Tensor) -> torch.Tensor:
        """``R [N, H]`` from ``reward`` = ``r_1..r_H``, ``cont`` = ``c_1..c_H`` ``[N, H]`` and
        ``value`` = ``v_0..v_H`` ``[N, H+1]`` (module docstring)."""
        b = self.cfg
        fn = choose(self.backend, value, ops.lambda_return, ops.lambda_return_ref)
        return fn(reward, value[:, :-1], b.discount * cont, value[:, -1], b.lambda_, axis=1)

    def predict(self, wm, traj: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """For a rollout from :meth:`imagine`: ``reward``, ``cont`` ``[N, H]`` (steps
        1..H), ``value [N, H+1]``, ``return [N, H]``, ``critic`` (the critic's outputs at
        ``sg(feat)``, ``[N, H+1, bins|1]``), ``policy`` (the action distribution at
        ``feat[:, :H]``), ``taken`` (REINFORCE: the actions the policy drew) and ``slow``
        (the slow critic's values at ``sg(feat[:, :H])`` when the critic loss is
        regularised towards them, else None)."""
        b = self.cfg
        feat = traj["feat"]
        dynamics = self.actor_grad == "dynamics"
        # REINFORCE needs no gradient through rewards, continues or values: compute them
        # without a graph. One critic pass over all H+1 steps serves both the values and
        # (for the first H steps) the critic loss.
        feat_sg = feat.detach()
        # Dynamics gradients: the reward and continue heads and the critic only pass the
        # actor's gradient on to the features; run with constant parameters, their
        # backward skips the weight gradients the actor's step would drop.
        with torch.set_grad_enabled(dynamics):
            reward = wm.reward_mean(feat[:, 1:], frozen=dynamics)
            cont = wm.cont_prob(feat[:, 1:], frozen=dynamics)
        critic_out = self.critic(feat_sg)
        if dynamics:
            value = self.target_value(feat, frozen=True)
        elif b.slow_critic == "target":
            with torch.no_grad():
                value = self.target_value(feat_sg)
        else:
            value = self._mean(critic_out).detach()
        ret = self.lambda_return(reward, cont, value)
        policy = self.actor(feat[:, :-1] if dynamics else feat_sg[:, :-1])
        taken = None
        if not dynamics:
            if self.actor.head == "bounded_normal":
                # The rollout fed the dynamics clip(mean + std·ε, −1, 1); the score function
                # must be that of the unclipped sample mean + std·ε, which the Gaussian
                # really drew (the log-density of the clipped value is biased: with a
                # lagging critic it inflates the policy's std).
                taken = (policy.mean + policy.std * traj["action_noise"]).detach()
            else:
                taken = traj["action"].detach()
        slow = None
        if self.twohot and b.slow_critic == "ema" and b.slow_reg:
            with torch.no_grad():
                slow = self._value(self.slow_critic, feat_sg[:, :-1])
        return {"reward": reward, "cont": cont, "value": value, "return": ret,
                "critic": critic_out, "policy": policy, "taken": taken, "slow": slow}

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
