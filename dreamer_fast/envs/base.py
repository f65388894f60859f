"""The environment interface every Dreamer environment here implements.

An environment is a ``gymnasium.Env`` whose

* observation is a dict: ``"vector"`` (float32 ``[D]``, proprioceptive state flattened)
  or ``"image"`` (uint8 ``[H, W, 3]``), never both;
* action is a float32 vector ``[A]``: for continuous control in ``[-1, 1]`` (mapped
  linearly onto the env's bounds), for discrete control a one-hot (or any scores: the
  argmax is taken);
* ``step`` returns ``(obs, reward, terminated, truncated, info)`` as in gymnasium;
  ``terminated`` is a true end (``is_terminal``: no bootstrapping), ``truncated`` a time
  limit. The trainer derives ``is_first`` (the step after a reset), ``is_last =
  terminated or truncated`` and ``is_terminal = terminated``.

Each env carries :class:`ActSpec` in ``env.act_spec`` (also available from the spec
string alone through :func:`dreamer_fast.envs.make_env`).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class ActSpec:
    size: int          # A: action vector length (number of choices if discrete)
    discrete: bool


class EnvError(ValueError):
    """A bad environment id or option; the message names it."""


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """Area-average (downscale by an integer factor) then nearest-sample to ``[size, size,
    3]`` uint8. Rendered frames are usually larger than the 64x64 the agent sees."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return np.ascontiguousarray(img[..., :3], dtype=np.uint8)
    fy, fx = max(1, h // size), max(1, w // size)
    if fy > 1 or fx > 1:
        hh, ww = (h // fy) * fy, (w // fx) * fx
        img = img[:hh, :ww, :3].astype(np.float32)
        img = img.reshape(hh // fy, fy, ww // fx, fx, 3).mean((1, 3))
        h, w = img.shape[:2]
    ys = (np.arange(size) * h / size).astype(np.int64)
    xs = (np.arange(size) * w / size).astype(np.int64)
    return np.ascontiguousarray(img[ys][:, xs, :3]).round().clip(0, 255).astype(np.uint8)


def obs_space(kind: str, dim: int = 0, image_size: int = 64) -> gym.spaces.Dict:
    if kind == "pixels":
        return gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (image_size, image_size, 3),
                                                        np.uint8)})
    return gym.spaces.Dict({"vector": gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)})


def act_space(spec: ActSpec) -> gym.spaces.Box:
    low = 0.0 if spec.discrete else -1.0
    return gym.spaces.Box(low, 1.0, (spec.size,), np.float32)
