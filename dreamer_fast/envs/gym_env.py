"""gymnasium environments (``gym:<id>``) behind the interface of :mod:`.base`."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np

from dreamer_fast.envs.base import ActSpec, EnvError, act_space, obs_space, resize_image


def _make_raw(env_id: str, render: bool, time_limit: int) -> gym.Env:
    # Headless rendering: pygame (classic control) needs a dummy video driver, MuJoCo envs
    # an offscreen GL backend.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("MUJOCO_GL", "egl")
    kwargs = {"render_mode": "rgb_array"} if render else {}
    if time_limit:
        kwargs["max_episode_steps"] = time_limit
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as e:  # NameNotFound, VersionNotFound, DependencyNotInstalled, ...
        raise EnvError(f"env 'gym:{env_id}': {e}") from None


def is_image_space(space) -> bool:
    """A uint8 Box shaped ``[H, W]`` or ``[H, W, C]`` with C in 1, 3, 4 (H, W >= 8)."""
    if not isinstance(space, gym.spaces.Box) or space.dtype != np.uint8:
        return False
    shape = tuple(space.shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    return len(shape) == 3 and shape[2] in (1, 3, 4) and min(shape[:2]) >= 8


class GymEnv(gym.Env):
    """A gymnasium env with dict observations, normalised or one-hot actions and an action
    repeat (rewards summed, stopping at the end of the episode)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, env_id: str, obs: str = "auto", action_repeat: int = 1,
                 time_limit: int = 0, image_size: int = 64, seed: int | None = None,
                 render: bool = False) -> None:
        if obs not in ("auto", "proprio", "pixels"):
            raise EnvError(f"env option 'obs' must be auto, proprio or pixels, got {obs!r}")
        self._pixels = obs == "pixels"
        self._render = self._pixels or render
        self._env = _make_raw(env_id, self._render, time_limit)
        self._repeat = int(action_repeat)
        self._size = int(image_size)
        space = self._env.action_space
        if isinstance(space, gym.spaces.Discrete):
            self.act_spec = ActSpec(int(space.n), True)
        elif isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
            if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
                raise EnvError(f"env 'gym:{env_id}': unbounded action space {space}")
            self.act_spec = ActSpec(int(space.shape[0]), False)
            self._low, self._high = space.low.astype(np.float64), space.high.astype(np.float64)
        else:
            raise EnvError(f"env 'gym:{env_id}': action space {space} is not supported "
                           "(Discrete or a 1-D Box)")
        raw_obs = self._env.observation_space
        if not self._pixels and not isinstance(raw_obs, gym.spaces.Box):
            raise EnvError(f"env 'gym:{env_id}': observation space {raw_obs} is not a Box; "
                           "use obs=pixels")
        # A uint8 [H, W], [H, W, 1|3|4] Box is an image: it goes to the CNN encoder.
        self._image_obs = not self._pixels and is_image_space(raw_obs)
        if self._image_obs and obs == "proprio":
            raise EnvError(f"env 'gym:{env_id}': the observations are images ({raw_obs}); "
                           "use obs=auto or pixels (--pixels), not proprio")
        if (not self._pixels and not self._image_obs and raw_obs.dtype == np.uint8
                and len(raw_obs.shape) >= 2):
            raise EnvError(f"env 'gym:{env_id}': uint8 observations of shape "
                           f"{raw_obs.shape} are neither an image [H, W, 1|3|4] nor a "
                           "vector; wrap the env to give one of them")
        image = self._pixels or self._image_obs
        dim = int(np.prod(raw_obs.shape)) if not image else 0
        self.observation_space = obs_space("pixels" if image else "proprio", dim, self._size)
        self.action_space = act_space(self.act_spec)
        self._seed = seed

    def _obs(self, raw) -> dict:
        if self._pixels:
            return {"image": resize_image(self._env.render(), self._size)}
        if self._image_obs:
            img = np.asarray(raw, np.uint8)
            if img.ndim == 2:
                img = img[..., None]
            if img.shape[-1] == 1:
                img = np.repeat(img, 3, axis=-1)
            return {"image": resize_image(img[..., :3], self._size)}
        return {"vector": np.asarray(raw, np.float32).reshape(-1)}

    def _action(self, action: np.ndarray):
        action = np.asarray(action, np.float64).reshape(-1)
        if action.shape[0] != self.act_spec.size:
            raise ValueError(f"action must have {self.act_spec.size} entries, got "
                             f"{action.shape[0]}")
        if self.act_spec.discrete:
            return int(np.argmax(action))
        a = np.clip(action, -1.0, 1.0)
        return (self._low + (a + 1.0) * 0.5 * (self._high - self._low)).astype(np.float32)

    def reset(self, *, seed: int | None = None, options=None):
        # the construction seed seeds the first reset only, unless that one is given a
        # seed itself (an autoreset after it must not replay the first episode's start)
        if seed is None:
            seed = self._seed
        self._seed = None
        raw, info = self._env.reset(seed=seed)
        return self._obs(raw), {}

    def step(self, action):
        a = self._action(action)
        total, terminated, truncated = 0.0, False, False
        for _ in range(self._repeat):
            raw, reward, terminated, truncated, _ = self._env.step(a)
            total += float(reward)
            if terminated or truncated:
                break
        return self._obs(raw), total, bool(terminated), bool(truncated), {}

    def render(self):
        return self._env.render() if self._render else None

    def close(self):
        self._env.close()
