"""Smoke training runs of the debug-size agents, checkpoint/resume, backends and CLI
errors.

The runs are tiny (a few hundred env steps, a handful of updates of a shrunken model)
so that every algorithm x environment pair is exercised in seconds on a CPU; they check
that the whole loop runs and the losses stay finite, not that the agent learns (the
learning run is measured outside the test suite, see the README).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")  # see test_envs.py: skipped only where the GPU check runs

from dreamer_fast.agents import checkpoint  # noqa: E402
from dreamer_fast.agents.config import load_config  # noqa: E402
from dreamer_fast.agents.logger import read_metrics  # noqa: E402
from dreamer_fast.agents.trainer import CHECKPOINT, Trainer  # noqa: E402
from dreamer_fast.bench.timing import matmul_precision  # noqa: E402
from dreamer_fast.cli import main  # noqa: E402

#: A shrunken debug model: the smoke runs check plumbing, not learning.
TINY = {"model.deter": 32, "model.hidden": 32, "model.stoch": 4, "model.classes": 4,
        "model.units": 32, "model.blocks": 4, "model.cnn_depth": 4, "run.batch_size": 4,
        "run.batch_length": 8, "run.prefill": 100, "run.pretrain": 2,
        "run.train_ratio": 8, "run.log_every": 100, "run.progress": False,
        "behavior.horizon": 5, "env_opts.time_limit": 100, "threads": 1}


def tiny_config(algo: str, env: str, steps: int = 300, **extra):
    over = {**TINY, "env": env, "steps": steps, **extra}
    if algo == "v1":
        over["model.classes"] = 0
    return load_config(algo, "debug", over)


def _finite_losses(logdir: Path) -> dict:
    recs = [r for r in read_metrics(logdir) if "wm/loss" in r]
    assert recs, "no update was logged"
    for r in recs:
        for k, v in r.items():
            assert math.isfinite(v), f"{k} = {v} at step {r['step']}"
    return recs[-1]


@pytest.mark.parametrize("env", ["gym:Pendulum-v1", "gym:CartPole-v1", "dmc:cartpole-swingup"])
@pytest.mark.parametrize("algo", ["v1", "v2", "v3"])
def test_smoke_training(tmp_path, algo, env):
    cfg = tiny_config(algo, env)
    trainer = Trainer(cfg, tmp_path)
    assert trainer.run() == 0
    last = _finite_losses(tmp_path)
    assert last["train/updates"] >= 10
    assert last["step"] >= 300
    eps = [r for r in read_metrics(tmp_path) if "episode/return" in r]
    assert eps, "no episode finished"
    if algo == "v2" and env == "gym:Pendulum-v1":
        assert trainer.agent.ac.actor_grad == "dynamics"  # V2 continuous
    if env == "gym:CartPole-v1":
        assert trainer.agent.ac.actor.head == "categorical"
        # V1 backpropagates through straight-through one-hot samples; V2/V3 use REINFORCE
        assert trainer.agent.ac.actor_grad == ("dynamics" if algo == "v1" else "reinforce")
    assert (tmp_path / CHECKPOINT).exists() and (tmp_path / "config.yaml").exists()
    assert list((tmp_path / "replay").glob("*.npz"))


def test_smoke_training_pixels(tmp_path):
    cfg = tiny_config("v3", "dmc:cartpole-swingup", steps=200,
                      **{"env_opts.obs": "pixels", "env_opts.image_size": 16,
                         "env_opts.time_limit": 50})
    trainer = Trainer(cfg, tmp_path)
    assert trainer.agent.obs_key == "image"
    assert trainer.run() == 0
    _finite_losses(tmp_path)
    frag = next((tmp_path / "replay").glob("*.npz"))
    with np.load(frag) as z:
        assert z["image"].dtype == np.uint8 and z["image"].shape[1:] == (16, 16, 3)


def _state_equal(a: dict, b: dict, path: str = "") -> None:
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _state_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _state_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=path)
    else:
        assert a == b, path


def _train_cmd(logdir: Path, steps: int, every: int) -> list[str]:
    sets = {**TINY, "run.checkpoint_every": every}
    args = [sys.executable, "-m", "dreamer_fast", "train", "--size", "debug", "--steps",
            str(steps), "--logdir", str(logdir), "--no-progress"]
    for k, v in sets.items():
        args += ["--set", f"{k}={json.dumps(v) if isinstance(v, bool) else v}"]
    return args


def _wait_for(pred, proc, timeout: float) -> None:
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.2)


def test_matmul_precision_is_applied_for_the_run(tmp_path):
    with matmul_precision():  # restores the suite's value afterwards
        cfg = tiny_config("v3", "gym:Pendulum-v1", steps=0, matmul_precision="medium")
        Trainer(cfg, tmp_path)
        assert torch.get_float32_matmul_precision() == "medium"


def test_sigkill_then_resume_restores_everything(tmp_path):
    logdir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_train_cmd(logdir, 100000, 200), env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ckpt = logdir / CHECKPOINT
        _wait_for(lambda: ckpt.exists() and checkpoint.load(ckpt)["counters"]["step"] >= 400,
                  proc, 240)
    finally:
        proc.kill()  # SIGKILL: no chance to save
        proc.wait()
    saved = checkpoint.load(logdir / CHECKPOINT)
    assert saved["counters"]["updates"] > 0
    cfg = load_config(overrides={**TINY, "steps": saved["counters"]["step"] + 200})
    trainer = Trainer(cfg, logdir)
    assert trainer.resumed
    # weights, optimiser states, counters and RNG states are the saved ones
    _state_equal(trainer.agent.full_state_dict(), saved["agent"])
    _state_equal(trainer.counters, saved["counters"])
    replay = trainer.replay.state_dict()
    _state_equal(replay["rng"], saved["replay"]["rng"])
    # the checkpoint's fragments, then its unfinished episodes as one fragment each
    files = saved["replay"]["files"]
    assert replay["files"][:len(files)] == files
    assert len(replay["files"]) == len(files) + len(saved["replay"]["pending"])
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert len(trainer.replay) > 0
    # no metric record from after the checkpoint survives
    assert max(r["step"] for r in read_metrics(logdir)) <= saved["counters"]["step"]
    assert trainer.run() == 0
    final = checkpoint.load(logdir / CHECKPOINT)["counters"]
    assert final["step"] >= saved["counters"]["step"] + 200
    assert final["updates"] > saved["counters"]["updates"]


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    logdir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_train_cmd(logdir, 100000, 100000), env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_for(lambda: (logdir / "metrics.jsonl").exists()
              and any("wm/loss" in r for r in read_metrics(logdir)), proc, 240)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "checkpoint saved" in out
    saved = checkpoint.load(logdir / CHECKPOINT)
    assert saved["counters"]["step"] >= 100 and saved["counters"]["updates"] > 0


def test_fused_and_ref_backends_give_the_same_first_update(tmp_path):
    from dreamer_fast.bench.learner_cases import make_pair
    over = {k: v for k, v in TINY.items() if k.startswith(("model.", "run.batch", "behavior."))}
    pair = make_pair("v3", "debug", torch.device("cpu"), obs_dim=3, overrides=over)
    # a batch of real Pendulum steps
    cfg = tiny_config("v3", "gym:Pendulum-v1", steps=200, **{"run.train_ratio": 0})
    trainer = Trainer(cfg, tmp_path)
    trainer.run()
    batch = trainer.replay.sample(cfg.run.batch_size, cfg.run.batch_length)
    metrics = {}
    for name, agent in pair.items():
        torch.manual_seed(123)
        metrics[name] = agent.update(batch)
    fast, ref = metrics["fast"], metrics["eager"]
    for key in ("wm/loss", "wm/dec", "wm/reward", "wm/kl", "actor/loss", "critic/loss",
                "imag/return"):
        assert fast[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-5), key
    for (n, p), q in zip(pair["fast"].named_parameters(), pair["eager"].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)


def test_cli_bad_env_and_bad_config(tmp_path, capsys):
    assert main(["train", "--env", "gym:NoSuchEnv-v0", "--logdir", str(tmp_path / "a")]) == 2
    assert "gym:NoSuchEnv-v0" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main(["train", "--set", "model.nope=1", "--logdir", str(tmp_path / "b")]) == 2
    assert "'model.nope'" in capsys.readouterr().err
    assert main(["train", "--set", "behavior.lambda_=7", "--logdir", str(tmp_path / "c")]) == 2
    assert "'behavior.lambda_'" in capsys.readouterr().err


def test_eval_and_plot_cli(tmp_path, capsys):
    cfg = tiny_config("v3", "gym:Pendulum-v1", steps=300, **{"env_opts.time_limit": 40})
    assert Trainer(cfg, tmp_path).run() == 0
    assert main(["eval", "--logdir", str(tmp_path), "--episodes", "2", "--video",
                 "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(result["returns"]) == 2 and all(math.isfinite(r) for r in result["returns"])
    assert (tmp_path / "eval.gif").stat().st_size > 0
    assert main(["plot", "--logdir", str(tmp_path)]) == 0
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["eval", "--logdir", str(tmp_path / "missing")]) == 2


def test_return_scale_ema_reads_nothing_back_to_the_host(monkeypatch):
    """V3 return normalisation: S = max(1, hi - lo) with lo/hi the EMA (decay d) of the
    5th/95th return percentiles, the first update taking them as they are. Computed on
    the device without reading a value back (`.item()` would stall a GPU mid-update)."""
    from dreamer_fast.agents.behavior import ActorCritic

    cfg = tiny_config("v3", "gym:Pendulum-v1")
    ac = ActorCritic(cfg, feat_size=12, action_size=1, discrete=False, backend="ref")
    b = cfg.behavior
    gen = torch.Generator().manual_seed(3)
    rets = [torch.randn(5, 16, generator=gen) * s for s in (3.0, 0.2, 10.0)]

    def no_item(self):
        raise AssertionError("return_scale read a tensor back to the host")

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    lo = hi = None
    for ret in rets:
        q = torch.quantile(ret.flatten(), torch.tensor([b.return_norm_low, b.return_norm_high]))
        d = b.return_norm_decay
        lo = q[0] if lo is None else lo * d + (1 - d) * q[0]
        hi = q[1] if hi is None else hi * d + (1 - d) * q[1]
        scale = ac.return_scale(ret)
        torch.testing.assert_close(ac.ret_lo, lo, rtol=0, atol=0)
        torch.testing.assert_close(ac.ret_hi, hi, rtol=0, atol=0)
        torch.testing.assert_close(scale, torch.clamp(hi - lo, min=1.0), rtol=0, atol=0)
    assert "ret_q" not in ac.state_dict()  # checkpoints keep their keys
