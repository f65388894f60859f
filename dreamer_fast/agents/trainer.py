"""The training loop: environments -> replay -> learner updates, with logging,
checkpoints and resume.

Per vector step (one action for each of the ``N`` environments):

1. record the newest step of every environment in the replay (the action stored with
   a step is the one that led to it; zeros and reward 0 on an ``is_first`` step);
2. act: uniform random actions until ``run.prefill`` env steps, then the policy;
3. step the environments; env steps count action repeats (``N·repeat`` per vector
   step, not counting the reset steps);
4. train: ``run.train_ratio`` replayed steps per agent step, i.e. ``N·train_ratio /
   (B·T)`` updates per vector step, accumulated fractionally; plus ``run.pretrain``
   updates when the prefill ends.

Every ``run.checkpoint_every`` env steps, at the end, and on SIGINT/SIGTERM the
agent, optimisers, counters, RNG states and the list of replay fragments the ring holds
go to ``<logdir>/checkpoint.pt`` (atomically, the previous one kept as
``checkpoint.prev.pt``; a state with a non-finite tensor is never written); replay
fragments are on disk as they fill (``<logdir>/replay``), the unfinished ones at the end
and on SIGINT/SIGTERM. ``train`` on a logdir holding a checkpoint resumes from it: the
environments start new episodes, the replay holds exactly the checkpoint's fragments
(later ones are removed), everything else continues. A run holds an exclusive lock on
``<logdir>/.lock``.

An update whose loss terms or gradient norms are not finite skips the optimiser step
concerned (:meth:`.agent.Agent.update`); ``run.max_nonfinite`` such updates in a row
stop the run (:data:`NONFINITE_EXIT`) without writing a checkpoint.

Under ``torchrun`` (``WORLD_SIZE > 1``) the ranks train one agent data-parallel
(:mod:`.distributed`): each rank its own environments and replay shard
(``<logdir>/replay/rank<r>``), gradients averaged over the ranks; env steps, episodes and
updates count over all ranks; rank 0 alone writes the metrics, the progress bar and the
checkpoint, which holds every rank's RNG states and replay listing (``ranks``) and the
world size, and resumes only on as many ranks (re-sharding is not implemented).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from dreamer_fast.agents import checkpoint, distributed
from dreamer_fast.agents.agent import Agent
from dreamer_fast.agents.config import Config, ConfigError, from_dict, resume_differences
from dreamer_fast.agents.logger import Logger, read_metrics
from dreamer_fast.agents.replay import Replay
from dreamer_fast.envs import make_vector_env

CHECKPOINT = "checkpoint.pt"
#: ``Trainer.run``'s return value when non-finite updates stopped the run.
NONFINITE_EXIT = 3


class NonFiniteError(RuntimeError):
    """``run.max_nonfinite`` consecutive updates had a non-finite loss or gradient norm."""


def resolve_device(name: str, dist: distributed.Dist | None = None) -> torch.device:
    if dist is not None and dist.enabled:  # one device per rank, chosen by distributed.setup
        return dist.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device' is 'cuda' but no CUDA device is available")
    return torch.device(name)


def env_kwargs(cfg: Config) -> dict:
    e = cfg.env_opts
    return dict(obs=e.obs, action_repeat=e.action_repeat, time_limit=e.time_limit,
                image_size=e.image_size, camera=e.camera)


def build_agent(cfg: Config, obs_space, act_spec, device: torch.device) -> Agent:
    obs_key = "image" if "image" in obs_space.spaces else "vector"
    shape = tuple(obs_space[obs_key].shape)
    return Agent(cfg, obs_key, shape, act_spec.size, act_spec.discrete, device)


def seed_everything(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def saved_config(logdir: Path) -> Config | None:
    """The config of an existing run in ``logdir``: its ``config.yaml``, or the one stored
    in its checkpoint when that file is gone (None if there is no run)."""
    logdir = Path(logdir)
    path = logdir / "config.yaml"
    if path.exists():
        return from_dict(yaml.safe_load(path.read_text()))
    ckpt = logdir / CHECKPOINT
    if ckpt.exists() or checkpoint.prev_path(ckpt).exists():
        state, _ = checkpoint.load_with_fallback(ckpt, "cpu", required=("config",))
        return from_dict(state["config"])
    return None


LOCK = ".lock"


def lock_logdir(logdir: Path):
    """An exclusive ``flock`` on ``<logdir>/.lock`` (held while the returned file is open);
    :class:`ConfigError` when another trainer holds it."""
    import fcntl
    f = open(logdir / LOCK, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        owner = f.read().strip() or "?"
        f.close()
        raise ConfigError(f"{logdir} is in use by another trainer (pid {owner}); wait for it "
                          f"to finish or stop it, or use another --logdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


class _Stop:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, no graceful stop
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # second signal: give up on the graceful stop
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    def __init__(self, cfg: Config, logdir: str | os.PathLike) -> None:
        self.cfg = cfg
        self.logdir = Path(logdir)
        self.dist = distributed.setup(cfg.device, cfg.envs)
        self._lock = None
        try:  # everything a rank can fail at alone, before the ranks' first collective
            self._setup_local()
            error = None
        except Exception as e:
            error = e
        try:
            seen = self.dist.agree(error, resume=getattr(self, "resumed", False))
        except BaseException:
            self.dist.close()
            raise
        if len(set(seen["resume"])) > 1:
            raise distributed.DistError(
                f"ranks {[r for r, x in enumerate(seen['resume']) if x]} found a checkpoint in "
                f"{self.logdir}, others did not: on several machines the logdir must be on a "
                f"filesystem all of them share")
        if self.dist.enabled:
            if not self.resumed:  # rank 0's initial weights (a resumed rank loaded them)
                self.dist.broadcast_module(self.agent)
            self.dist.check_same(self._fingerprint(), "the agent's weights after setup")
            self.agent.set_grad_sync(distributed.GradSync(self.dist))
        # TensorBoard hides a killed run's events after the step resumed from
        self.logger = (Logger(self.logdir, purge_step=self.counters["step"] + 1
                              if self.resumed else 0)
                       if self.dist.is_main else _NoLogger())
        self._checkpointed = self.counters["step"]  # env step of the last checkpoint

    def _setup_local(self) -> None:
        cfg, d = self.cfg, self.dist
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # one process-wide setting: the fused kernels' GEMMs and the reference follow it
        torch.set_float32_matmul_precision(cfg.matmul_precision)
        seed = d.seed(cfg.seed)  # cfg.seed on rank 0 (and in a single process)
        seed_everything(seed)
        self.device = resolve_device(cfg.device, d)
        self.envs = make_vector_env(cfg.env, cfg.envs, seed, **env_kwargs(cfg))
        self.n = cfg.envs
        self.logdir.mkdir(parents=True, exist_ok=True)  # after the env id proved valid
        if d.is_main:  # one lock per run: a second run's rank 0 is refused
            self._lock = lock_logdir(self.logdir)
        self.agent = build_agent(cfg, self.envs.single_observation_space, self.envs.act_spec,
                                 self.device)
        shard = self.logdir / "replay"
        if d.enabled:
            shard = shard / f"rank{d.rank}"
        self.replay = Replay(cfg.replay.capacity, shard, cfg.replay.chunk, seed=seed)
        self.rng = np.random.default_rng(seed)
        self.counters = {"step": 0, "updates": 0, "episodes": 0, "owed": 0.0,
                         "pretrained": False, "nonfinite": 0}
        self.nonfinite_run = 0  # consecutive updates with a non-finite term
        self.resumed = False
        ckpt = self.logdir / CHECKPOINT
        if ckpt.exists() or checkpoint.prev_path(ckpt).exists():
            self._restore(ckpt)
        else:
            # every rank clears its own shard; rank 0 the metrics and writes the config
            self._discard_uncheckpointed()
            if d.is_main:
                (self.logdir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(),
                                                                        sort_keys=False))

    def _fingerprint(self) -> torch.Tensor:
        return distributed.fingerprint(
            t for _, t in checkpoint.named_tensors(self.agent.full_state_dict()))

    # ---- checkpoints -------------------------------------------------------------------

    def _rank_state(self) -> dict:
        return {"rng": checkpoint.rng_state(), "env_rng": self.rng.bit_generator.state,
                "replay": self.replay.state_dict()}

    def state(self, ranks: list[dict] | None = None) -> dict:
        """The checkpoint's content; ``ranks``: every rank's :meth:`_rank_state` (a
        data-parallel run), whose rank 0 entry is also at the top level."""
        out = {"agent": self.agent.full_state_dict(), "counters": dict(self.counters),
               **(ranks[0] if ranks else self._rank_state()), "config": self.cfg.to_dict(),
               "world_size": self.dist.world}
        if ranks is not None and len(ranks) > 1:
            out["ranks"] = ranks
        return out

    def save(self) -> None:
        """The checkpoint (the previous one kept as ``checkpoint.prev.pt``); refused when
        any tensor of the state is non-finite. Data-parallel: called on every rank, rank 0
        writes every rank's state and checks that the ranks' weights agree."""
        if not self.dist.enabled:
            checkpoint.save_atomic(self.state(), self.logdir / CHECKPOINT, keep_prev=True)
            return
        mine = {**self._rank_state(), "fingerprint": self._fingerprint()}
        ranks = self.dist.gather_to_main(mine)
        if ranks is None:
            return
        fps = [r.pop("fingerprint") for r in ranks]
        bad = [r for r in range(1, len(fps)) if not torch.equal(fps[r], fps[0])]
        if bad:
            raise distributed.DistError(f"refusing to write {self.logdir / CHECKPOINT}: the "
                                        f"weights of rank(s) {bad} differ from rank 0's")
        checkpoint.save_atomic(self.state(ranks), self.logdir / CHECKPOINT, keep_prev=True)

    def _restore(self, path: Path) -> None:
        state, path = checkpoint.load_with_fallback(
            path, self.device, required=("agent", "counters", "rng", "env_rng", "replay"))
        diff = resume_differences(from_dict(state["config"]).to_dict(), self.cfg.to_dict())
        if diff:
            key, old, new = diff[0]
            raise ConfigError(f"{path} holds a run with {key}={old!r}; it cannot resume with "
                              f"{key}={new!r} ({len(diff)} key(s) differ; use a new --logdir)")
        world, saved = self.dist.world, int(state.get("world_size", 1))
        if saved != world:
            raise ConfigError(
                f"{path} was written by a run on {saved} rank(s) (one replay shard each); it "
                f"cannot resume on {world} (re-sharding is not implemented): resume it "
                + ("without torchrun" if saved == 1 else
                   f"under torchrun with {saved} processes in all (WORLD_SIZE={saved})")
                + ", or use a new --logdir")
        mine = state["ranks"][self.dist.rank] if world > 1 else state
        self.agent.load_full_state_dict(state["agent"])
        self.counters.update(state["counters"])
        checkpoint.set_rng_state(mine["rng"])
        self.rng.bit_generator.state = mine["env_rng"]
        loaded = self.replay.load_state_dict(mine["replay"], load=True)
        self.resumed = True
        if self.dist.is_main:
            _truncate_metrics(self.logdir, self.counters["step"])
        where = f" (rank {self.dist.rank})" if world > 1 else ""
        print(f"[train] resumed {self.logdir}{where} at env step {self.counters['step']} "
              f"({self.counters['updates']} updates, {loaded} replay steps)", flush=True)

    def _discard_uncheckpointed(self) -> None:
        """A fresh start on a logdir that a run stopped before its first checkpoint left
        behind: that run's replay fragments and metric records cover steps this run
        collects again from step 0, so they go (otherwise the replay would hold those
        steps twice and no checkpoint would ever list them)."""
        removed = self.replay.discard_after(-1)
        if removed:
            where = f" (rank {self.dist.rank})" if self.dist.enabled else ""
            print(f"[train] removed {removed} replay fragment(s){where} that no checkpoint "
                  f"covers (a run stopped before its first checkpoint); starting at "
                  f"env step 0", flush=True)
        if self.dist.is_main:
            _truncate_metrics(self.logdir, -1)

    # ---- loop --------------------------------------------------------------------------

    def run(self) -> int:
        """Train until ``cfg.steps`` env steps; returns 0, or 128 + signal number when
        stopped by SIGINT/SIGTERM (after saving a checkpoint)."""
        c = self.counters
        env = self._reset_envs()
        bar = _progress(self.cfg, c["step"]) if self.dist.is_main else None
        log = _LogWindow(c["step"], c["updates"], bar)
        code = 0
        with _Stop() as stop:
            try:
                while c["step"] < self.cfg.steps:
                    self._record(env)
                    action = self._act(env)
                    agent_steps = self._step_envs(env, action)
                    # data-parallel: the ranks' totals, so every rank takes the same
                    # decisions below (a single process: its own values)
                    sync = self.dist.step_sync(agent_steps, env.finished,
                                               len(self.replay) >= self.cfg.run.batch_length,
                                               int(stop.signal or 0))
                    self._count(env, sync)
                    self._train(sync, log, stop)
                    self._log(env, log)
                    self._checkpoint_if_due()
                    signum = sync.signal if self.dist.enabled else stop.signal
                    if signum:
                        code = 128 + int(signum)
                        if self.dist.is_main:
                            print(f"\n[train] stopped by signal {signum} at env step "
                                  f"{c['step']}; checkpoint saved, run the same command to "
                                  f"resume", flush=True)
                        break
                self.replay.flush()  # the unfinished episodes, covered by the checkpoint
                self.save()
            except NonFiniteError as e:
                self._log(env, log, force=True)
                print(f"\n[train] {e}", file=sys.stderr, flush=True)
                code = NONFINITE_EXIT
        if log.bar is not None:
            log.bar.close()
        self.logger.close()
        self.envs.close()
        if self._lock is not None:
            self._lock.close()
        self.dist.close()
        return code

    def _reset_envs(self) -> _EnvSteps:
        """New episodes in every environment (also on resume)."""
        n, A = self.n, self.agent.action_size
        obs, _ = self.envs.reset(seed=self.dist.seed(self.cfg.seed)
                                 + 1000 * self.counters["episodes"])
        return _EnvSteps(obs=obs, reward=np.zeros(n, np.float32), is_first=np.ones(n, bool),
                         is_last=np.zeros(n, bool), is_term=np.zeros(n, bool),
                         prev_action=np.zeros((n, A), np.float32),
                         policy_state=self.agent.initial_state(n), ep_return=np.zeros(n),
                         ep_length=np.zeros(n, int), recent=collections.deque(maxlen=10))

    def _record(self, env: _EnvSteps) -> None:
        """The newest step of every environment into the replay; the episodes that
        finished into ``env.finished`` (``(return, length)``; :meth:`_count` logs them)."""
        env.finished = finished = []
        for i in range(self.n):
            self.replay.add(_step_record(self.agent.obs_key, env.obs, i, env.prev_action,
                                         env.reward, env.is_first, env.is_last, env.is_term), i)
            if not env.is_first[i]:
                env.ep_return[i] += env.reward[i]
                env.ep_length[i] += 1
            if env.is_last[i]:
                finished.append((float(env.ep_return[i]), int(env.ep_length[i])))
                env.ep_return[i], env.ep_length[i] = 0.0, 0

    def _count(self, env: _EnvSteps, sync: distributed.StepSync) -> None:
        """The vector step's finished episodes (of every rank) into the log and the
        counters; the env step count advances by the agent steps of every rank times the
        action repeat."""
        c = self.counters
        for ret, length in sync.episodes:
            c["episodes"] += 1
            env.recent.append(ret)
            self.logger.write(c["step"], {"episode/return": ret, "episode/length": length})
        c["step"] += self.cfg.env_opts.action_repeat * sync.agent_steps

    def _act(self, env: _EnvSteps) -> np.ndarray:
        """Uniform random actions until ``run.prefill`` env steps, then the policy's."""
        if self.counters["step"] < self.cfg.run.prefill:
            return self.agent.random_action(self.n, self.rng)
        action, env.policy_state = self.agent.act(env.obs, env.is_first, env.policy_state)
        return action

    def _step_envs(self, env: _EnvSteps, action: np.ndarray) -> int:
        """One vector step; returns the agent steps taken (the environments that did not
        spend it on a reset)."""
        resets = int(env.is_last.sum())
        obs, reward, term, trunc, _ = self.envs.step(action)
        env.obs = obs
        env.reward = np.asarray(reward, np.float32)
        env.is_first = env.is_last.copy()  # NEXT_STEP autoreset: this step was a reset
        env.reward[env.is_first] = 0.0
        env.is_term, env.is_last = np.asarray(term, bool), np.asarray(term, bool) | trunc
        env.prev_action = np.where(env.is_first[:, None], 0.0, action).astype(np.float32)
        return self.n - resets

    def _train(self, sync: distributed.StepSync, log: _LogWindow, stop: _Stop) -> None:
        """The updates owed for the agent steps just taken (plus ``run.pretrain`` once),
        once the prefill is done (and every rank's replay can give a batch); their metrics
        go to ``log``. Data-parallel: an update replays ``W·B·T`` steps, for the agent
        steps of all ranks."""
        cfg, c = self.cfg, self.counters
        if c["step"] < cfg.run.prefill or not sync.ready:
            return
        todo = 0
        if not c["pretrained"]:
            c["pretrained"] = True
            todo += cfg.run.pretrain
        c["owed"] += (sync.agent_steps * cfg.run.train_ratio
                      / (self.dist.world * cfg.run.batch_size * cfg.run.batch_length))
        todo += int(c["owed"])
        c["owed"] -= int(c["owed"])
        for _ in range(todo):
            batch = self.replay.sample(cfg.run.batch_size, cfg.run.batch_length)
            for k, v in self.agent.update(batch).items():
                log.pending[k].append(v)
            c["updates"] += 1
            if self.agent.skipped:
                c["nonfinite"] += 1
                self.nonfinite_run += 1
                if self.nonfinite_run >= cfg.run.max_nonfinite:
                    raise NonFiniteError(
                        f"stopped at env step {c['step']} (update {c['updates']}): "
                        f"{self.nonfinite_run} updates in a row had non-finite values "
                        f"({', '.join(self.agent.skipped)}); their optimiser steps were "
                        f"skipped and no checkpoint was written after them. The last "
                        f"checkpoint in {self.logdir} holds finite weights; check the "
                        f"environment's rewards/observations or lower the learning rates")
            else:
                self.nonfinite_run = 0
            # data-parallel: every rank must run the same updates (each is a collective);
            # the ranks agree on a signal at the next vector step instead
            if stop.signal is not None and not self.dist.enabled:
                break

    def _log(self, env: _EnvSteps, log: _LogWindow, force: bool = False) -> None:
        """Every ``run.log_every`` env steps and at the end: the window's mean metrics,
        rates and counters; the progress bar."""
        cfg, c = self.cfg, self.counters
        if c["step"] - log.step >= cfg.run.log_every or c["step"] >= cfg.steps or force:
            now = time.perf_counter()
            dt = max(now - log.time, 1e-9)
            values = {k: float(np.mean(v)) for k, v in log.pending.items()}
            values.update({"train/fps": (c["step"] - log.step) / dt,
                           "train/updates_per_s": (c["updates"] - log.updates) / dt,
                           "train/updates": c["updates"],
                           "train/nonfinite_updates": c["nonfinite"],
                           "train/episodes": c["episodes"]})
            if env.recent:
                values["episode/return_last10"] = float(np.mean(env.recent))
            if self.dist.enabled:
                values["train/world_size"] = self.dist.world
            self.logger.write(c["step"], values)
            self.logger.flush()
            log.restart(c["step"], c["updates"], now)
            if log.bar is not None:
                log.bar.set_postfix(fps=f"{values['train/fps']:.0f}",
                                    ups=f"{values['train/updates_per_s']:.1f}",
                                    ret=f"{env.recent[-1]:.1f}" if env.recent else "-")
        if log.bar is not None:
            log.bar.update(c["step"] - log.bar.n)

    def _checkpoint_if_due(self) -> None:
        """A checkpoint whenever the env step count crossed a multiple of
        ``run.checkpoint_every`` since the last one (once: a reset step, which adds no env
        step, does not repeat it)."""
        step, every = self.counters["step"], self.cfg.run.checkpoint_every
        if step // every > self._checkpointed // every:
            self.save()
            self._checkpointed = step


@dataclasses.dataclass
class _EnvSteps:
    """The newest step of each of the ``N`` environments, the policy's state, the running
    episodes' return and length, and the returns of the last finished ones."""

    obs: dict
    reward: np.ndarray
    is_first: np.ndarray
    is_last: np.ndarray
    is_term: np.ndarray
    prev_action: np.ndarray
    policy_state: tuple
    ep_return: np.ndarray
    ep_length: np.ndarray
    recent: collections.deque  # the returns of the last 10 episodes
    # the episodes this rank finished in the current vector step: (return, length)
    finished: list = dataclasses.field(default_factory=list)


class _NoLogger:
    """The logger of ranks other than 0: metrics come from rank 0 alone."""

    def write(self, step: int, values: dict) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _LogWindow:
    """The update metrics, env steps and updates since the last log record."""

    def __init__(self, step: int, updates: int, bar) -> None:
        self.pending: dict[str, list[float]] = collections.defaultdict(list)
        self.bar = bar
        self.restart(step, updates, time.perf_counter())

    def restart(self, step: int, updates: int, now: float) -> None:
        self.pending.clear()
        self.step, self.updates, self.time = step, updates, now


def _step_record(key, obs, i, prev_action, reward, is_first, is_last, is_term) -> dict:
    return {key: obs[key][i], "action": prev_action[i], "reward": np.float32(reward[i]),
            "is_first": bool(is_first[i]), "is_last": bool(is_last[i]),
            "is_terminal": bool(is_term[i])}


def _progress(cfg: Config, initial: int):
    if not cfg.run.progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=cfg.steps, initial=initial, unit="step", dynamic_ncols=True,
                desc=f"{cfg.algo} {cfg.env}")


def _truncate_metrics(logdir: Path, step: int) -> None:
    """Drop records written after the checkpoint being resumed (a killed run's tail), so
    the resumed run's records do not duplicate steps."""
    path = logdir / "metrics.jsonl"
    if not path.exists():
        return
    keep = [r for r in read_metrics(logdir) if r["step"] <= step]
    tmp = path.with_name(".metrics.jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    os.replace(tmp, path)
