"""The trainer under faults: non-finite updates, broken checkpoints, bad input.

Tiny runs (a shrunken debug model, a few hundred env steps) as in test_train.py.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")

from dreamer_fast.agents import checkpoint  # noqa: E402
from dreamer_fast.agents import trainer as trainer_mod  # noqa: E402
from dreamer_fast.agents.logger import read_metrics  # noqa: E402
from dreamer_fast.agents.trainer import CHECKPOINT, Trainer  # noqa: E402
from dreamer_fast.cli import main  # noqa: E402

from test_train import TINY, tiny_config  # noqa: E402


class NaNRewardFrom:
    """A vector env whose rewards are NaN from its ``start``-th step on."""

    def __init__(self, venv, start: int) -> None:
        self._venv, self._start, self._steps = venv, start, 0

    def __getattr__(self, name):
        return getattr(self._venv, name)

    def step(self, action):
        obs, reward, term, trunc, info = self._venv.step(action)
        self._steps += 1
        if self._steps >= self._start:
            reward = np.full_like(np.asarray(reward, np.float64), np.nan)
        return obs, reward, term, trunc, info


def _nan_env(monkeypatch, start: int) -> None:
    make = trainer_mod.make_vector_env
    monkeypatch.setattr(trainer_mod, "make_vector_env",
                        lambda *a, **k: NaNRewardFrom(make(*a, **k), start))


def _cli_args(logdir, steps: int, **extra) -> list[str]:
    sets = {**TINY, **extra}
    args = ["train", "--steps", str(steps), "--logdir", str(logdir), "--no-progress"]
    for k, v in sets.items():
        args += ["--set", f"{k}={'true' if v is True else 'false' if v is False else v}"]
    return args


def test_nan_reward_stops_the_run_and_keeps_a_finite_checkpoint(tmp_path, monkeypatch, capsys):
    # action repeat 2: vector step 75 is env step 150; checkpoints every 100 env steps
    _nan_env(monkeypatch, 75)
    code = main(_cli_args(tmp_path, 2000, **{"run.checkpoint_every": 100,
                                             "run.max_nonfinite": 3}))
    err = capsys.readouterr().err
    assert code != 0, err
    assert "wm/reward" in err and "env step" in err
    state = checkpoint.load(tmp_path / CHECKPOINT)
    assert not checkpoint.nonfinite_tensors(state["agent"])
    assert state["counters"]["step"] < 2000
    recs = [r for r in read_metrics(tmp_path) if "train/nonfinite_updates" in r]
    assert recs and recs[-1]["train/nonfinite_updates"] >= 3


def test_nonfinite_update_changes_no_parameter_or_optimiser_state(tmp_path):
    cfg = tiny_config("v3", "gym:Pendulum-v1", steps=200)
    tr = Trainer(cfg, tmp_path)
    assert tr.run() == 0
    agent = tr.agent
    batch = tr.replay.sample(cfg.run.batch_size, cfg.run.batch_length)
    batch["reward"] = batch["reward"].copy()
    batch["reward"][0, 3] = np.nan
    def snapshot(prefix, opts):
        params = {k: v.clone() for k, v in agent.state_dict().items() if k.startswith(prefix)}
        states = [torch.cat([s["exp_avg"].flatten() for s in o.state_dict()["state"].values()])
                  for o in opts]
        steps = [[int(s["step"]) for s in o.state_dict()["state"].values()] for o in opts]
        return params, states, steps

    def assert_same(a, b):
        assert a[0].keys() == b[0].keys()
        for k in a[0]:
            assert torch.equal(a[0][k], b[0][k]), k
        for x, y in zip(a[1], b[1]):
            assert torch.equal(x, y)
        assert a[2] == b[2]

    # world model: a NaN reward in the batch
    before = snapshot("wm.", [agent.wm_opt])
    agent.update(batch)
    assert "wm/reward" in agent.skipped
    assert_same(before, snapshot("wm.", [agent.wm_opt]))
    # actor/critic: NaN start states of the imagination
    data = agent.to_torch(tr.replay.sample(cfg.run.batch_size, cfg.run.batch_length))
    with torch.no_grad():
        post = agent.wm(data)["post"]
    start = {k: v.detach().reshape(-1, *v.shape[2:]).clone() for k, v in post.items()}
    start["deter"][0] = math.nan
    before = snapshot("ac.", [agent.actor_opt, agent.critic_opt])
    agent.skipped = []
    agent.train_behavior(start)
    assert any(k.startswith(("actor/", "critic/", "imag/")) for k in agent.skipped)
    assert_same(before, snapshot("ac.", [agent.actor_opt, agent.critic_opt]))
    # a finite batch trains again
    good = tr.replay.sample(cfg.run.batch_size, cfg.run.batch_length)
    agent.update(good)
    assert agent.skipped == []


def test_checkpoint_writer_refuses_nonfinite_state(tmp_path):
    path = tmp_path / "c.pt"
    with pytest.raises(checkpoint.CheckpointError, match="a.b"):
        checkpoint.save_atomic({"a": {"b": torch.tensor([1.0, math.nan])}}, path)
    assert not path.exists()


def test_checkpoint_rotation_and_fallback(tmp_path):
    path = tmp_path / CHECKPOINT
    checkpoint.save_atomic({"v": torch.tensor(1.0)}, path, keep_prev=True)
    checkpoint.save_atomic({"v": torch.tensor(2.0)}, path, keep_prev=True)
    prev = checkpoint.prev_path(path)
    assert prev.name == "checkpoint.prev.pt"
    assert float(checkpoint.load(prev)["v"]) == 1.0
    path.write_bytes(path.read_bytes()[:50])  # truncated
    with pytest.warns(RuntimeWarning, match="previous checkpoint"):
        state, used = checkpoint.load_with_fallback(path, required=("v",))
    assert used == prev and float(state["v"]) == 1.0


def test_resume_falls_back_to_the_previous_checkpoint(tmp_path):
    cfg = tiny_config("v3", "gym:Pendulum-v1", steps=200, **{"run.checkpoint_every": 100})
    assert Trainer(cfg, tmp_path).run() == 0
    prev = checkpoint.load(tmp_path / "checkpoint.prev.pt")
    (tmp_path / CHECKPOINT).write_bytes(b"")
    cfg = tiny_config("v3", "gym:Pendulum-v1", steps=300, **{"run.checkpoint_every": 100})
    with pytest.warns(RuntimeWarning):
        tr = Trainer(cfg, tmp_path)
    assert tr.resumed and tr.counters["step"] == prev["counters"]["step"]


@pytest.mark.parametrize("flags", [["--seed", "-1"], ["--set", "model.lr=nan"],
                                   ["--set", "model.dynlayers=0"],
                                   ["--set", "model.min_std=-1"],
                                   ["--set", "behavior.min_std=-1"],
                                   ["--set", "model.kl_free=nan"],
                                   ["--set", "model.grad_clip=-1"]])
def test_cli_bad_numbers_exit_2_before_the_logdir_exists(tmp_path, capsys, flags):
    logdir = tmp_path / "run"
    assert main(["train", "--logdir", str(logdir), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    key = "seed" if flags[0] == "--seed" else flags[1].split("=")[0]
    assert f"'{key}'" in err and "Traceback" not in err
    assert not logdir.exists()


# ---- clear errors on a broken run directory -------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run (CLI config), copied by each test that breaks it."""
    logdir = tmp_path_factory.mktemp("base") / "run"
    assert main(_cli_args(logdir, 300, **{"run.checkpoint_every": 100})) == 0
    return logdir


def _copy_run(src, dst):
    import shutil
    shutil.copytree(src, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_broken_checkpoint_without_prev_is_a_clear_error(tmp_path, capsys, finished_run, damage):
    logdir = _copy_run(finished_run, tmp_path / "run")
    ckpt = logdir / CHECKPOINT
    data = ckpt.read_bytes()
    ckpt.write_bytes({"empty": b"", "truncated": data[:len(data) // 2],
                      "garbage": b"not a checkpoint at all" * 10}[damage])
    (logdir / "checkpoint.prev.pt").unlink()
    capsys.readouterr()
    assert main(_cli_args(logdir, 400, **{"run.checkpoint_every": 100})) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "Traceback" not in err and "start afresh" in err


def test_truncated_replay_fragment_is_a_clear_error(tmp_path, capsys, finished_run):
    logdir = _copy_run(finished_run, tmp_path / "run")
    frag = sorted((logdir / "replay").glob("*.npz"))[0]
    frag.write_bytes(frag.read_bytes()[:100])
    capsys.readouterr()
    assert main(_cli_args(logdir, 400, **{"run.checkpoint_every": 100})) == 2
    err = capsys.readouterr().err
    assert str(frag) in err and "delete that file" in err and "Traceback" not in err


def test_resume_compares_the_config_stored_in_the_checkpoint(tmp_path, capsys, finished_run):
    logdir = _copy_run(finished_run, tmp_path / "run")
    (logdir / "config.yaml").unlink()
    capsys.readouterr()
    code = main(_cli_args(logdir, 400, **{"run.checkpoint_every": 100,
                                          "behavior.entropy": 0.01}))
    assert code == 2
    err = capsys.readouterr().err
    assert "behavior.entropy" in err and "Traceback" not in err
    # the Trainer itself refuses a changed config too
    from dreamer_fast.agents.config import ConfigError, load_config
    cfg = load_config(overrides={**TINY, "steps": 400, "behavior.entropy": 0.01})
    with pytest.raises(ConfigError, match="behavior.entropy"):
        Trainer(cfg, logdir)
    # the unchanged config resumes
    assert main(_cli_args(logdir, 400, **{"run.checkpoint_every": 100})) == 0


def test_second_trainer_on_a_logdir_is_refused(tmp_path, capsys):
    cfg = tiny_config("v3", "gym:Pendulum-v1", steps=100)
    first = Trainer(cfg, tmp_path)
    capsys.readouterr()
    assert main(_cli_args(tmp_path, 100)) == 2
    assert "in use by another trainer" in capsys.readouterr().err
    assert first.run() == 0  # released at the end of the run
    assert main(_cli_args(tmp_path, 200)) == 0


def test_unfinished_episodes_are_written_at_the_end(tmp_path):
    cfg = tiny_config("v3", "gym:Pendulum-v1", steps=250)  # episodes of 100 env steps
    tr = Trainer(cfg, tmp_path)
    records = []
    record = tr._record
    tr._record = lambda env: (records.append(1), record(env))
    assert tr.run() == 0
    frags = sorted((tmp_path / "replay").glob("*.npz"))
    lengths = [int(np.load(p)["reward"].shape[0]) for p in frags]
    assert sum(lengths) == len(records) * cfg.envs
    with np.load(frags[-1]) as z:
        assert not z["is_last"][-1]  # the unfinished one
    state = checkpoint.load(tmp_path / CHECKPOINT)
    assert [n for _, n in state["replay"]["files"]] == lengths


# ---- image observations ---------------------------------------------------------------

def _register_image_env():
    import gymnasium as gym

    class ImageToy(gym.Env):
        observation_space = gym.spaces.Box(0, 255, (24, 24, 3), np.uint8)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return self.np_random.integers(0, 255, (24, 24, 3), dtype=np.uint8), {}

        def step(self, action):
            self.t += 1
            obs = self.np_random.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            return obs, float(action), self.t >= 20, False, {}

    if "ImageToy-v0" not in gym.registry:
        gym.register("ImageToy-v0", entry_point=ImageToy)


def test_uint8_image_observations_go_to_the_cnn_encoder(tmp_path):
    _register_image_env()
    cfg = tiny_config("v3", "gym:ImageToy-v0", steps=150,
                      **{"env_opts.image_size": 16, "run.prefill": 60})
    tr = Trainer(cfg, tmp_path)
    assert tr.agent.obs_key == "image"
    assert tr.run() == 0
    frag = next((tmp_path / "replay").glob("*.npz"))
    with np.load(frag) as z:
        assert z["image"].dtype == np.uint8 and z["image"].shape[1:] == (16, 16, 3)


def test_uint8_image_observations_with_proprio_are_refused(tmp_path, capsys):
    _register_image_env()
    assert main(["train", "--env", "gym:ImageToy-v0", "--set", "env_opts.obs=proprio",
                 "--logdir", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "images" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---- replay and checkpoint agree after a kill -----------------------------------------

def _spawn(logdir, steps: int, every: int, **extra):
    args = [sys.executable, "-m", "dreamer_fast"] + _cli_args(logdir, steps, **{
        "run.checkpoint_every": every, **extra})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _fragment_after_checkpoint(logdir) -> bool:
    ckpt = logdir / CHECKPOINT
    if not ckpt.exists():
        return False
    t = ckpt.stat().st_mtime_ns
    try:
        saved = checkpoint.load(ckpt)
    except Exception:  # being replaced
        return False
    return (saved["counters"]["step"] >= 400
            and any(p.stat().st_mtime_ns > t for p in (logdir / "replay").glob("*.npz")))


def _wait(pred, proc, timeout):
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.05)


def test_sigkill_between_checkpoints_resumes_the_checkpoints_replay(tmp_path):
    logdir = tmp_path / "run"
    proc = _spawn(logdir, 100000, 200)
    try:
        _wait(lambda: _fragment_after_checkpoint(logdir), proc, 240)
    finally:
        proc.kill()
        proc.wait()
    saved = checkpoint.load(logdir / CHECKPOINT)
    step = saved["counters"]["step"]
    # the reference: the same run, uninterrupted, stopped at the checkpoint's step
    from dreamer_fast.agents.config import load_config
    over = {**TINY, "run.checkpoint_every": 200}
    ref = Trainer(load_config(overrides={**over, "steps": step}), tmp_path / "ref")
    ref.replay.flush = lambda: 0  # the periodic checkpoint does not flush
    assert ref.run() == 0
    assert checkpoint.load(tmp_path / "ref" / CHECKPOINT)["counters"] == saved["counters"]
    tr = Trainer(load_config(overrides={**over, "steps": step + 100}), logdir)
    # the ring at the checkpoint, then its unfinished episodes as one fragment each
    n = len(ref.replay)
    pending = [ref.replay.state_dict()["pending"][w] for w in sorted(ref.replay._pending)
               if ref.replay._pending[w]]
    expect = {k: np.concatenate([v[:n]] + [p[k] for p in pending])
              for k, v in ref.replay._data.items()}
    m = len(expect["reward"])
    assert tr.resumed and len(tr.replay) == m
    for k, v in expect.items():
        np.testing.assert_array_equal(tr.replay._data[k][:m], v, err_msg=k)
    np.testing.assert_array_equal(tr.replay._start[:n], ref.replay._start[:n])
    # the fragments written after the checkpoint are gone from disk
    on_disk = sorted(p.name for p in (logdir / "replay").glob("*.npz"))
    listed = sorted(name for name, _ in saved["replay"]["files"])
    assert on_disk[:len(listed)] == listed and len(on_disk) == len(listed) + len(pending)


# ---- soak: random SIGKILLs and resumes ------------------------------------------------

@pytest.mark.soak
def test_soak_random_sigkills_then_resume(tmp_path):
    """A 2,000-step run killed with SIGKILL at random points five times (resumed each
    time), then run to the end: the target step count, a replay holding exactly the
    checkpoint's fragments with no duplicated step, finite weights."""
    logdir, steps, every, repeat = tmp_path / "run", 2000, 200, 2
    rng = np.random.default_rng(0)
    segments = 0
    for _ in range(5):
        proc = _spawn(logdir, steps, every)
        segments += 1
        try:
            delay = rng.uniform(0.5, 3.0)  # after the first metric record of this segment
            start = time.time()
            _wait(lambda: (logdir / "metrics.jsonl").exists()
                  and time.time() - start > delay, proc, 120)
        finally:
            proc.kill()
            proc.wait()
    proc = _spawn(logdir, steps, every)
    segments += 1
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    state = checkpoint.load(logdir / CHECKPOINT)
    assert state["counters"]["step"] == steps
    assert not checkpoint.nonfinite_tensors(state["agent"])
    files = [name for name, _ in state["replay"]["files"]]
    assert sorted(p.name for p in (logdir / "replay").glob("*.npz")) == sorted(files)
    frags = [np.load(logdir / "replay" / name) for name in files]
    obs = np.concatenate([f["vector"] for f in frags])
    act = np.concatenate([f["action"] for f in frags])
    first = np.concatenate([f["is_first"] for f in frags])
    rows = np.concatenate([obs, act], 1)
    assert len(np.unique(rows, axis=0)) == len(rows), "a step is stored twice"
    counted = int((~first).sum()) * repeat
    # every counted env step is stored, but the newest step of each process (observed, not
    # yet recorded when it stopped) and the steps of a process killed before its first
    # checkpoint
    assert counted <= steps
    assert counted >= steps - repeat * segments


def test_run_killed_before_its_first_checkpoint_leaves_nothing_behind(tmp_path):
    """SIGKILL before the first checkpoint: the next start begins at step 0, so the killed
    run's replay fragments and metric records (steps it collects again) are removed;
    before, they stayed on disk and no checkpoint ever listed them."""
    logdir = tmp_path / "run"
    proc = _spawn(logdir, 100000, 100000)
    try:
        _wait(lambda: len(list((logdir / "replay").glob("*.npz"))) >= 2
              and (logdir / "metrics.jsonl").exists(), proc, 240)
    finally:
        proc.kill()
        proc.wait()
    assert not (logdir / CHECKPOINT).exists()
    proc = _spawn(logdir, 300, 100000)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    state = checkpoint.load(logdir / CHECKPOINT)
    files = [name for name, _ in state["replay"]["files"]]
    assert sorted(p.name for p in (logdir / "replay").glob("*.npz")) == sorted(files)
    steps = [r["step"] for r in read_metrics(logdir)]
    assert steps == sorted(steps) and steps[-1] <= 300, steps
    assert "no checkpoint covers" in out


def test_sigterm_writes_the_unfinished_episode(tmp_path):
    logdir = tmp_path / "run"
    # episodes of 2 * 70 env steps: the first metric record (step 100) is mid-episode
    proc = _spawn(logdir, 100000, 100000, **{"env_opts.time_limit": 70})
    _wait(lambda: (logdir / "metrics.jsonl").exists()
          and any("wm/loss" in r for r in read_metrics(logdir)), proc, 240)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    state = checkpoint.load(logdir / CHECKPOINT)
    files = [name for name, _ in state["replay"]["files"]]
    assert sorted(p.name for p in (logdir / "replay").glob("*.npz")) == sorted(files)
    assert not state["replay"]["pending"]
    # every counted env step is on disk but the newest (observed, not yet recorded)
    firsts = [np.load(logdir / "replay" / name)["is_first"] for name in files]
    counted = 2 * sum(int((~f).sum()) for f in firsts)
    assert state["counters"]["step"] - counted in (0, 2)
