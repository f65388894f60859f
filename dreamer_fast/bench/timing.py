"""Interleaved timing of competing implementations in one process.

Timings on a shared 2-core machine swing by several x between runs, so we never
compare numbers from different runs: every round runs each candidate once (in a
rotating order), and we report per-candidate medians and their ratios.

On CUDA each run is bracketed by CUDA events (device time of everything the run
enqueued); on CPU by ``time.perf_counter``.

Float32 matmul precision (``torch.set_float32_matmul_precision``) is a dimension of
some suites: :func:`at_precision` makes a candidate set it in its untimed prepare step,
so one interleaved round can hold the same implementation at several precisions.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

# A case factory builds fresh state (untimed) and returns the thunk to time.
Prepare = Callable[[], Callable[[], object]]

#: Values of ``torch.set_float32_matmul_precision``. On CPU, ``medium`` lets oneDNN run
#: float32 GEMMs with bfloat16 arithmetic where the CPU has it (AVX512-BF16, AMX);
#: ``high`` allows TF32 on GPUs that have it.
MATMUL_PRECISIONS = ("highest", "high", "medium")


@contextlib.contextmanager
def matmul_precision(precision: str | None = None):
    """Sets the float32 matmul precision for the block (``None``: leave it) and restores
    the previous value on exit, also after candidates changed it inside the block."""
    previous = torch.get_float32_matmul_precision()
    try:
        if precision is not None:
            torch.set_float32_matmul_precision(precision)
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def at_precision(prepare: Prepare, precision: str) -> Prepare:
    """``prepare`` with the float32 matmul precision set to ``precision`` first (untimed);
    the timed run follows its prepare directly, so it runs at that precision. Call inside
    :func:`matmul_precision` to restore the caller's value afterwards. ``precision`` is
    one of :data:`MATMUL_PRECISIONS` (the CLI checks it; torch's setter rejects others)."""

    def wrapped():
        torch.set_float32_matmul_precision(precision)
        return prepare()
    return wrapped


def first_call_s(prepare: Prepare, device: torch.device) -> float:
    """Wall time of one ``prepare()()`` (for a compiled candidate's first call: tracing
    and compiling plus one run)."""
    t0 = time.perf_counter()
    prepare()()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


@dataclass
class Timing:
    median_s: float
    runs: int

    @property
    def median_us(self) -> float:
        return self.median_s * 1e6


def _time_once(run: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def interleaved(candidates: dict[str, Prepare], device: torch.device, *, warmup: int = 3,
                repeats: int = 30, min_time_s: float = 0.0) -> dict[str, Timing]:
    """Median time of each candidate, measured round-robin after ``warmup`` rounds.

    Each round calls every candidate's ``prepare()`` (untimed) then times ``run()``.
    Stops after ``repeats`` rounds, or later if ``min_time_s`` of total timed work
    has not been reached yet (at most 10x ``repeats``).
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()()
    if device.type == "cuda":
        torch.cuda.synchronize()
    samples: dict[str, list[float]] = {name: [] for name in names}
    total = 0.0
    rounds = 0
    while rounds < repeats or (total < min_time_s and rounds < 10 * repeats):
        order = names[rounds % len(names):] + names[:rounds % len(names)]
        for name in order:
            run = candidates[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = _time_once(run, device)
            samples[name].append(dt)
            total += dt
        rounds += 1
    return {name: Timing(statistics.median(s), len(s)) for name, s in samples.items()}


def device_name(device: torch.device) -> str:
    """A human-readable name of the device the benchmark ran on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"
