"""Where one learner update spends its time: a profile per algorithm, size and backend.

    python benchmarks/profile_learner.py --algos v1,v2,v3 --sizes debug,S \
        --backends fused,ref --repeats 5 --threads 2 --out benchmarks/results/<name>.md

For each (algo, size, backend) it builds the agent of ``learner_cases.make_pair`` (the
learner suite's), warms up, then profiles ``--repeats`` updates with ``torch.profiler``
and reports:

* the wall time of one update (median over the repeats, without the profiler);
* each part's share of the profiled CPU time, the parts being the ``record_function``
  ranges this script opens around the update's stages (world-model forward, its loss,
  its backward, its optimiser step and clipping; imagination, predictions, actor and
  critic losses, their backwards, their optimiser steps) -- every op lands in exactly one
  part, forward and backward apart;
* the GEMM time (``aten::mm``/``addmm``/``bmm``/``linear`` and our fused ops' GEMMs are
  inside the parts; this column is the time of the ``aten`` matrix products alone) and
  the multiply-adds of every product, so ``MACs / measured peak`` is the floor of what the
  products alone must take on this CPU. The peak is measured here: a 1024^3 float32
  ``torch.mm`` on the same threads, best of 5.

The stages are the body of :meth:`dreamer_fast.agents.agent.Agent.update`, reopened here
with ranges around each call (the agent is not modified); what the script runs is the
same sequence of calls.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import platform
import statistics
import time
from collections import defaultdict

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from dreamer_fast.agents import losses
from dreamer_fast.agents.agent import nonfinite_terms
from dreamer_fast.bench.learner_cases import make_pair, synthetic_batch

LEAF_GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def staged_update(agent, batch, part):
    """The body of ``Agent.update`` with a ``part(name)`` range around each stage."""
    cfg = agent.cfg
    with part("wm.to_torch"):
        data = agent.to_torch(batch)
    agent.wm_opt.zero_grad(set_to_none=True)
    with part("wm.forward"):
        preds = agent.wm(data)
    with part("wm.loss"):
        loss, metrics = losses.world_model_loss(preds, data, cfg, agent.obs_key)
    with part("wm.backward"):
        loss.backward()
    with part("wm.clip+check"):
        metrics["wm/grad_norm"] = nn.utils.clip_grad_norm_(agent.wm.parameters(),
                                                            cfg.model.grad_clip)
        nonfinite_terms(metrics, "wm/")
    with part("wm.adam"):
        agent.wm_opt.step()
    post = preds["post"]
    start = {k: v.detach().reshape(-1, *v.shape[2:]) for k, v in post.items()}
    b, ac = cfg.behavior, agent.ac
    with part("ac.imagine"):
        traj = ac.imagine(agent.wm, start)
    with part("ac.predict"):
        p = ac.predict(agent.wm, traj)
    with part("ac.losses"):
        ret, value = p["return"], p["value"]
        weight = losses.trajectory_weight(p["cont"])
        scale = ac.return_scale(ret)
        actor_loss, m2 = losses.actor_loss(p["policy"], p["taken"], ret, value[:, :-1],
                                           weight, scale, grad=ac.actor_grad,
                                           entropy=b.entropy)
        critic_loss, m3 = losses.critic_loss(p["critic"][:, :-1], ret, weight,
                                             twohot=ac.twohot, slow=p["slow"],
                                             slow_reg=b.slow_reg,
                                             symlog_target=b.critic == "symlog_mse")
    actor_params = list(ac.actor.parameters())
    critic_params = list(ac.critic.parameters())
    agent.actor_opt.zero_grad(set_to_none=True)
    agent.critic_opt.zero_grad(set_to_none=True)
    with part("ac.actor_backward"):
        actor_loss.backward(inputs=actor_params)
    with part("ac.critic_backward"):
        critic_loss.backward(inputs=critic_params)
    with part("ac.clip+check"):
        m2["actor/grad_norm"] = nn.utils.clip_grad_norm_(actor_params, b.grad_clip)
        m3["critic/grad_norm"] = nn.utils.clip_grad_norm_(critic_params, b.grad_clip)
        nonfinite_terms({**m2, **m3}, ("actor/", "critic/"))
    with part("ac.adam"):
        agent.actor_opt.step()
        agent.critic_opt.step()
        ac.update_slow_critic()
    with part("metrics.to_host"):
        {k: float(v) for k, v in {**metrics, **m2, **m3}.items()}


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
        staged_update(agent, batch, lambda name: contextlib.nullcontext())
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        staged_update(agent, batch, lambda name: contextlib.nullcontext())
        walls.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(repeats):
            staged_update(agent, batch, record_function)
    parts: dict[str, float] = defaultdict(float)
    gemm_us = 0.0
    macs = 0.0
    for evt in prof.events():
        # on CPU the autograd engine runs a backward on the calling thread, so the
        # backward's ops are children of its range too
        if evt.name.startswith(("wm.", "ac.", "metrics.")):
            parts[evt.name] += evt.cpu_time_total
        elif evt.name in LEAF_GEMMS:
            gemm_us += evt.self_cpu_time_total
            macs += _gemm_macs(evt)
    total = sum(parts.values())
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
    lines = [f"# One learner update, by part — {platform.processor() or platform.machine()}, "
             f"{args.threads} threads, torch {torch.__version__}, {_dt.date.today()}", "",
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
            for b, r in results.items():
                floor_ms = 2 * r["macs"] / (peak * 1e9) * 1e3
                lines.append(f"- {b}: wall {r['wall_s'] * 1e3:.1f} ms per update (median of "
                             f"{args.repeats}, no profiler); profiled parts "
                             f"{r['total_us'] / 1e3:.1f} ms; aten GEMMs "
                             f"{r['gemm_us'] / 1e3:.1f} ms for {r['macs'] / 1e9:.2f} GMAC "
                             f"(floor at the measured peak: {floor_ms:.1f} ms)")
            lines.append("")
            print("\n".join(lines[-(len(names) + 8):]), flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
