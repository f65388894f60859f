"""The learning suite's report (dreamer_fast/bench/learning.py) on a hand-written
metrics.jsonl: the numbers in the summary, the files written and the table row."""

from __future__ import annotations

import json

import pytest

from dreamer_fast.bench import learning


def _write_metrics(logdir, returns, step_per_ep=1000, t0=1000.0, dt=60.0):
    logdir.mkdir(parents=True)
    lines = []
    for i, r in enumerate(returns):
        step = (i + 1) * step_per_ep
        lines.append({"step": step, "time": t0 + i * dt, "episode/return": r})
        lines.append({"step": step, "time": t0 + i * dt, "train/updates": 10.0 * (i + 1)})
    (logdir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_report_summarises_a_partial_run_and_writes_its_files(tmp_path):
    row = learning.ROWS["v1-pendulum"]
    rets = [-1500.0 + 100 * i for i in range(12)]   # 12 episodes, 12K of the 20K steps
    _write_metrics(tmp_path / "run", rets)
    out = tmp_path / "results"
    s = learning.write_report(tmp_path / "run", row, 0, out, "dev", "2026-01-01")
    last10 = rets[2:]
    assert s["final_mean_last10"] == pytest.approx(sum(last10) / 10)
    assert s["best_running_mean"] == pytest.approx(sum(last10) / 10)  # rising curve
    assert s["running_mean"][0] == [1000, -1500.0]
    assert (s["steps"], s["complete"], s["episodes"]) == (12000, False, 12)
    assert s["wall_s"] == pytest.approx(11 * 60.0)
    assert s["updates"] == 120 and s["updates_per_s"] == pytest.approx(120 / 660, abs=1e-3)
    assert s["goal_met"] is (s["final_mean_last10"] >= -250)
    stem = "dev-2026-01-01-learning-v1-pendulum-seed0"
    for ext in (".json", ".md", ".png"):
        assert (out / (stem + ext)).exists()
    md = (out / (stem + ".md")).read_text()
    assert "12000 of 20000" in md and "not met" in md
    table = learning.table(out)
    assert "| v1-pendulum | gym:Pendulum-v1 | 0 | 12,000 of 20,000 | -850.0 | -850.0 | ≥ -250 not met | 11 | 0.18 |" in table


def test_a_pause_between_records_is_left_out_of_the_wall_time(tmp_path):
    row = learning.ROWS["v3-pendulum"]
    _write_metrics(tmp_path / "run", [-1000.0, -900.0], dt=60.0)
    path = tmp_path / "run" / "metrics.jsonl"
    later = json.dumps({"step": 3000, "time": 1060.0 + 3600.0, "episode/return": -800.0})
    path.write_text(path.read_text() + later + "\n")
    s = learning.summarize(tmp_path / "run", row, 0)
    assert s["paused_s"] == pytest.approx(3600.0)
    assert s["wall_s"] == pytest.approx(60.0)
