"""The world model: encoder, RSSM, decoder, reward head and continue head.

For a replayed batch (batch-major ``[B, T, ...]``; ``action[t]`` is the action taken
*before* step ``t``)::

    embed        = encoder(obs)                                   [B, T, E]
    post, prior  = rssm.observe(embed, action, is_first)          [B, T, ...]
    feat         = rssm.get_feat(post)                            [B, T, F]
    L = mean_{b,t}( L_dec + s_r·L_reward + s_c·L_cont + L_kl )

* ``L_dec``: vector obs: ``Σ_d (dec(feat)_d − y_d)²`` with ``y = symlog(x)`` (V3) or
  ``x`` (V1/V2); images: ``Σ_pixels (dec(feat) − (x/255 − 0.5))²``.
* ``L_reward``: two-hot symlog cross-entropy (V3) or ``(r̂ − r)²/2`` (V1/V2).
* ``L_cont``: ``BCE(cont_logit, 1 − is_terminal)``.
* ``L_kl``: V3 ``kl_scale·(dyn·max(free, KL(sg(post)‖prior)) + rep·max(free,
  KL(post‖sg(prior))))``; V2/V1 the balanced form ``kl_scale·(α·max(free, KL(sg(post)‖prior))
  + (1 − α)·max(free, KL(post‖sg(prior))))`` (V1: α = 0.5, free = 3 nats).
"""

from __future__ import annotations

import torch
from torch import nn

from dreamer_fast.agents.dists import TwoHot, bernoulli_loss, symlog
from dreamer_fast.agents.networks import (ImageDecoder, ImageEncoder, VectorEncoder, head,
                                          image_target, mse)
from dreamer_fast.nn import RSSM


class WorldModel(nn.Module):
    def __init__(self, cfg, obs_key: str, obs_shape: tuple[int, ...], action_size: int,
                 backend: str) -> None:
        super().__init__()
        m = cfg.model
        self.cfg, self.obs_key = m, obs_key
        if obs_key == "image":
            self.encoder = ImageEncoder(obs_shape[0], m.cnn_depth, m.act)
        else:
            self.encoder = VectorEncoder(obs_shape[0], m.units, m.layers, m.norm, m.act,
                                         m.symlog_inputs, backend)
        self.rssm = RSSM(stoch=m.stoch, deter=m.deter, hidden=m.hidden,
                         action_size=action_size, embed_size=self.encoder.out_features,
                         classes=m.classes or None, cell=m.cell, blocks=m.blocks,
                         dynlayers=m.dynlayers, norm=m.norm, act=m.act, unimix=m.unimix,
                         min_std=m.min_std, backend=backend)
        feat = self.rssm.feat_size
        if obs_key == "image":
            self.decoder = ImageDecoder(feat, obs_shape[0], m.cnn_depth, m.act)
        else:
            self.decoder = head(feat, obs_shape[0], m.units, m.layers, m.norm, m.act, backend)
        self.twohot = TwoHot(m.bins) if m.reward_head == "twohot" else None
        self.reward = head(feat, m.bins if self.twohot else 1, m.units, m.layers, m.norm,
                           m.act, backend, zero_init=m.zero_init_heads)
        self.cont = head(feat, 1, m.units, m.layers, m.norm, m.act, backend)

    # ---- predictions -------------------------------------------------------------------

    def reward_mean(self, feat: torch.Tensor) -> torch.Tensor:
        out = self.reward(feat)
        return self.twohot.mean(out) if self.twohot else out.squeeze(-1)

    def cont_prob(self, feat: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.cont(feat).squeeze(-1))

    # ---- loss --------------------------------------------------------------------------

    def loss(self, data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, dict]:
        """``data``: ``[B, T, ...]`` tensors. Returns ``(loss, metrics, post)``."""
        m = self.cfg
        obs = data[self.obs_key]
        embed = self.encoder(obs)
        # Noise drawn here, in a fixed order: the fused and reference backends then see the
        # same samples for the same seed (each may draw internally in its own order).
        B, T = embed.shape[:2]
        noise = (self.rssm.draw_noise(B, T, like=embed), self.rssm.draw_noise(B, T, like=embed))
        post, prior = self.rssm.observe(embed, data["action"], data["is_first"], noise=noise)
        feat = self.rssm.get_feat(post)
        if self.obs_key == "image":
            dec = mse(self.decoder(feat), image_target(obs), 3)
        else:
            target = symlog(obs) if m.decoder == "symlog_mse" else obs
            dec = mse(self.decoder(feat), target, 1)
        out = self.reward(feat)
        if self.twohot:
            rew = self.twohot.loss(out, data["reward"])
        else:
            rew = 0.5 * (out.squeeze(-1) - data["reward"]) ** 2
        cont = bernoulli_loss(self.cont(feat).squeeze(-1), 1.0 - data["is_terminal"].float())
        if m.kl == "free_bits":
            kl, dyn, rep = self.rssm.kl_loss(post, prior, m.kl_free, m.kl_dyn, m.kl_rep)
            kl_value = dyn
        else:
            kl, kl_value = self.rssm.kl_balance_loss(post, prior, m.kl_free, m.kl_balance)
        kl = m.kl_scale * kl
        loss = (dec + m.reward_scale * rew + m.cont_scale * cont + kl).mean()
        metrics = {"wm/loss": loss.detach(), "wm/dec": dec.mean(), "wm/reward": rew.mean(),
                   "wm/cont": cont.mean(), "wm/kl": kl_value.mean()}
        return loss, metrics, post
