"""Where one learner update spends its time: a profile per algorithm, size and backend.

    python benchmarks/profile_learner.py --algos v1,v2,v3 --sizes debug,S \
        --backends fused,ref --repeats 5 --threads 2 --out benchmarks/results/<name>.md

For each (algo, size, backend) it builds the agent of ``learner_cases.make_pair`` (the
learner suite's), warms up, then profiles ``--repeats`` updates with ``torch.profiler``
and reports:

* the wall time of one update (median over the repeats, without the profiler);
* each stage's share of the profiled CPU time: the stages are the named ranges
  (``agent.stage``) that :meth:`~dreamer_fast.agents.agent.Agent.update` opens around
  the world model's forward, loss, backward, clipping and optimiser step and the
  behaviour's imagination, predictions, losses, the actor's and critic's backwards,
  clipping and optimiser steps (on CPU a backward runs on the calling thread, so its ops
  fall in its range); what lies outside them (batch upload, metrics to the host) is the
  ``rest`` row;
* the time of the ``aten`` matrix products (``mm``/``addmm``/``bmm``) and their
  multiply-adds, from the recorded shapes. The reference backend runs every product
  through aten, so its count is the update's; ``MACs / measured peak`` is the floor of
  what the products alone must take on this CPU (the peak measured here: a 1024^3
  float32 ``torch.mm`` on the same threads, best of 5). The fused backend runs most
  products inside our ops, so its aten column holds only the rest.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from dreamer_fast.bench.learner_cases import make_pair, synthetic_batch
from dreamer_fast.bench.timing import device_name

LEAF_GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def measured_peak_gflops(repeats: int = 5, n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def _gemm_macs(evt) -> float:
    """Multiply-adds of one ``aten`` matrix product from its recorded input shapes."""
    shapes = [s for s in evt.input_shapes if s]
    name = evt.name
    try:
        if name == "aten::mm":
            (m, k), (_, n) = shapes[0], shapes[1]
            return m * k * n
        if name == "aten::addmm":
            (m, k), (_, n) = shapes[1], shapes[2]
            return m * k * n
        if name in ("aten::bmm", "aten::baddbmm"):
            a, b2 = (shapes[0], shapes[1]) if name == "aten::bmm" else (shapes[1], shapes[2])
            return a[0] * a[1] * a[2] * b2[2]
    except (IndexError, ValueError, TypeError):
        return 0.0
    return 0.0


def profile_one(agent, batch, repeats: int):
    for _ in range(3):  # warm-up: allocator, oneDNN primitive caches, lazy state
        agent.update(batch)
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        agent.update(batch)
        walls.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(repeats):
            with record_function("update"):
                agent.update(batch)
    parts: dict[str, float] = defaultdict(float)
    gemm_us = 0.0
    macs = 0.0
    for evt in prof.events():
        if evt.name.startswith(("wm.", "ac.")) or evt.name == "update":
            parts[evt.name] += evt.cpu_time_total
        elif evt.name in LEAF_GEMMS:
            gemm_us += evt.self_cpu_time_total
            macs += _gemm_macs(evt)
    total = parts.pop("update")
    parts["rest"] = total - sum(parts.values())
    return {"wall_s": statistics.median(walls), "parts_us": {k: v / repeats for k, v in
                                                            parts.items()},
            "total_us": total / repeats, "gemm_us": gemm_us / repeats,
            "macs": macs / repeats}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algos", default="v1,v2,v3")
    p.add_argument("--sizes", default="debug")
    p.add_argument("--backends", default="fused,ref")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    peak = measured_peak_gflops()
    lines = [f"# One learner update, by part — {device_name(device)} ({args.threads} threads), "
             f"torch {torch.__version__}, {_dt.date.today()}", "",
             f"Command: `python benchmarks/profile_learner.py --algos {args.algos} --sizes "
             f"{args.sizes} --backends {args.backends} --repeats {args.repeats} --threads "
             f"{args.threads}`", "",
             f"Measured float32 GEMM peak here: {peak:.1f} GFLOP/s (1024³ `torch.mm`, best "
             "of 5).", ""]
    for size in args.sizes.split(","):
        for algo in args.algos.split(","):
            pair = make_pair(algo, size, device)
            batch = synthetic_batch(pair["fast"])
            results = {}
            for backend in args.backends.split(","):
                agent = pair["fast" if backend == "fused" else "eager"]
                results[backend] = profile_one(agent, batch, args.repeats)
            cfg = pair["fast"].cfg
            lines.append(f"## {algo} size {size} (B{cfg.run.batch_size}×T"
                         f"{cfg.run.batch_length}, H{cfg.behavior.horizon})")
            lines.append("")
            heads = " | ".join(f"{b} (ms) | {b} share" for b in results)
            lines.append(f"| part | {heads} |")
            lines.append("|---|" + "---:|---:|" * len(results))
            names = sorted({k for r in results.values() for k in r["parts_us"]},
                           key=lambda k: -max(r["parts_us"].get(k, 0) for r in results.values()))
            for k in names:
                cells = " | ".join(
                    f"{r['parts_us'].get(k, 0) / 1e3:.2f} | "
                    f"{100 * r['parts_us'].get(k, 0) / r['total_us']:.1f}%"
                    for r in results.values())
                lines.append(f"| {k} | {cells} |")
            lines.append("")
            # the products are the same math in both backends; the fused one runs most of
            # them inside our ops (not aten), so the reference's count is the update's
            macs = max(r["macs"] for r in results.values())
            lines.append(f"- matrix products of one update: {macs / 1e9:.2f} GMAC (counted "
                         f"from the aten products' shapes, forward and backward); at the "
                         f"measured peak they take at least {2 * macs / (peak * 1e9) * 1e3:.1f}"
                         " ms")
            for b, r in results.items():
                lines.append(f"- {b}: wall {r['wall_s'] * 1e3:.1f} ms per update (median of "
                             f"{args.repeats}, no profiler); profiled {r['total_us'] / 1e3:.1f}"
                             f" ms, of which aten GEMMs {r['gemm_us'] / 1e3:.1f} ms "
                             f"({r['macs'] / 1e9:.2f} GMAC through aten)")
            lines.append("")
            print("\n".join(lines[-(len(names) + 8):]), flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
