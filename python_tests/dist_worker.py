"""One rank of the data-parallel tests (test_distributed.py), started by torchrun.

``python -m torch.distributed.run --standalone --nproc_per_node=2 dist_worker.py MODE OUT``
with MODE:

* ``sync``: a short Trainer run; after every update the ranks compare their full agent
  state (parameters, buffers, optimiser moments) exactly;
* ``nonfinite``: the same with NaN rewards in rank 1's batches only from the 3rd update on:
  both ranks must skip the same steps, stay equal and stop with the non-finite exit code;
* ``first_update``: one ``Agent.update`` on this rank's rows of the batch in ``OUT/batch.npz``
  with the sampling noise of the whole batch (rows of this rank), saving the gradients the
  optimisers stepped with, the metrics and the state after it;
* ``ddp``: the world model under ``DistributedDataParallel`` (fused ops, no
  ``find_unused_parameters``) for two updates, its gradients against GradSync's.

Each rank writes ``OUT/rank<r>.json`` (and ``.pt`` files) for the test to read.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dreamer_fast.agents import distributed  # noqa: E402
from dreamer_fast.agents.agent import Agent  # noqa: E402
from dreamer_fast.agents.trainer import NONFINITE_EXIT, Trainer  # noqa: E402


def tiny(steps: int, **extra):
    from test_train import tiny_config  # the smoke tests' shrunken model
    return tiny_config("v3", "gym:Pendulum-v1", steps, **{"device": "cpu", **extra})


def flat_state(agent: Agent) -> torch.Tensor:
    from dreamer_fast.agents.checkpoint import named_tensors
    return torch.cat([t.detach().double().reshape(-1).cpu()
                      for _, t in named_tensors(agent.full_state_dict())])


def all_equal(x: torch.Tensor) -> bool:
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x)
    return all(torch.equal(o, out[0]) for o in out)


def run_sync(out: Path, nan_from: int | None) -> dict:
    extra = {"run.max_nonfinite": 3} if nan_from is not None else {}
    trainer = Trainer(tiny(400, **extra), out / "run")
    agent, rank = trainer.agent, trainer.dist.rank
    checks, skipped = [], []
    update = agent.update
    to_torch = agent.to_torch
    calls = [0]

    def poisoned(batch):
        data = to_torch(batch)
        if rank == 1 and calls[0] >= nan_from:
            data["reward"] = torch.full_like(data["reward"], float("nan"))
        return data

    def checked(batch):
        calls[0] += 1
        m = update(batch)
        checks.append(all_equal(flat_state(agent)))
        skipped.append(list(agent.skipped))
        return m

    if nan_from is not None:
        agent.to_torch = poisoned
    agent.update = checked
    code = trainer.run()
    return {"code": code, "checks": checks, "skipped": skipped,
            "updates": trainer.counters["updates"], "step": trainer.counters["step"]}


def noise_of_rows(rank: int, world: int):
    """Patch the RSSM's and the actor's noise draws: draw the whole batch's noise (``world``
    times the rows) and keep this rank's rows, so the ranks together see the samples a
    single process sees on the concatenated batch."""
    from dreamer_fast.nn.actor import Actor
    from dreamer_fast.nn.rssm import RSSM
    for cls in (RSSM, Actor):
        orig = cls.draw_noise

        def draw(self, *batch, like, _orig=orig):
            full = _orig(self, batch[0] * world, *batch[1:], like=like)
            return full.chunk(world)[rank]
        cls.draw_noise = draw


def record_grads(agent: Agent) -> dict:
    """The gradients each optimiser steps with (after the all-reduce and clipping)."""
    grads: dict[str, list] = {}
    for name in ("wm_opt", "actor_opt", "critic_opt"):
        opt = getattr(agent, name)
        step = opt.step

        def wrapped(*a, _opt=opt, _name=name, _step=step, **k):
            grads[_name] = [None if p.grad is None else p.grad.detach().clone()
                            for g in _opt.param_groups for p in g["params"]]
            return _step(*a, **k)
        opt.step = wrapped
    return grads


def make_agent(cfg) -> Agent:
    torch.manual_seed(cfg.seed)
    return Agent(cfg, "vector", (3,), 1, False, torch.device("cpu"))


def first_update(out: Path, rank: int, world: int) -> dict:
    with np.load(out / "batch.npz") as z:
        batch = {k: np.array_split(z[k], world)[rank] for k in z.files}
    cfg = tiny(0, **{"run.batch_size": len(batch["reward"])})
    d = distributed.setup("cpu", 1)
    agent = make_agent(cfg)
    agent.set_grad_sync(distributed.GradSync(d))
    noise_of_rows(rank, world)
    grads = record_grads(agent)
    torch.manual_seed(1234)
    metrics = agent.update(batch)
    torch.save({"grads": grads, "metrics": metrics, "state": agent.state_dict(),
                "buffers": {k: v.clone() for k, v in agent.ac.named_buffers()}},
               out / f"rank{rank}.pt")
    return {"ok": True}


def ddp(out: Path, rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from dreamer_fast.agents import losses
    cfg = tiny(0)
    d = distributed.setup("cpu", 1)
    agent = make_agent(cfg)
    wrapped = DDP(agent.wm)  # find_unused_parameters=False: every parameter needs a grad
    sync = distributed.GradSync(d)
    rng = np.random.default_rng(rank)
    diffs, unused = [], []
    for it in range(2):  # DDP reports unused parameters of an iteration at the next one
        B, T = cfg.run.batch_size, cfg.run.batch_length
        data = agent.to_torch({
            "vector": rng.normal(size=(B, T, 3)).astype(np.float32),
            "action": rng.uniform(-1, 1, (B, T, 1)).astype(np.float32),
            "reward": rng.normal(size=(B, T)).astype(np.float32),
            "is_first": np.eye(T, dtype=bool)[None].repeat(B, 0)[:, 0],
            "is_last": np.zeros((B, T), bool), "is_terminal": np.zeros((B, T), bool)})
        results = []
        for use_ddp in (True, False):
            agent.wm.zero_grad(set_to_none=True)
            torch.manual_seed(100 + it)  # the same noise in both passes
            preds = (wrapped if use_ddp else agent.wm)(data)
            loss, metrics = losses.world_model_loss(preds, data, cfg, "vector")
            loss.backward()
            if not use_ddp:
                sync.reduce(agent.wm.parameters(), metrics, "wm/")
            unused.append([n for n, p in agent.wm.named_parameters() if p.grad is None])
            results.append([p.grad.clone() for p in agent.wm.parameters()])
        diffs.append(max(float((a - b).abs().max() / (b.abs().max() + 1e-12))
                         for a, b in zip(*results)))
    return {"diffs": diffs, "unused": unused}


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    rank, world, _ = distributed.from_env()
    if mode == "sync":
        result = run_sync(out, None)
    elif mode == "nonfinite":
        result = run_sync(out, 3)
        result["nonfinite_exit"] = NONFINITE_EXIT
    elif mode == "first_update":
        result = first_update(out, rank, world)
    elif mode == "ddp":
        result = ddp(out, rank, world)
    else:
        raise SystemExit(f"unknown mode {mode}")
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    if dist.is_initialized():
        dist.destroy_process_group()
    # Leave without the interpreter's finalisation: a rank that had written its results
    # and destroyed its process group was seen to abort in it ("terminate called without
    # an active exception", no Python frame left; gloo's and DDP's C++ objects torn down
    # with the interpreter), failing a test whose work was done. The results are on disk.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
