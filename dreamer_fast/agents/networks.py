"""Encoders, decoders and heads of the world model.

* :class:`VectorEncoder`: ``MLP([symlog](x))``, ``x [..., D]`` -> ``[..., units]``.
* :class:`ImageEncoder`: 64x64 (or any power-of-two ``size`` >= 8) uint8 images
  ``[..., H, W, 3]`` -> ``x/255 - 0.5`` -> stride-2 4x4 convolutions with depths
  ``d, 2d, 4d, ...`` until 4x4 spatial, each followed by a channel LayerNorm and the
  activation -> flattened ``[..., 16·d·2^(n-1)]``.
* :class:`ImageDecoder`: the mirror image (a linear layer to ``4x4`` features, stride-2
  transposed convolutions), predicting ``x/255 - 0.5`` ``[..., H, W, 3]``.
* :func:`head`: ``MLP(feat) -> out`` (reward, continue, critic, vector decoder), with the
  last layer optionally zero-initialised so the first predictions are exactly neutral
  (DreamerV3's reward/critic heads: two-hot logits all equal -> prediction 0).

The dense layers are :class:`dreamer_fast.nn.MLP` (fused ``linear_norm_act`` or the
reference, by ``backend``); the convolutions are plain ``torch.nn`` (no fused op).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from dreamer_fast.agents.dists import symlog
from dreamer_fast.nn import MLP


def constant_params(module: nn.Module):
    """``module`` as a function whose parameters are detached: the graph it records treats
    them as constants, so a backward through it computes the input's gradient only, not
    the parameters' (which a caller that differentiates w.r.t. other parameters would
    drop anyway: the actor's dynamics gradient through the reward head and the critic)."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    return lambda *args: functional_call(module, params, args)


def head(in_features: int, out: int, units: int, layers: int, norm: str, act: str,
         backend: str, zero_init: bool = False) -> MLP:
    net = MLP(in_features, units, layers, out, norm, act, backend=backend)
    if zero_init:
        last = net[-1]
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)
    return net


class VectorEncoder(nn.Module):
    def __init__(self, dim: int, units: int, layers: int, norm: str, act: str, symlog_in: bool,
                 backend: str) -> None:
        super().__init__()
        self.symlog_in = symlog_in
        self.net = MLP(dim, units, max(1, layers), None, norm, act, backend=backend)
        self.out_features = units

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(symlog(x) if self.symlog_in else x)


class _ChannelNorm(nn.Module):
    """LayerNorm over the channel axis of ``[N, C, H, W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _act(name: str) -> nn.Module:
    return {"silu": nn.SiLU(), "elu": nn.ELU(), "tanh": nn.Tanh(), "gelu": nn.GELU()}[name]


def _stages(size: int) -> int:
    n = int(math.log2(size // 4))
    if size < 8 or 4 * 2 ** n != size:
        raise ValueError(f"image size must be a power of two >= 8, got {size}")
    return n


class ImageEncoder(nn.Module):
    def __init__(self, size: int, depth: int, act: str) -> None:
        super().__init__()
        n = _stages(size)
        mods, ch = [], 3
        for i in range(n):
            out = depth * 2 ** i
            mods += [nn.Conv2d(ch, out, 4, 2, 1), _ChannelNorm(out), _act(act)]
            ch = out
        self.net = nn.Sequential(*mods)
        self.out_features = ch * 16

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        batch = img.shape[:-3]
        x = img.reshape(-1, *img.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0 - 0.5
        return self.net(x).reshape(*batch, self.out_features)


class ImageDecoder(nn.Module):
    def __init__(self, feat_size: int, size: int, depth: int, act: str) -> None:
        super().__init__()
        n = _stages(size)
        self.ch = depth * 2 ** (n - 1)
        self.inp = nn.Linear(feat_size, self.ch * 16)
        mods, ch = [], self.ch
        for i in reversed(range(n)):
            last = i == 0
            out = 3 if last else depth * 2 ** (i - 1)
            mods.append(nn.ConvTranspose2d(ch, out, 4, 2, 1))
            if not last:
                mods += [_ChannelNorm(out), _act(act)]
            ch = out
        self.net = nn.Sequential(*mods)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """``feat [..., F]`` -> predicted ``x/255 - 0.5`` ``[..., H, W, 3]``."""
        batch = feat.shape[:-1]
        x = self.inp(feat.reshape(-1, feat.shape[-1])).reshape(-1, self.ch, 4, 4)
        x = self.net(x).permute(0, 2, 3, 1)
        return x.reshape(*batch, *x.shape[1:])


def image_target(img: torch.Tensor) -> torch.Tensor:
    return img.float() / 255.0 - 0.5


def mse(pred: torch.Tensor, target: torch.Tensor, dims: int) -> torch.Tensor:
    """Squared error summed over the last ``dims`` axes."""
    return F.mse_loss(pred, target, reduction="none").sum(tuple(range(-dims, 0)))
