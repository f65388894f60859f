"""The world model: encoder, RSSM, decoder, reward head and continue head.

For a replayed batch (batch-major ``[B, T, ...]``; ``action[t]`` is the action taken
*before* step ``t``), :meth:`WorldModel.forward` returns the predictions its loss
(:func:`.losses.world_model_loss`) scores::

    embed        = encoder(obs)                                   [B, T, E]
    post, prior  = rssm.observe(embed, action, is_first)          [B, T, ...]
    feat         = rssm.get_feat(post)                            [B, T, F]
    dec          = decoder(feat)                                  [B, T, *obs]
    reward       = reward_head(feat)                              [B, T, bins|1]
    cont         = cont_head(feat)  (logit)                       [B, T]
    kl_dyn       = KL(sg(post) ‖ prior),  kl_rep = KL(post ‖ sg(prior))   [B, T]
"""

from __future__ import annotations

import torch
from torch import nn

from dreamer_fast.agents.dists import TwoHot
from dreamer_fast.agents.networks import (ImageDecoder, ImageEncoder, VectorEncoder,
                                          constant_params, head)
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
                         min_std=m.min_std, std_act=m.std_act, mean_act=m.mean_act,
                         min_std_mode=m.min_std_mode,
                         cell_norm=m.cell_norm, cell_state_first=m.cell_state_first,
                         initial=m.initial, backend=backend)
        feat = self.rssm.feat_size
        if obs_key == "image":
            self.decoder = ImageDecoder(feat, obs_shape[0], m.cnn_depth, m.act)
        else:
            self.decoder = head(feat, obs_shape[0], m.units, m.layers, m.norm, m.act, backend)
        self.twohot = TwoHot(m.bins) if m.reward_head == "twohot" else None
        self.reward = head(feat, m.bins if self.twohot else 1, m.units, m.layers, m.norm,
                           m.act, backend, zero_init=m.zero_init_heads)
        self.cont = head(feat, 1, m.units, m.layers, m.norm, m.act, backend)

    def reward_mean(self, feat: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """The predicted reward ``[...]`` at ``feat [..., F]``. ``frozen``: the head's
        parameters enter the graph as constants (gradients pass to ``feat`` only)."""
        out = (constant_params(self.reward) if frozen else self.reward)(feat)
        return self.twohot.mean(out) if self.twohot else out.squeeze(-1)

    def cont_prob(self, feat: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """The continue probability ``[...]`` at ``feat``; ``frozen`` as for
        :meth:`reward_mean`."""
        return torch.sigmoid((constant_params(self.cont) if frozen else self.cont)(feat)
                             .squeeze(-1))

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``data``: ``[B, T, ...]`` tensors -> the predictions of the module docstring,
        plus ``post`` and ``prior`` (RSSM states ``[B, T, ...]``) and ``feat``."""
        embed = self.encoder(data[self.obs_key])
        # Noise drawn here, in a fixed order: the fused and reference backends then see the
        # same samples for the same seed (each may draw internally in its own order).
        B, T = embed.shape[:2]
        noise = (self.rssm.draw_noise(B, T, like=embed), self.rssm.draw_noise(B, T, like=embed))
        post, prior = self.rssm.observe(embed, data["action"], data["is_first"], noise=noise)
        feat = self.rssm.get_feat(post)
        return {"post": post, "prior": prior, "feat": feat, "dec": self.decoder(feat),
                "reward": self.reward(feat), "cont": self.cont(feat).squeeze(-1),
                "kl_dyn": self.rssm.kl(_detach(post), prior),
                "kl_rep": self.rssm.kl(post, _detach(prior))}


def _detach(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in state.items()}
