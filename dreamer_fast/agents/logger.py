"""Metrics: one JSON object per line in ``<logdir>/metrics.jsonl`` and TensorBoard
scalars in ``<logdir>/tb``.

Each record has ``step`` (env steps), ``time`` (seconds since the epoch) and scalar
values under slash-separated names (``episode/return``, ``wm/loss``, ``train/fps``, ...).
"""

from __future__ import annotations

import json
import time
from pathlib import Path


class Logger:
    def __init__(self, logdir: str | Path, tensorboard: bool = True,
                 purge_step: int | None = None) -> None:
        """``purge_step``: TensorBoard hides the events at that step and later already
        in ``<logdir>/tb`` (a killed run's tail; metrics.jsonl is truncated by the
        trainer)."""
        self.path = Path(logdir) / "metrics.jsonl"
        self._file = open(self.path, "a", buffering=1)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional at runtime; jsonl is not
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(str(Path(logdir) / "tb"), purge_step=purge_step)

    def write(self, step: int, values: dict[str, float]) -> None:
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: float(v) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, float(v), int(step))

    def flush(self) -> None:
        self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(logdir: str | Path) -> list[dict]:
    path = Path(logdir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.jsonl in {logdir}")
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill
                continue
    return out


def episode_returns(records: list[dict]) -> list[tuple[int, float]]:
    """``(step, return)`` of every finished training episode, in step order."""
    eps = [(r["step"], r["episode/return"]) for r in records if "episode/return" in r]
    return sorted(eps, key=lambda x: x[0])
