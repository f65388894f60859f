"""Replay: sequence sampling, episode boundaries, ring overwrite and reload from disk."""

from __future__ import annotations

import numpy as np
import pytest

from dreamer_fast.agents.replay import Replay


def _episode(start: int, length: int, dim: int = 2):
    """Steps whose vector obs holds a global step id, for checking what comes back."""
    for t in range(length):
        yield {"vector": np.full(dim, start + t, np.float32),
               "action": np.zeros(1, np.float32), "reward": np.float32(t),
               "is_first": t == 0, "is_last": t == length - 1, "is_terminal": False}


def test_sample_shapes_and_boundaries():
    r = Replay(capacity=1000, seed=0)
    for s in _episode(0, 30):
        r.add(s, worker=0)
    for s in _episode(100, 20):
        r.add(s, worker=0)
    assert len(r) == 50
    b = r.sample(8, 10)
    assert b["vector"].shape == (8, 10, 2) and b["reward"].shape == (8, 10)
    assert b["is_first"].dtype == bool and b["is_first"][:, 0].all()
    ids = b["vector"][..., 0]
    # within a window steps are consecutive unless a new episode starts (is_first)
    jumps = np.diff(ids, axis=1) != 1
    assert not (jumps & ~b["is_first"][:, 1:]).any()


def test_episodes_of_different_workers_do_not_mix_inside_a_window():
    r = Replay(capacity=1000, chunk=7, seed=1)
    a, c = list(_episode(0, 20)), list(_episode(1000, 20))
    for sa, sc in zip(a, c):  # interleaved arrival
        r.add(sa, worker=0)
        r.add(sc, worker=1)
    b = r.sample(64, 12)
    ids = b["vector"][..., 0]
    jumps = np.diff(ids, axis=1) != 1
    assert not (jumps & ~b["is_first"][:, 1:]).any()


def test_ring_overwrites_oldest_and_marks_the_cut():
    r = Replay(capacity=25, chunk=1000, seed=2)
    for k in range(4):
        for s in _episode(100 * k, 10):
            r.add(s)
    assert len(r) == 25
    ids = set(r._data["vector"][:, 0].tolist())
    assert 0 not in ids and 310 - 1 in ids  # the newest episode is there, the oldest gone
    b = r.sample(200, 8)
    jumps = np.diff(b["vector"][..., 0], axis=1) != 1
    assert not (jumps & ~b["is_first"][:, 1:]).any()


def test_saved_fragments_reload(tmp_path):
    r = Replay(capacity=100, directory=tmp_path, seed=3)
    for s in _episode(0, 12):
        r.add(s)
    for s in _episode(50, 5):  # unfinished: stays pending, not saved
        if not s["is_last"]:
            r.add(s)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    r2 = Replay(capacity=100, directory=tmp_path, seed=3)
    assert r2.load() == 12 and len(r2) == 12
    np.testing.assert_array_equal(r2._data["vector"][:12], r._data["vector"][:12])
    # new fragments continue the file numbering
    for s in _episode(200, 3):
        r2.add(s)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_sample_too_early_raises():
    r = Replay(capacity=10)
    with pytest.raises(ValueError, match="fewer than a sequence"):
        r.sample(1, 4)
