"""The Recurrent State-Space Model of Dreamer V1/V2/V3 on the fused ops.

State: a dict of tensors with batch shape ``[B]`` (one step) or ``[B, T]`` (sequences,
**batch-major**, as in dreamerv3 and dreamerv3-torch):

* ``deter  [..., D]`` the recurrent (deterministic) state
* ``stoch  [..., S, K]`` one-hot samples (categorical latents, ``classes=K``) or
  ``[..., S]`` Gaussian samples (``classes=None``)
* ``logit  [..., S, K]`` (categorical) or ``mean``/``std`` ``[..., S]`` (Gaussian)

Transitions:

* ``img_step(state, action)`` (prior): cell input ``[stoch, action]`` -> deter' ->
  ``img_layers`` dense layers -> stats -> sample.
  - ``cell='gru'`` (V1) / ``'ln_gru'`` (V2): input layer ``Dense([stoch, action] -> hidden)``
    then the cell ``(hidden, deter) -> deter'``.
  - ``cell='block_gru'`` (V3): the block GRU consumes ``deter, stoch, action`` directly.
* ``obs_step(state, action, embed, is_first)`` (posterior): resets ``state`` and
  ``action`` to zeros where ``is_first``, runs ``img_step`` for the prior, then
  ``[deter', embed]`` -> ``obs_layers`` dense layers -> stats -> sample.

With the fused backend (``backend='fused'``, or ``'auto'`` where kernels exist) every
transition method is one native call with one fused backward: ``observe`` / ``obs_step``
run ``rssm_observe`` over the whole sequence, ``img_step`` / ``imagine_with_action`` run
``rssm_imagine`` (dreamer_fast/ops/rssm_fused.py). ``backend='ref'`` composes the
``*_ref`` ops step by step; both give the same numbers for the same parameters and noise.

Sampling takes noise as an input (uniform ``[..., S]`` for categorical, standard normal
``[..., S]`` for Gaussian), drawn with torch.rand/randn when not given, so the fused and
reference backends produce identical trajectories for the same noise.
"""

from __future__ import annotations

import torch
from torch import nn

from dreamer_fast.ops._dispatch import check_backend, use_fused
from dreamer_fast.nn.cells import BlockGRUCell, GRUCell, LNGRUCell
from dreamer_fast.nn.dense import MLP, Dense
from dreamer_fast.ops import (categorical_sample, categorical_sample_ref, gaussian_sample,
                              gaussian_sample_ref)
from dreamer_fast.ops.rssm import rssm_imagine, rssm_observe

CELLS = ("gru", "ln_gru", "block_gru")
State = dict[str, torch.Tensor]


class RSSM(nn.Module):
    def __init__(self, *, stoch: int, deter: int, hidden: int, action_size: int,
                 embed_size: int, classes: int | None = None, cell: str = "ln_gru",
                 blocks: int = 8, dynlayers: int = 1, img_layers: int = 1, obs_layers: int = 1,
                 norm: str = "layer", act: str = "silu", unimix: float = 0.01,
                 min_std: float = 0.1, eps: float | None = None, device=None, dtype=None,
                 backend: str = "auto") -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"RSSM: `cell` must be one of {CELLS}, got {cell!r}")
        if classes is not None and classes < 1:
            raise ValueError(f"RSSM: `classes` must be None (Gaussian) or >= 1, got {classes}")
        if cell == "block_gru" and deter % blocks:
            raise ValueError(f"RSSM: `blocks`={blocks} must divide `deter`={deter}")
        if not 0.0 <= unimix < 1.0:
            raise ValueError(f"RSSM: `unimix` must be in [0, 1), got {unimix}")
        if min_std < 0:
            raise ValueError(f"RSSM: `min_std` must be >= 0, got {min_std}")
        self.stoch, self.deter, self.classes = stoch, deter, classes
        self.action_size, self.embed_size = action_size, embed_size
        self.cell_type, self.unimix, self.min_std = cell, float(unimix), float(min_std)
        self.backend = check_backend(backend)
        eps = (1e-4 if norm == "rms" else 1e-3) if eps is None else eps
        kw = dict(device=device, dtype=dtype, backend=backend)
        flat_stoch = stoch * (classes or 1)
        stats = stoch * classes if classes else 2 * stoch
        if cell == "block_gru":
            self.img_in = None
            self.cell = BlockGRUCell(deter, flat_stoch, action_size, hidden, blocks, dynlayers,
                                     act=act, eps=eps, **kw)
        else:
            self.img_in = Dense(flat_stoch + action_size, hidden, norm, act, eps=eps, **kw)
            cell_cls = GRUCell if cell == "gru" else LNGRUCell
            self.cell = cell_cls(hidden, deter, **kw)
        self.img_out = MLP(deter, hidden, img_layers, stats, norm, act, eps, **kw)
        self.obs_out = MLP(deter + embed_size, hidden, obs_layers, stats, norm, act, eps, **kw)

    # ---- state helpers -------------------------------------------------------------

    @property
    def feat_size(self) -> int:
        return self.stoch * (self.classes or 1) + self.deter

    def initial(self, batch: int) -> State:
        """The zero state for ``batch`` sequences."""
        p = next(self.parameters())
        z = lambda *s: torch.zeros(batch, *s, device=p.device, dtype=p.dtype)  # noqa: E731
        if self.classes:
            return {"deter": z(self.deter), "stoch": z(self.stoch, self.classes),
                    "logit": z(self.stoch, self.classes)}
        return {"deter": z(self.deter), "stoch": z(self.stoch), "mean": z(self.stoch),
                "std": z(self.stoch) + 1.0}

    def get_feat(self, state: State) -> torch.Tensor:
        """``cat([stoch.flatten(), deter], -1)``: ``[..., S*K + D]``."""
        stoch = state["stoch"]
        if self.classes:
            stoch = stoch.reshape(*stoch.shape[:-2], self.stoch * self.classes)
        return torch.cat([stoch, state["deter"]], -1)

    def draw_noise(self, *batch: int, like: torch.Tensor) -> torch.Tensor:
        """Noise for one sampling step per batch element: uniform [0, 1) (categorical) or
        standard normal (Gaussian), ``[*batch, S]``."""
        shape = (*batch, self.stoch)
        if self.classes:
            return torch.rand(shape, device=like.device, dtype=like.dtype)
        return torch.randn(shape, device=like.device, dtype=like.dtype)

    def _flat(self, stoch: torch.Tensor) -> torch.Tensor:
        """``[..., S, K]`` one-hot latents -> ``[..., S*K]`` (Gaussian: unchanged)."""
        if self.classes:
            return stoch.reshape(*stoch.shape[:-2], self.stoch * self.classes)
        return stoch

    def _unflat(self, deter, stoch, a, b) -> State:
        """A state dict from the fused ops' flat outputs."""
        if self.classes:
            shape = (*stoch.shape[:-1], self.stoch, self.classes)
            return {"deter": deter, "stoch": stoch.reshape(shape), "logit": a.reshape(shape)}
        return {"deter": deter, "stoch": stoch, "mean": a, "std": b}

    def _fused_observe(self, embed, action, is_first, state, noise) -> tuple[State, State]:
        keep = (~is_first.bool()).to(embed.dtype)
        deter, ps, pa, pb, qs, qa, qb = rssm_observe(
            self, embed, action, keep, state["deter"], self._flat(state["stoch"]), noise[0],
            noise[1])
        return self._unflat(deter, ps, pa, pb), self._unflat(deter, qs, qa, qb)

    def _fused_imagine(self, state, action, noise) -> State:
        deter, stoch, a, b, _, _ = rssm_imagine(self, None, state["deter"],
                                             self._flat(state["stoch"]), action, None, noise,
                                             action.shape[1])
        return self._unflat(deter, stoch, a, b)

    # ---- transitions -----------------------------------------------------------------

    def _stats_to_state(self, stats: torch.Tensor, deter: torch.Tensor,
                        noise: torch.Tensor | None) -> State:
        fused = use_fused(self.backend, stats)
        drawn_here = noise is None
        if drawn_here:
            noise = self.draw_noise(*stats.shape[:-1], like=stats)
        if self.classes:
            logit = stats.reshape(*stats.shape[:-1], self.stoch, self.classes)
            fn = categorical_sample if fused else categorical_sample_ref
            # torch.rand is in [0, 1) by construction: skip the range check (a device
            # sync on CUDA) for noise drawn here; check what the caller passed.
            sample, _ = fn(logit, noise, self.unimix, check_range=not drawn_here)
            return {"deter": deter, "stoch": sample, "logit": logit}
        fn = gaussian_sample if fused else gaussian_sample_ref
        sample, mean, std = fn(stats, noise, self.min_std)
        return {"deter": deter, "stoch": sample, "mean": mean, "std": std}

    def img_step(self, state: State, action: torch.Tensor,
                 noise: torch.Tensor | None = None) -> State:
        """Prior step: ``state`` (batch ``[B]``), ``action [B, A]`` -> next prior state."""
        if use_fused(self.backend, action):
            noise = self.draw_noise(action.shape[0], like=action) if noise is None else noise
            out = self._fused_imagine(state, action[:, None], noise[:, None])
            return {k: v[:, 0] for k, v in out.items()}
        stoch = state["stoch"]
        if self.classes:
            stoch = stoch.reshape(*stoch.shape[:-2], self.stoch * self.classes)
        if self.cell_type == "block_gru":
            deter = self.cell(state["deter"], stoch, action)
        else:
            x = self.img_in(torch.cat([stoch, action], -1))
            deter = self.cell(x, state["deter"])
        return self._stats_to_state(self.img_out(deter), deter, noise)

    def obs_step(self, state: State, action: torch.Tensor, embed: torch.Tensor,
                 is_first: torch.Tensor,
                 noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[State, State]:
        """Posterior step. Resets ``state``/``action`` where ``is_first [B]`` (bool), then
        returns ``(post, prior)``. ``noise = (prior_noise, post_noise)``, each ``[B, S]``."""
        if use_fused(self.backend, action):
            B = action.shape[0]
            if noise is None:
                noise = (self.draw_noise(B, like=action), self.draw_noise(B, like=action))
            post, prior = self._fused_observe(embed[:, None], action[:, None],
                                              is_first[:, None], state,
                                              (noise[0][:, None], noise[1][:, None]))
            return ({k: v[:, 0] for k, v in post.items()},
                    {k: v[:, 0] for k, v in prior.items()})
        keep = (~is_first.bool()).to(action.dtype)
        # Blend towards initial() without allocating it: every initial entry is zero except
        # a Gaussian std of one.
        state = {k: _reset(v, keep, 1.0 if k == "std" else 0.0) for k, v in state.items()}
        action = action * keep.unsqueeze(-1)
        prior_noise, post_noise = noise if noise is not None else (None, None)
        prior = self.img_step(state, action, prior_noise)
        stats = self.obs_out(torch.cat([prior["deter"], embed], -1))
        return self._stats_to_state(stats, prior["deter"], post_noise), prior

    def observe(self, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor,
                state: State | None = None,
                noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[State, State]:
        """Posterior and prior over a sequence, batch-major: ``embed [B, T, E]``,
        ``action [B, T, A]`` (the action *before* each step), ``is_first [B, T]``,
        ``noise = (prior [B, T, S], post [B, T, S])``. Returns ``(post, prior)`` with
        ``[B, T, ...]`` tensors."""
        B, T = action.shape[:2]
        state = self.initial(B) if state is None else state
        if use_fused(self.backend, action):
            if noise is None:
                noise = (self.draw_noise(B, T, like=action), self.draw_noise(B, T, like=action))
            return self._fused_observe(embed, action, is_first, state, noise)
        posts, priors = [], []
        for t in range(T):
            step_noise = None if noise is None else (noise[0][:, t], noise[1][:, t])
            state, prior = self.obs_step(state, action[:, t], embed[:, t], is_first[:, t],
                                         step_noise)
            posts.append(state)
            priors.append(prior)
        return _stack(posts), _stack(priors)

    def imagine_with_action(self, action: torch.Tensor, state: State,
                            noise: torch.Tensor | None = None) -> State:
        """Prior rollout from ``state`` (batch ``[B]``) for ``action [B, T, A]``; ``noise
        [B, T, S]``. Returns ``[B, T, ...]`` states (the step after each action)."""
        if use_fused(self.backend, action):
            if noise is None:
                noise = self.draw_noise(*action.shape[:2], like=action)
            return self._fused_imagine(state, action, noise)
        priors = []
        for t in range(action.shape[1]):
            state = self.img_step(state, action[:, t], None if noise is None else noise[:, t])
            priors.append(state)
        return _stack(priors)

    # ---- losses ----------------------------------------------------------------------

    def kl(self, lhs: State, rhs: State) -> torch.Tensor:
        """KL(lhs || rhs) summed over the latent dims: ``[...]``."""
        if self.classes:
            lp, rp = _unimix_log_probs(lhs["logit"], self.unimix), _unimix_log_probs(
                rhs["logit"], self.unimix)
            return (lp.exp() * (lp - rp)).sum((-2, -1))
        m1, s1, m2, s2 = lhs["mean"], lhs["std"], rhs["mean"], rhs["std"]
        return (torch.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5).sum(-1)

    def kl_loss(self, post: State, prior: State, free: float = 1.0, dyn_scale: float = 0.5,
                rep_scale: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """DreamerV3: ``dyn = max(free, KL(sg(post) || prior))``, ``rep = max(free,
        KL(post || sg(prior)))``; returns ``(dyn_scale·dyn + rep_scale·rep, dyn, rep)``
        per element ``[...]``."""
        dyn = self.kl(_detach(post), prior)
        rep = self.kl(post, _detach(prior))
        dyn, rep = dyn.clamp(min=free), rep.clamp(min=free)
        return dyn_scale * dyn + rep_scale * rep, dyn, rep

    def kl_balance_loss(self, post: State, prior: State, free: float = 1.0,
                        balance: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
        """DreamerV2 KL balancing: ``balance·max(free, KL(sg(post)||prior)) + (1 −
        balance)·max(free, KL(post||sg(prior)))``; returns ``(loss, KL(post || prior))``.
        ``balance=0.5`` with ``free=3`` is DreamerV1's free-nats KL."""
        dyn = self.kl(_detach(post), prior).clamp(min=free)
        rep = self.kl(post, _detach(prior)).clamp(min=free)
        with torch.no_grad():
            value = self.kl(post, prior)
        return balance * dyn + (1 - balance) * rep, value


def _unimix_log_probs(logit: torch.Tensor, unimix: float) -> torch.Tensor:
    probs = torch.softmax(logit, -1)
    if unimix:
        probs = (1 - unimix) * probs + unimix / logit.shape[-1]
    return torch.log(probs)


def _rpad(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.reshape(*x.shape, *([1] * (like.dim() - x.dim())))


def _reset(v: torch.Tensor, keep: torch.Tensor, initial: float) -> torch.Tensor:
    """``v`` where ``keep`` is 1, the constant ``initial`` where it is 0."""
    keep = _rpad(keep, v)
    return v * keep if initial == 0.0 else v * keep + initial * (1 - keep)


def _detach(state: State) -> State:
    return {k: v.detach() for k, v in state.items()}


def _stack(states: list[State]) -> State:
    return {k: torch.stack([s[k] for s in states], 1) for k in states[0]}
