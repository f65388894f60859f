"""The Dreamer agent: world model + actor-critic, their optimisers, acting and one
learner update.

:meth:`Agent.update` on a replayed batch ``[B, T, ...]``:

1. world model: predictions (:meth:`.world_model.WorldModel.forward`), loss
   (:func:`.losses.world_model_loss`), one Adam step (gradient norm clipped);
2. behaviour: the posteriors, detached and flattened to ``N = B·T`` start states, seed an
   ``H``-step imagination; predictions (:meth:`.behavior.ActorCritic.predict`), actor and
   critic losses (:func:`.losses.actor_loss`, :func:`.losses.critic_loss`), one Adam step
   each (the actor's gradients are taken w.r.t. the actor's parameters only, so a
   dynamics-gradient actor loss never moves the world model or the critic);
3. the slow critic follows the critic.

:meth:`Agent.act` runs the posterior step on the newest observation of each
environment and samples (or, for evaluation, takes the mode of) the policy.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.profiler import record_function

from dreamer_fast.agents import losses
from dreamer_fast.agents.behavior import ActorCritic
from dreamer_fast.agents.world_model import WorldModel


def stage(name: str):
    """A named range of the update for ``torch.profiler`` (``benchmarks/profile_learner.py``
    reports each stage's share); costs about a microsecond when no profiler runs."""
    return record_function(name)


def _adam(params, lr: float, eps: float) -> torch.optim.Adam:
    # fused: one multi-tensor kernel per step instead of a dozen ops per parameter (the
    # for-loop form costs ~5x more on the debug size's many small tensors, CPU and CUDA)
    return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)


def nonfinite_terms(metrics: dict, prefix) -> list[str]:
    """The names (starting with ``prefix``) of the non-finite scalars in ``metrics``; one
    host read for all of them."""
    names = [k for k, v in metrics.items() if k.startswith(prefix) and torch.is_tensor(v)]
    if not names:
        return []
    ok = torch.stack([torch.isfinite(metrics[k].detach().float()).all() for k in names])
    if bool(ok.all()):
        return []
    return [k for k, good in zip(names, ok.tolist()) if not good]


class Agent(nn.Module):
    def __init__(self, cfg, obs_key: str, obs_shape: tuple[int, ...], action_size: int,
                 discrete: bool, device: torch.device) -> None:
        super().__init__()
        self.cfg, self.obs_key, self.discrete = cfg, obs_key, discrete
        self.action_size = action_size
        backend = cfg.backend
        self.wm = WorldModel(cfg, obs_key, obs_shape, action_size, backend)
        self.ac = ActorCritic(cfg, self.wm.rssm.feat_size, action_size, discrete, backend)
        self.to(device)
        self.device = device
        m, b = cfg.model, cfg.behavior
        self.wm_opt = _adam(self.wm.parameters(), m.lr, m.eps)
        self.actor_opt = _adam(self.ac.actor.parameters(), b.actor_lr, b.eps)
        self.critic_opt = _adam(self.ac.critic.parameters(), b.critic_lr, b.eps)
        self.skipped: list[str] = []  # non-finite terms of the last update
        # data-parallel runs (.distributed): averages gradients and loss terms over the
        # ranks after each backward; None in a single process
        self.grad_sync = None

    def set_grad_sync(self, sync) -> None:
        """Average gradients, loss terms and the return percentiles over the ranks of
        ``sync`` (a :class:`.distributed.GradSync`; None: a single process)."""
        self.grad_sync = sync
        self.ac.sync = sync

    # ---- acting ------------------------------------------------------------------------

    def initial_state(self, n: int) -> tuple[dict, torch.Tensor]:
        # acting keeps no graph (a learned initial state would hold one to its W)
        latent = {k: v.detach() for k, v in self.wm.rssm.initial(n).items()}
        return latent, torch.zeros(n, self.action_size, device=self.device)

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], is_first: np.ndarray, state, explore: bool = True):
        """``obs[key] [N, ...]``, ``is_first [N]`` -> ``(action [N, A] numpy, state)``."""
        latent, prev_action = state
        x = torch.as_tensor(obs[self.obs_key], device=self.device)
        if x.dtype != torch.uint8:
            x = x.float()
        first = torch.as_tensor(is_first, device=self.device, dtype=torch.bool)
        embed = self.wm.encoder(x)
        latent, _ = self.wm.rssm.obs_step(latent, prev_action, embed, first)
        dist = self.ac.actor(self.wm.rssm.get_feat(latent))
        action = dist.sample() if explore else dist.mode()
        return action.cpu().numpy(), (latent, action)

    def random_action(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.discrete:
            return np.eye(self.action_size, dtype=np.float32)[rng.integers(0, self.action_size,
                                                                           n)]
        return rng.uniform(-1.0, 1.0, (n, self.action_size)).astype(np.float32)

    # ---- learning ----------------------------------------------------------------------

    def to_torch(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in batch.items():
            t = torch.as_tensor(v, device=self.device)
            if t.dtype == torch.float64:
                t = t.float()
            out[k] = t
        return out

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """One learner update (see the module docstring); returns scalar metrics.

        A non-finite loss term or gradient norm skips that optimiser's step (world model,
        or actor and critic together); the names of the non-finite terms of the last
        update are in ``self.skipped``."""
        t0 = time.perf_counter()
        self.skipped = []
        data = self.to_torch(batch)
        metrics, post = self.train_world_model(data)
        start = {k: v.detach().reshape(-1, *v.shape[2:]) for k, v in post.items()}
        metrics.update(self.train_behavior(start))
        out = {k: float(v.detach() if torch.is_tensor(v) else v) for k, v in metrics.items()}
        out["train/update_s"] = time.perf_counter() - t0
        return out

    def train_world_model(self, data: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """One world-model step on ``data [B, T, ...]``: ``(metrics, posterior states)``."""
        self.wm_opt.zero_grad(set_to_none=True)
        with stage("wm.forward"):
            preds = self.wm(data)
        with stage("wm.loss"):
            loss, metrics = losses.world_model_loss(preds, data, self.cfg, self.obs_key)
        with stage("wm.backward"):
            loss.backward()
        if self.grad_sync is not None:  # before clipping: every rank clips the same mean
            self.grad_sync.reduce(self.wm.parameters(), metrics, "wm/")
        with stage("wm.clip+check"):
            metrics["wm/grad_norm"] = nn.utils.clip_grad_norm_(self.wm.parameters(),
                                                                self.cfg.model.grad_clip)
            bad = nonfinite_terms(metrics, "wm/")
        if bad:  # skip the step: parameters and optimiser state stay as they were
            self.wm_opt.zero_grad(set_to_none=True)
            self.skipped.extend(bad)
        else:
            with stage("wm.adam"):
                self.wm_opt.step()
        return metrics, preds["post"]

    def train_behavior(self, start: dict[str, torch.Tensor]) -> dict:
        """One actor step and one critic step on an imagination from ``start`` (``[N, ...]``
        detached states); the slow critic follows. Returns the metrics."""
        b, ac = self.cfg.behavior, self.ac
        buffers = {k: v.clone() for k, v in ac.named_buffers()}  # return-norm EMAs, ...
        with stage("ac.imagine"):
            traj = ac.imagine(self.wm, start)
        with stage("ac.predict"):
            p = ac.predict(self.wm, traj)
        with stage("ac.losses"):
            ret, value = p["return"], p["value"]
            weight = losses.trajectory_weight(p["cont"])
            scale = ac.return_scale(ret)
            actor_loss, metrics = losses.actor_loss(p["policy"], p["taken"], ret,
                                                    value[:, :-1], weight, scale,
                                                    grad=ac.actor_grad, entropy=b.entropy)
            critic_loss, critic_metrics = losses.critic_loss(
                p["critic"][:, :-1], ret, weight, twohot=ac.twohot, slow=p["slow"],
                slow_reg=b.slow_reg, symlog_target=b.critic == "symlog_mse")
        metrics.update(critic_metrics)
        metrics.update({k: v.detach() for k, v in {
            "imag/return": ret.mean(), "imag/reward": p["reward"].mean(),
            "imag/return_scale": scale, "imag/value": value.mean()}.items()})
        actor_params = list(ac.actor.parameters())
        critic_params = list(ac.critic.parameters())
        self.actor_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        # `inputs=`: accumulate only into the actor's parameters (a dynamics-gradient
        # actor loss also reaches the world model, reward head and critic).
        with stage("ac.actor_backward"):
            actor_loss.backward(inputs=actor_params)
        with stage("ac.critic_backward"):
            critic_loss.backward(inputs=critic_params)
        if self.grad_sync is not None:
            self.grad_sync.reduce(actor_params + critic_params, metrics,
                                  ("actor/", "critic/", "imag/"))
        with stage("ac.clip+check"):
            metrics["actor/grad_norm"] = nn.utils.clip_grad_norm_(actor_params, b.grad_clip)
            metrics["critic/grad_norm"] = nn.utils.clip_grad_norm_(critic_params, b.grad_clip)
            bad = nonfinite_terms(metrics, ("actor/", "critic/", "imag/"))
        if bad:  # skip both steps; undo the buffer updates (return-norm EMAs)
            self.actor_opt.zero_grad(set_to_none=True)
            self.critic_opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                for k, v in ac.named_buffers():
                    v.copy_(buffers[k])
            self.skipped.extend(bad)
            return metrics
        with stage("ac.adam"):
            self.actor_opt.step()
            self.critic_opt.step()
            ac.update_slow_critic()
        return metrics

    # ---- state -------------------------------------------------------------------------

    def full_state_dict(self) -> dict:
        return {"model": self.state_dict(), "wm_opt": self.wm_opt.state_dict(),
                "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict()}

    def load_full_state_dict(self, state: dict) -> None:
        self.load_state_dict(state["model"])
        self.wm_opt.load_state_dict(state["wm_opt"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
