"""Atomic checkpoints, with the previous one kept, and RNG state capture.

:func:`save_atomic` refuses a state holding a non-finite floating-point tensor, writes
to a temporary file in the destination's directory, fsyncs it, renames the current
destination to ``<name>.prev.pt`` (with ``keep_prev``), ``os.replace``-s the temporary
file over the destination and fsyncs the directory: a crash at any point leaves the old
or the new checkpoint (or both), never a torn one. :func:`load_with_fallback` reads the
newest readable of the two, warning when it has to fall back.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointError(ValueError):
    """A checkpoint that cannot be written (non-finite state) or read; the message names
    the file."""


def prev_path(path: str | os.PathLike) -> Path:
    """``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def named_tensors(obj, where: str = ""):
    """Yields ``(path, tensor)`` for every tensor of a nested state (dicts, lists, tuples),
    in a fixed order: dict order, then index order; ``path`` as ``agent.wm.weight[0]``."""
    if isinstance(obj, torch.Tensor):
        yield where or "<root>", obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from named_tensors(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from named_tensors(v, f"{where}[{i}]")


def nonfinite_tensors(obj, where: str = "") -> list[str]:
    """The paths of the floating-point tensors holding a NaN or inf in a nested state."""
    return [path for path, t in named_tensors(obj, where)
            if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]


def save_atomic(obj, path: str | os.PathLike, keep_prev: bool = False) -> None:
    path = Path(path)
    bad = nonfinite_tensors(obj)
    if bad:
        raise CheckpointError(f"refusing to write {path}: {len(bad)} tensor(s) hold NaN/inf "
                              f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''})")
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    if keep_prev and path.exists():
        os.replace(path, prev_path(path))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def load(path: str | os.PathLike, device: torch.device | str = "cpu"):
    # The checkpoint holds numpy RNG states and Python objects besides tensors.
    return torch.load(path, map_location=device, weights_only=False)


def _read(path: Path, device, required: tuple[str, ...]):
    try:
        state = load(path, device)
    except Exception as e:  # torn zip, EOF, unpickling garbage, ...
        return None, f"{type(e).__name__}: {e}".splitlines()[0][:200]
    if not isinstance(state, dict) or any(k not in state for k in required):
        return None, f"not a checkpoint of this trainer (missing {list(required)})"
    return state, None


def load_with_fallback(path: str | os.PathLike, device: torch.device | str = "cpu",
                       required: tuple[str, ...] = ()) -> tuple[dict, Path]:
    """``(state, the file read)``: ``path``, or ``<name>.prev.pt`` with a warning when
    ``path`` is missing or unreadable; :class:`CheckpointError` naming both files when
    neither can be read."""
    path = Path(path)
    prev = prev_path(path)
    errors = []
    for p in (path, prev):
        if not p.exists():
            errors.append(f"{p}: missing")
            continue
        state, err = _read(p, device, required)
        if state is not None:
            if p != path:
                import warnings
                msg = (f"[train] warning: {errors[0]}; falling back to the previous "
                       f"checkpoint {p}")
                print(msg, flush=True)
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
            return state, p
        errors.append(f"{p}: {err}")
    raise CheckpointError("cannot read a checkpoint: " + "; ".join(errors)
                          + ". Delete the run directory (or move the broken file away) to "
                            "start afresh, or restore the file from a backup")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
