"""Learning curves from ``metrics.jsonl``: episode return vs env steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dreamer_fast.agents.logger import episode_returns, read_metrics


def summary(logdir: str | Path, window: int = 10) -> dict:
    """Episodes, final step and the mean return of the last ``window`` episodes, plus the
    first env step at which that running mean reached each of a few thresholds."""
    eps = episode_returns(read_metrics(logdir))
    if not eps:
        return {"episodes": 0}
    steps = np.array([s for s, _ in eps])
    rets = np.array([r for _, r in eps])
    running = np.array([rets[max(0, i - window + 1): i + 1].mean() for i in range(len(rets))])
    return {"episodes": len(eps), "last_step": int(steps[-1]),
            f"mean_last{window}": float(running[-1]), "best_running_mean": float(running.max()),
            "running_mean": [[int(s), round(float(r), 2)] for s, r in zip(steps, running)]}


def plot(logdir: str | Path, out: str | Path | None = None, window: int = 10,
         title: str | None = None) -> Path:
    """Writes a PNG (default ``<logdir>/curve.png``): every episode's return (dots) and
    the running mean of the last ``window`` episodes (line)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logdir = Path(logdir)
    eps = episode_returns(read_metrics(logdir))
    if not eps:
        raise ValueError(f"{logdir}/metrics.jsonl has no finished episodes to plot")
    steps = np.array([s for s, _ in eps])
    rets = np.array([r for _, r in eps])
    running = np.array([rets[max(0, i - window + 1): i + 1].mean() for i in range(len(rets))])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.scatter(steps, rets, s=8, alpha=0.4, label="episode return")
    ax.plot(steps, running, lw=2, label=f"mean of last {window}")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title(title or str(logdir.name))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    out = Path(out) if out is not None else logdir / "curve.png"
    fig.savefig(out)
    plt.close(fig)
    return out
