"""The trainer under faults: non-finite updates, broken checkpoints, bad input.

Tiny runs (a shrunken debug model, a few hundred env steps) as in test_train.py.
"""

from __future__ import annotations

import math

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
