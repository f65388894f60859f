"""dm_control suite tasks (``dmc:<domain>-<task>``, e.g. ``dmc:cartpole-swingup``,
``dmc:walker-walk``, ``dmc:ball_in_cup-catch``) behind the interface of :mod:`.base`.

Pixels are rendered headless with MuJoCo's EGL backend (falling back to OSMesa when no
EGL library is found). Most of a default dm_control frame's cost in software GL is its
4096x4096 shadow map: shadows are switched off and the offscreen buffer is shrunk to the
image size before the first render.
"""

from __future__ import annotations

import ctypes.util
import os

import gymnasium as gym
import numpy as np

from dreamer_fast.envs.base import ActSpec, EnvError, act_space, obs_space

#: dm_control's usual camera per domain for pixel observations (quadruped uses 2).
CAMERAS = {"quadruped": 2}


def _select_gl() -> None:
    if "MUJOCO_GL" in os.environ:
        return
    if ctypes.util.find_library("EGL") is None and ctypes.util.find_library("OSMesa"):
        os.environ["MUJOCO_GL"] = "osmesa"
    else:
        os.environ["MUJOCO_GL"] = "egl"


def _load(name: str, seed: int | None):
    try:
        domain, task = name.split("-", 1)
    except ValueError:
        raise EnvError(f"env 'dmc:{name}': expected dmc:<domain>-<task>, e.g. "
                       "dmc:cartpole-swingup") from None
    _select_gl()
    try:
        from dm_control import suite
    except ImportError as e:
        raise EnvError(f"env 'dmc:{name}' needs dm_control (pip install dm_control "
                       f"mujoco==3.17.0): {e}") from None
    if (domain, task) not in suite.ALL_TASKS:
        known = ", ".join(f"{d}-{t}" for d, t in suite.ALL_TASKS[:12])
        raise EnvError(f"env 'dmc:{name}': unknown dm_control task; known tasks include "
                       f"{known}, ...")
    return suite.load(domain, task, task_kwargs={"random": seed}), domain


class DMCEnv(gym.Env):
    """A dm_control task: flattened proprio vector or ``[size, size, 3]`` pixels, actions in
    ``[-1, 1]`` mapped onto the task's bounds, action repeat with summed rewards."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, name: str, obs: str = "auto", action_repeat: int = 1,
                 time_limit: int = 0, image_size: int = 64, camera: int = -1,
                 seed: int | None = None) -> None:
        if obs not in ("auto", "proprio", "pixels"):
            raise EnvError(f"env option 'obs' must be auto, proprio or pixels, got {obs!r}")
        self._env, domain = _load(name, seed)
        self._pixels = obs == "pixels"
        self._repeat = int(action_repeat)
        self._size = int(image_size)
        self._camera = CAMERAS.get(domain, 0) if camera < 0 else camera
        # dm_control ends episodes itself (1000 control steps); time_limit shortens that.
        self._limit = int(time_limit)
        self._t = 0
        self._render_ready = False
        spec = self._env.action_spec()
        self._low, self._high = spec.minimum.astype(np.float64), spec.maximum.astype(np.float64)
        self.act_spec = ActSpec(int(spec.shape[0]), False)
        dim = sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values())
        self.observation_space = obs_space("pixels" if self._pixels else "proprio", dim,
                                           self._size)
        self.action_space = act_space(self.act_spec)

    def _frame(self) -> np.ndarray:
        physics = self._env.physics
        if not self._render_ready:
            # Must happen before the first render creates the GL context and buffers.
            physics.model.vis.quality.shadowsize = 0
            physics.model.vis.global_.offwidth = self._size
            physics.model.vis.global_.offheight = self._size
            self._render_ready = True
        try:
            return physics.render(self._size, self._size, camera_id=self._camera)
        except Exception as e:  # GL setup problems surface here, with obscure messages
            raise RuntimeError(
                f"dm_control rendering failed with MUJOCO_GL={os.environ.get('MUJOCO_GL')}: "
                f"{e}. Try MUJOCO_GL=egl or MUJOCO_GL=osmesa (apt-get install libosmesa6)."
            ) from e

    def _obs(self, ts) -> dict:
        if self._pixels:
            return {"image": np.ascontiguousarray(self._frame(), dtype=np.uint8)}
        parts = [np.asarray(v, np.float32).reshape(-1) for v in ts.observation.values()]
        return {"vector": np.concatenate(parts)}

    def reset(self, *, seed: int | None = None, options=None):
        if seed is not None:
            self._env.task.random.seed(seed)
        self._t = 0
        return self._obs(self._env.reset()), {}

    def step(self, action):
        a = np.clip(np.asarray(action, np.float64).reshape(-1), -1.0, 1.0)
        if a.shape[0] != self.act_spec.size:
            raise ValueError(f"action must have {self.act_spec.size} entries, got {a.shape[0]}")
        a = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        total, ts = 0.0, None
        for _ in range(self._repeat):
            ts = self._env.step(a)
            self._t += 1
            total += float(ts.reward or 0.0)
            if ts.last() or (self._limit and self._t >= self._limit):
                break
        terminated = bool(ts.last() and ts.discount == 0.0)
        truncated = bool(not terminated and (ts.last() or (self._limit and self._t >= self._limit)))
        return self._obs(ts), total, terminated, truncated, {}

    def render(self):
        return self._frame()

    def close(self):
        self._env.close()
