"""Replay: a ring buffer of steps with uniform sampling of fixed-length sequences.

A *step* is a dict of numpy values: the observation (``vector`` float32 ``[D]`` or
``image`` uint8 ``[H, W, 3]``), ``action [A]`` (the action taken *before* this step,
zeros at an episode start), ``reward`` (received on arriving here), ``is_first``,
``is_last``, ``is_terminal``.

Steps arrive per environment (:meth:`Replay.add`) and are kept in a pending fragment
per environment until the episode ends or ``chunk`` steps accumulated; the fragment is
then inserted into the ring (capacity in steps, oldest data overwritten) and written to
``directory`` as one ``.npz`` file, so a resumed run reloads its data (:meth:`load`).

Sampling draws ``B`` start indices uniformly over the ring and returns ``[B, T, ...]``
windows. Windows may cross fragment boundaries; the model must not carry its state
across one, so the returned ``is_first`` is true at the first step of every window, at
every episode start and at every fragment start (fragments of different environments
are interleaved in the ring).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

KEYS_FLAGS = ("is_first", "is_last", "is_terminal")


class Replay:
    def __init__(self, capacity: int, directory: str | os.PathLike | None = None,
                 chunk: int = 1024, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"Replay: `capacity` must be >= 1, got {capacity}")
        if chunk < 1:
            raise ValueError(f"Replay: `chunk` must be >= 1, got {chunk}")
        self.capacity, self.chunk = int(capacity), int(chunk)
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.rng = np.random.default_rng(seed)
        self._data: dict[str, np.ndarray] = {}
        self._start = np.zeros(self.capacity, bool)  # fragment starts
        self._ptr = 0      # next write position
        self._size = 0     # filled positions
        self._pending: dict[int, list[dict]] = {}
        self._files = self._next_file_index()

    def __len__(self) -> int:
        return self._size

    # ---- adding ------------------------------------------------------------------------

    def add(self, step: dict, worker: int = 0) -> None:
        """Append one step of environment ``worker``."""
        pending = self._pending.setdefault(worker, [])
        pending.append(step)
        if step["is_last"] or len(pending) >= self.chunk:
            self._pending[worker] = []
            self._insert(_stack(pending), save=True)

    def _insert(self, frag: dict[str, np.ndarray], save: bool) -> None:
        n = len(frag["reward"])
        if not self._data:
            self._data = {k: np.zeros((self.capacity, *v.shape[1:]), v.dtype)
                          for k, v in frag.items()}
        if set(frag) != set(self._data):
            raise ValueError(f"Replay: step keys {sorted(frag)} differ from the stored keys "
                             f"{sorted(self._data)}")
        if save and self.directory is not None:
            self._save(frag)
        if n > self.capacity:  # keep the newest
            frag = {k: v[-self.capacity:] for k, v in frag.items()}
            n = self.capacity
        idx = (self._ptr + np.arange(n)) % self.capacity
        for k, v in frag.items():
            self._data[k][idx] = v
        self._start[idx] = False
        self._start[idx[0]] = True
        self._ptr = int((self._ptr + n) % self.capacity)
        self._size = min(self.capacity, self._size + n)
        if self._size == self.capacity:
            # The oldest remaining step may be the middle of an overwritten fragment.
            self._start[self._ptr] = True

    # ---- sampling ----------------------------------------------------------------------

    def sample(self, batch: int, length: int) -> dict[str, np.ndarray]:
        """``[batch, length, ...]`` windows drawn uniformly (see the module docstring)."""
        if self._size < length:
            raise ValueError(f"Replay: {self._size} steps stored, fewer than a sequence of "
                             f"{length}")
        if self._size < self.capacity:
            starts = self.rng.integers(0, self._size - length + 1, size=batch)
            idx = starts[:, None] + np.arange(length)[None]
        else:
            starts = self.rng.integers(0, self.capacity, size=batch)
            idx = (starts[:, None] + np.arange(length)[None]) % self.capacity
        out = {k: v[idx] for k, v in self._data.items()}
        first = out["is_first"] | self._start[idx]
        first[:, 0] = True
        out["is_first"] = first
        return out

    # ---- persistence -------------------------------------------------------------------

    def _next_file_index(self) -> int:
        if self.directory is None:
            return 0
        idx = [int(m.group(1)) for p in self.directory.glob("*.npz")
               if (m := re.match(r"(\d+)-", p.name))]
        return max(idx, default=-1) + 1

    def _save(self, frag: dict[str, np.ndarray]) -> None:
        n = len(frag["reward"])
        path = self.directory / f"{self._files:08d}-{n}.npz"
        self._files += 1
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **frag)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load(self) -> int:
        """Insert the newest saved fragments (up to capacity) in their saved order;
        returns the number of steps loaded."""
        if self.directory is None:
            return 0
        files = sorted(self.directory.glob("*.npz"))
        chosen, total = [], 0
        for p in reversed(files):
            chosen.append(p)
            total += int(p.stem.split("-")[1])
            if total >= self.capacity:
                break
        loaded = 0
        for p in reversed(chosen):
            with np.load(p) as z:
                frag = {k: z[k] for k in z.files}
            self._insert(frag, save=False)
            loaded += len(frag["reward"])
        return loaded

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def _stack(steps: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(s[k]) for s in steps]) for k in steps[0]}
