"""The learning suite: train each algorithm on a few tasks with the defaults and write,
per run, a curve PNG, a summary ``.md`` and the running means ``.json`` under
``benchmarks/results/``, plus one table of all runs found there (for the README).

``python -m dreamer_fast.bench.learning run [--rows ...] [--seeds 0,1] [--jobs 2]``
trains the rows (each one ``dreamer-fast train`` subprocess, ``--set threads=1``; an
interrupted run resumes from its logdir on the next call) and reports each as it
finishes; ``report --row R --seed S`` writes the results of a logdir as it is now (also
a run that has not reached its step count: the summary says how far it got);
``table`` prints and writes the table of every learning result in the folder.
``scripts/learning_suite.sh`` is ``run`` with ``nice -n 10``.

Per run: ``wall`` = the time from the first to the last record of ``metrics.jsonl``
(prefill included, pauses longer than ``PAUSE_S`` between two records left out and
stated), ``updates/s`` = learner updates / that time (environment stepping,
acting and logging included, so it is the whole loop's rate per update); ``final`` = the
mean return of the last 10 training episodes; ``best`` = the best such running mean.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

#: The device tag in result names: the 2-core CPU this suite was sized for.
DEFAULT_DEVICE = "amd-epyc-2-threads"
#: A silence longer than this between two consecutive metric records is a pause (the
#: run stopped and resumed), left out of the wall time.
PAUSE_S = 600.0


@dataclass(frozen=True)
class LearningRow:
    name: str
    algo: str
    env: str
    steps: int
    goal: float | None
    args: tuple[str, ...] = ()

    def command(self, seed: int, logdir: Path, threads: int) -> list[str]:
        return [sys.executable, "-m", "dreamer_fast", "train", "--algo", self.algo,
                "--env", self.env, "--steps", str(self.steps), "--seed", str(seed),
                "--logdir", str(logdir), "--no-progress", "--set", f"threads={threads}",
                *self.args]


ROWS = {r.name: r for r in [
    LearningRow("v1-pendulum", "v1", "gym:Pendulum-v1", 20_000, -250.0),
    LearningRow("v2-pendulum", "v2", "gym:Pendulum-v1", 20_000, -250.0),
    LearningRow("v3-pendulum", "v3", "gym:Pendulum-v1", 20_000, -250.0),
    # CartPole-v1's own "solved" threshold
    LearningRow("v3-cartpole", "v3", "gym:CartPole-v1", 20_000, 475.0),
    LearningRow("v3-dmc-cartpole-swingup", "v3", "dmc:cartpole-swingup", 100_000, 750.0,
                ("--set", "env_opts.obs=proprio")),
    LearningRow("v3-dmc-cartpole-swingup-pixels", "v3", "dmc:cartpole-swingup", 100_000,
                None, ("--pixels",)),
]}


def result_stem(device: str, date: str, row: str, seed: int) -> str:
    return f"{device}-{date}-learning-{row}-seed{seed}"


def summarize(logdir: Path, row: LearningRow, seed: int, window: int = 10) -> dict:
    """The measured numbers of one run directory (see the module docstring)."""
    from dreamer_fast.agents.logger import episode_returns, read_metrics

    records = read_metrics(logdir)
    if not records:
        raise ValueError(f"{logdir}/metrics.jsonl is empty")
    eps = episode_returns(records)
    rets = [r for _, r in eps]
    running = [sum(rets[max(0, i - window + 1): i + 1]) / len(rets[max(0, i - window + 1): i + 1])
               for i in range(len(rets))]
    step = max(r["step"] for r in records)
    updates = max((r.get("train/updates", 0.0) for r in records), default=0.0)
    # a run paused or stopped and resumed shows as a long silence between two records
    # (they come every `run.log_every` env steps, a minute or two here): not counted
    times = sorted(r["time"] for r in records)
    gaps = [b - a for a, b in zip(times, times[1:])]
    paused = sum(g for g in gaps if g > PAUSE_S)
    wall = times[-1] - times[0] - paused
    final = running[-1] if running else None
    return {
        "row": row.name, "algo": row.algo, "env": row.env, "seed": seed,
        "target_steps": row.steps, "steps": int(step), "complete": step >= row.steps,
        "episodes": len(eps), "final_mean_last10": final,
        "best_running_mean": max(running) if running else None, "goal": row.goal,
        "goal_met": (final is not None and row.goal is not None and final >= row.goal),
        "wall_s": round(wall, 1), "paused_s": round(paused, 1), "updates": int(updates),
        "updates_per_s": round(updates / wall, 3) if wall > 0 else None,
        "command": " ".join(["dreamer-fast", *row.command(seed, Path("<logdir>"), 1)[3:]]),
        "running_mean": [[int(s), round(float(r), 2)] for (s, _), r in zip(eps, running)],
    }


def _fmt(x, spec: str = ".1f") -> str:
    return "–" if x is None else format(x, spec)


def write_report(logdir: Path, row: LearningRow, seed: int, out: Path, device: str,
                 date: str) -> dict:
    """``<stem>.json`` (the summary with the running means), ``<stem>.md`` and
    ``<stem>.png`` in ``out`` for the run in ``logdir``."""
    from dreamer_fast.agents.plot import plot

    s = summarize(logdir, row, seed)
    s.update(device=device, date=date)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / result_stem(device, date, row.name, seed)
    stem.with_suffix(".json").write_text(json.dumps(s, indent=1) + "\n")
    if s["episodes"]:
        plot(logdir, stem.with_suffix(".png"),
             title=f"{row.algo} {row.env} seed {seed} ({s['steps']} env steps)")
    goal = "none set" if row.goal is None else (
        f"≥ {row.goal:g}: {'met' if s['goal_met'] else 'not met'}")
    reached = (f"{s['steps']} of {row.steps}" if not s["complete"] else f"{s['steps']}")
    md = [f"# Learning run: {row.algo} on {row.env}, seed {seed}", "",
          f"- device: {device} (1 torch thread, the machine shared with other jobs), {date}",
          f"- command: `{s['command']}`",
          f"- env steps reached: {reached}",
          f"- episodes: {s['episodes']}",
          f"- mean return of the last 10 episodes: {_fmt(s['final_mean_last10'])}",
          f"- best running mean (10 episodes): {_fmt(s['best_running_mean'])}",
          f"- goal {goal}",
          f"- wall time: {s['wall_s'] / 60:.1f} min"
          + (f" (not counting {s['paused_s'] / 60:.0f} min paused)" if s["paused_s"] else "")
          + f"; learner updates: {s['updates']} "
          f"({_fmt(s['updates_per_s'], '.2f')} updates/s over the whole run)",
          f"- curve: `{stem.with_suffix('.png').name}`, running means: "
          f"`{stem.with_suffix('.json').name}`", ""]
    stem.with_suffix(".md").write_text("\n".join(md))
    return s


def table(out: Path) -> str:
    """A Markdown table of every learning result (``*-learning-*.json``) in ``out``."""
    rows = []
    order = list(ROWS)
    for path in sorted(out.glob("*-learning-*-seed*.json")):
        s = json.loads(path.read_text())
        rows.append(s)
    rows.sort(key=lambda s: (order.index(s["row"]) if s["row"] in order else 99, s["seed"],
                             s["date"]))
    lines = ["| run | env | seed | env steps | final return (last 10) | best running mean "
             "| goal | wall (min) | updates/s | device, date |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        steps = f"{s['steps']:,}" + ("" if s["complete"] else f" of {s['target_steps']:,}")
        goal = "–" if s["goal"] is None else (
            f"≥ {s['goal']:g} {'met' if s['goal_met'] else 'not met'}")
        # the row name, not the algorithm alone: it tells proprio from pixel runs apart
        lines.append(f"| {s['row']} | {s['env']} | {s['seed']} | {steps} | "
                     f"{_fmt(s['final_mean_last10'])} | {_fmt(s['best_running_mean'])} | "
                     f"{goal} | {s['wall_s'] / 60:.0f} | {_fmt(s['updates_per_s'], '.2f')} | "
                     f"{s['device']}, {s['date']} |")
    return "\n".join(lines) + "\n"


def _run_rows(todo: list[tuple[LearningRow, int]], args) -> int:
    """Trains ``todo`` with at most ``args.jobs`` subprocesses at a time, reporting each."""
    pending = list(todo)
    running: list[tuple[subprocess.Popen, LearningRow, int, Path]] = []
    code = 0
    while pending or running:
        while pending and len(running) < args.jobs:
            row, seed = pending.pop(0)
            logdir = args.logroot / f"{row.name}-seed{seed}"
            logdir.mkdir(parents=True, exist_ok=True)
            cmd = row.command(seed, logdir, args.threads)
            if args.steps:
                cmd[cmd.index("--steps") + 1] = str(args.steps)
            print(f"[learning] start {row.name} seed {seed}: {' '.join(cmd)}", flush=True)
            log = open(logdir / "train.log", "a")
            env = dict(os.environ)
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            env.setdefault("MUJOCO_GL", "egl")
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                             env=env), row, seed, logdir))
        time.sleep(5)
        for item in list(running):
            proc, row, seed, logdir = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0:
                print(f"[learning] {row.name} seed {seed} exited with {proc.returncode}; "
                      f"see {logdir / 'train.log'}", flush=True)
                code = code or proc.returncode
            s = write_report(logdir, row, seed, args.out, args.device, args.date)
            print(f"[learning] {row.name} seed {seed}: {s['steps']} env steps, final "
                  f"{_fmt(s['final_mean_last10'])}, {s['wall_s'] / 60:.1f} min, "
                  f"{_fmt(s['updates_per_s'], '.2f')} updates/s", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dreamer_fast.bench.learning",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    common.add_argument("--device", default=DEFAULT_DEVICE, help="device tag in result names")
    common.add_argument("--date", default=_dt.date.today().isoformat())
    common.add_argument("--logroot", type=Path, default=Path("runs/learning"))
    r = sub.add_parser("run", parents=[common], help="train rows and report each")
    r.add_argument("--rows", default=",".join(n for n in ROWS if not n.endswith("pixels")),
                   help=f"comma-separated, of {', '.join(ROWS)} (default: all but pixels)")
    r.add_argument("--seeds", default="0")
    r.add_argument("--jobs", type=int, default=2, help="concurrent runs")
    r.add_argument("--threads", type=int, default=1, help="torch threads per run")
    r.add_argument("--steps", type=int, default=0,
                   help="override every row's env steps (0 = the row's own)")
    q = sub.add_parser("report", parents=[common], help="report one logdir as it is now")
    q.add_argument("--row", required=True, choices=list(ROWS))
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--logdir", type=Path, help="default <logroot>/<row>-seed<seed>")
    sub.add_parser("table", parents=[common], help="print and write the table of results")
    args = p.parse_args(argv)

    if args.cmd == "run":
        names = [x.strip() for x in args.rows.split(",") if x.strip()]
        unknown = [n for n in names if n not in ROWS]
        if unknown:
            p.error(f"unknown --rows {unknown}; expected some of {list(ROWS)}")
        seeds = [int(x) for x in args.seeds.split(",")]
        code = _run_rows([(ROWS[n], s) for s in seeds for n in names], args)
        print(table(args.out))
        return code
    if args.cmd == "report":
        logdir = args.logdir or args.logroot / f"{args.row}-seed{args.seed}"
        s = write_report(logdir, ROWS[args.row], args.seed, args.out, args.device, args.date)
        print(json.dumps({k: v for k, v in s.items() if k != "running_mean"}, indent=1))
        return 0
    text = table(args.out)
    path = args.out / f"{args.device}-{args.date}-learning.md"
    path.write_text("# Learning suite\n\n" + text)
    print(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
