"""Environments for the trainer: ``gym:<gymnasium id>`` and ``dmc:<domain>-<task>``.

``make_env(spec, ...)`` builds one env (see :mod:`dreamer_fast.envs.base` for the
interface); ``make_vector_env(spec, n, ...)`` runs ``n`` of them through gymnasium's
vector envs (subprocesses when ``n > 1``), autoresetting on the step *after* an episode
ends (gymnasium's ``NEXT_STEP`` mode): that step returns the first observation of the
next episode with reward 0 and ignores the action, which is exactly Dreamer's
``is_first`` step.
"""

from __future__ import annotations

import functools

import gymnasium as gym

from dreamer_fast.envs.base import ActSpec, EnvError

__all__ = ["ActSpec", "EnvError", "make_env", "make_vector_env", "parse_env_id"]

PREFIXES = ("gym", "dmc")


def parse_env_id(spec: str) -> tuple[str, str]:
    """``"gym:Pendulum-v1"`` -> ``("gym", "Pendulum-v1")``; raises :class:`EnvError`."""
    if not isinstance(spec, str) or ":" not in spec:
        raise EnvError(f"env id {spec!r} must be '<suite>:<name>' with suite one of "
                       f"{list(PREFIXES)}, e.g. gym:Pendulum-v1 or dmc:cartpole-swingup")
    suite, name = spec.split(":", 1)
    if suite not in PREFIXES or not name:
        raise EnvError(f"env id {spec!r}: unknown suite {suite!r}; expected one of "
                       f"{list(PREFIXES)} (gym:Pendulum-v1, dmc:cartpole-swingup)")
    return suite, name


def make_env(spec: str, obs: str = "auto", action_repeat: int = 1, time_limit: int = 0,
             image_size: int = 64, camera: int = -1, seed: int | None = None,
             render: bool = False) -> gym.Env:
    """One environment. ``obs='auto'`` means proprio (vectors) for both suites;
    ``render=True`` lets proprio gym envs render frames for videos."""
    suite, name = parse_env_id(spec)
    if suite == "gym":
        from dreamer_fast.envs.gym_env import GymEnv
        return GymEnv(name, obs, action_repeat, time_limit, image_size, seed, render=render)
    from dreamer_fast.envs.dmc_env import DMCEnv
    return DMCEnv(name, obs, action_repeat, time_limit, image_size, camera, seed)


def make_vector_env(spec: str, num: int, seed: int, **kwargs) -> gym.vector.VectorEnv:
    """``num`` copies of ``make_env(spec, **kwargs)`` seeded ``seed, seed+1, ...``; in
    subprocesses when ``num > 1``. Raises :class:`EnvError` for a bad id before any
    subprocess starts. The returned env carries ``act_spec`` (:class:`ActSpec`)."""
    probe = make_env(spec, seed=seed, **kwargs)
    act_spec = probe.act_spec
    probe.close()
    fns = [functools.partial(make_env, spec, seed=seed + i, **kwargs) for i in range(num)]
    mode = gym.vector.AutoresetMode.NEXT_STEP
    if num == 1:
        venv = gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
    else:
        # spawn: the parent holds torch threads (and possibly a GL context); forking those
        # is unsafe.
        venv = gym.vector.AsyncVectorEnv(fns, context="spawn", autoreset_mode=mode)
    venv.act_spec = act_spec
    return venv
