"""Replay: a ring buffer of steps with uniform sampling of fixed-length sequences.

A *step* is a dict of numpy values: the observation (``vector`` float32 ``[D]`` or
``image`` uint8 ``[H, W, 3]``), ``action [A]`` (the action taken *before* this step,
zeros at an episode start), ``reward`` (received on arriving here), ``is_first``,
``is_last``, ``is_terminal``.

Steps arrive per environment (:meth:`Replay.add`) and are kept in a pending fragment
per environment until the episode ends or ``chunk`` steps accumulated; the fragment is
then inserted into the ring (capacity in steps, oldest data overwritten) and written to
``directory`` as one ``.npz`` file, so a resumed run reloads its data (:meth:`load`).

The checkpoint records the fragments the ring holds (:meth:`state_dict`: their file
names, oldest first, each with its number of steps); a resume loads exactly those
(:meth:`load_state_dict` with ``load=True``) and removes the fragments written after
the checkpoint, so replay and counters agree after a kill. :meth:`flush` inserts (and
writes) the unfinished fragments, at the end of a run and on SIGINT/SIGTERM.

Sampling draws ``B`` start indices uniformly over the ring and returns ``[B, T, ...]``
windows. Windows may cross fragment boundaries; the model must not carry its state
across one, so the returned ``is_first`` is true at the first step of every window, at
every episode start and at every fragment start (fragments of different environments
are interleaved in the ring).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path

import numpy as np

KEYS_FLAGS = ("is_first", "is_last", "is_terminal")


class ReplayError(ValueError):
    """A replay fragment on disk that cannot be read; the message names the file."""


def read_fragment(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one saved fragment; :class:`ReplayError` naming the file when it is
    truncated or not a fragment."""
    try:
        with np.load(path) as z:
            frag = {k: z[k] for k in z.files}
    except Exception as e:  # BadZipFile, EOFError, zlib errors, ...
        raise ReplayError(f"replay fragment {path} cannot be read ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120] if str(e) else 'truncated'}); "
                          f"delete that file to resume without its steps") from None
    n = {len(v) for v in frag.values()}
    if "reward" not in frag or len(n) != 1:
        raise ReplayError(f"replay fragment {path} is not a replay fragment (keys "
                          f"{sorted(frag)}); delete that file to resume without it")
    return frag


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
        self._held: list[tuple[str, int]] = []  # (file name, steps) in the ring, oldest first

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

    def flush(self) -> int:
        """Insert (and write) every unfinished fragment; returns the steps flushed."""
        n = 0
        for worker, pending in self._pending.items():
            if pending:
                self._pending[worker] = []
                self._insert(_stack(pending), save=True)
                n += len(pending)
        return n

    def _insert(self, frag: dict[str, np.ndarray], save: bool,
                name: str | None = None) -> None:
        n = len(frag["reward"])
        if not self._data:
            self._data = {k: np.zeros((self.capacity, *v.shape[1:]), v.dtype)
                          for k, v in frag.items()}
        if set(frag) != set(self._data):
            raise ValueError(f"Replay: step keys {sorted(frag)} differ from the stored keys "
                             f"{sorted(self._data)}")
        if save and self.directory is not None:
            name = self._save(frag)
        if name is not None:
            self._held.append((name, n))
            total = sum(k for _, k in self._held)
            while self._held and total - self._held[0][1] >= self.capacity:
                total -= self._held.pop(0)[1]
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
        return path.name

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
            frag = read_fragment(p)
            self._insert(frag, save=False, name=p.name)
            loaded += len(frag["reward"])
        return loaded

    def load_files(self, held: list[tuple[str, int]]) -> int:
        """Insert exactly the fragments ``held`` (``(name, steps)``, oldest first, as in
        :meth:`state_dict`) and remove every other fragment file of the directory written
        after the newest of them; returns the number of steps loaded. A listed file that
        is missing is skipped with a warning; one that is torn raises
        :class:`ReplayError`."""
        loaded = 0
        names = {name for name, _ in held}
        for name, n in held:
            path = self.directory / name
            if not path.exists():
                print(f"[train] warning: replay fragment {path} ({n} steps) is missing; "
                      f"resuming without it", flush=True)
                continue
            frag = read_fragment(path)
            if len(frag["reward"]) != n:
                raise ReplayError(f"replay fragment {path} holds {len(frag['reward'])} "
                                  f"steps, the checkpoint expects {n}; delete that file "
                                  f"to resume without it")
            self._insert(frag, save=False, name=name)
            loaded += n
        self.discard_after(max((_index(name) for name in names), default=-1), names)
        return loaded

    def discard_after(self, newest: int, keep: Collection[str] = ()) -> int:
        """Remove every fragment file numbered above ``newest`` that is not in ``keep``
        (written after the checkpoint being resumed, or, with ``newest=-1``, by a run
        stopped before its first checkpoint: their steps are collected again) and every
        torn ``.tmp``; returns the number of fragments removed."""
        removed = 0
        for p in self.directory.glob("*.npz"):
            i = _index(p.name)
            if i is not None and i > newest and p.name not in keep:
                p.unlink()
                removed += 1
        for p in self.directory.glob("*.tmp"):
            p.unlink()
        self._files = self._next_file_index()
        return removed

    def state_dict(self) -> dict:
        """The sampling RNG, the fragments the ring holds (``files``: ``(name, steps)``
        oldest first) and the unfinished fragments (``pending``: worker -> arrays)."""
        return {"rng": self.rng.bit_generator.state, "files": list(self._held),
                "pending": {w: _stack(p) for w, p in self._pending.items() if p}}

    def load_state_dict(self, state: dict, load: bool = False) -> int:
        """Restore the sampling RNG; with ``load``, also the fragments the state lists
        (:meth:`load_files`; all saved ones for a state without a list). Returns the
        steps loaded."""
        self.rng.bit_generator.state = state["rng"]
        if not load or self.directory is None:
            return 0
        if "files" not in state:
            return self.load()
        loaded = self.load_files([(str(a), int(b)) for a, b in state["files"]])
        # the checkpoint's unfinished episodes end there: one fragment each
        for w in sorted(state.get("pending", {})):
            frag = state["pending"][w]
            self._insert({k: np.asarray(v) for k, v in frag.items()}, save=True)
            loaded += len(frag["reward"])
        return loaded


def _index(name: str) -> int | None:
    m = re.match(r"(\d+)-", name)
    return int(m.group(1)) if m else None


def _stack(steps: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(s[k]) for s in steps]) for k in steps[0]}
