"""Evaluation of a trained run: deterministic-policy episodes and optional videos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dreamer_fast.agents import checkpoint
from dreamer_fast.agents.trainer import (CHECKPOINT, build_agent, env_kwargs, resolve_device,
                                         saved_config)
from dreamer_fast.envs import make_env


def evaluate(logdir: str | Path, episodes: int = 5, video: str | None = None,
             device: str = "auto", seed: int = 12345, explore: bool = False) -> dict:
    """Runs ``episodes`` episodes with the policy's mode (``explore=False``) in a fresh
    env; ``video`` ``'gif'``/``'mp4'`` writes ``<logdir>/eval.<ext>`` of the first episode.
    Returns ``{"returns": [...], "mean": ..., "step": ...}`` and writes ``eval.json``."""
    logdir = Path(logdir)
    cfg = saved_config(logdir)
    if cfg is None or not (logdir / CHECKPOINT).exists():
        raise FileNotFoundError(f"{logdir} holds no trained run (config.yaml and "
                                f"{CHECKPOINT} expected)")
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    dev = resolve_device(device)
    env = make_env(cfg.env, seed=seed, render=video is not None, **env_kwargs(cfg))
    agent = build_agent(cfg, env.observation_space, env.act_spec, dev)
    state = checkpoint.load(logdir / CHECKPOINT, dev)
    agent.load_full_state_dict(state["agent"])
    agent.eval()
    returns, frames = [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        policy_state = agent.initial_state(1)
        first, done, total = True, False, 0.0
        while not done:
            if video and ep == 0:
                frames.append(_frame(env, obs))
            batch = {k: v[None] for k, v in obs.items()}
            action, policy_state = agent.act(batch, np.array([first]), policy_state,
                                             explore=explore)
            obs, reward, term, trunc, _ = env.step(action[0])
            total += reward
            first, done = False, term or trunc
        returns.append(float(total))
    env.close()
    result = {"step": int(state["counters"]["step"]), "returns": returns,
              "mean": float(np.mean(returns)), "std": float(np.std(returns))}
    if video:
        result["video"] = str(_write_video(frames, logdir / f"eval.{video}"))
    (logdir / "eval.json").write_text(json.dumps(result, indent=1))
    return result


def _frame(env, obs) -> np.ndarray:
    if "image" in obs:
        return obs["image"]
    frame = env.render()
    return np.asarray(frame, np.uint8)


def _write_video(frames: list[np.ndarray], path: Path) -> Path:
    import imageio.v2 as imageio
    if path.suffix == ".mp4":
        try:
            imageio.mimsave(path, frames, fps=30)
            return path
        except Exception:  # no ffmpeg backend installed: fall back to a GIF
            path = path.with_suffix(".gif")
    imageio.mimsave(path, frames, duration=1 / 30, loop=0)
    return path
