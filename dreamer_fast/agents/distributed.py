"""Data-parallel training under ``torchrun``: one agent, ``W`` ranks.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous
address); :func:`from_env` reads them and :func:`setup` joins the process group (NCCL
when the trainer runs on CUDA, each rank on ``cuda:<LOCAL_RANK>``; gloo on CPU). With
``WORLD_SIZE`` unset or 1 everything here is a no-op and the trainer is the single-process
one, bit for bit.

What the ranks share and what they do not:

* every rank steps its own environments (seeded ``seed + rank·RANK_SEED_STRIDE + i``) and
  keeps its own replay shard; each samples its batch ``[B, T]`` from its own shard, so the
  global batch is ``W·B`` sequences;
* gradients are averaged over the ranks before clipping and the optimiser step
  (:class:`GradSync`: one flat all-reduce per optimiser step, carrying the gradients and
  the loss terms), so the clipped norm, the step and therefore the weights are identical on
  every rank; with equal per-rank batches the average of the per-rank means is the mean over
  the concatenated batch, i.e. the update a single process would make on ``W·B`` sequences;
* the loss terms travel in the same all-reduce: every rank then logs and checks the same
  global means, so the non-finite guard (a NaN/inf term on any rank makes the mean
  non-finite) skips a step on all ranks or on none;
* the V3 return normaliser's percentiles are taken over the returns of all ranks
  (:meth:`GradSync.gather`), so its EMA buffers stay identical too;
* env steps, episodes, the stop signal and "is every replay shard ready" are exchanged once
  per vector step (:meth:`Dist.step_sync`), so the counters, the train-ratio accounting and
  the decision to update, log, checkpoint or stop are the same on every rank.

Why not ``DistributedDataParallel``: the agent has three optimisers and two backward
passes per update, the actor's with ``inputs=`` (a dynamics-gradient actor loss reaches the
world model and the critic but must only move the actor), and the actor and the world model
run inside the fused imagination op, outside any module's ``forward``. DDP's reducer is
armed by a wrapped module's ``forward`` and expects each of its parameters' gradients once
per backward; here the same modules are used by several backwards. An explicit
all-reduce after each backward gives the same averaged gradients without those
constraints (the tests also run the world model under DDP to check that the fused ops
leave no parameter without a gradient, which DDP would need).
"""

from __future__ import annotations

import datetime
import faulthandler
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

#: Env and RNG seeds of rank ``r`` start at ``seed + r * RANK_SEED_STRIDE``: far enough
#: apart that the ``seed + 1000 * episodes`` reset seeds of different ranks do not meet.
RANK_SEED_STRIDE = 1 << 20

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistError(ValueError):
    """A bad torchrun environment, or a rank that failed while the others were fine."""


def _env_int(name: str, default: int | None) -> int | None:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise DistError(f"environment variable {name}={text!r} is not an integer "
                        f"(set by torchrun)") from None


@dataclass
class Dist:
    """This process's place in the run: ``rank`` of ``world`` (``local_rank`` on its
    machine) and the process groups; ``world == 1`` means not distributed."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""
    # the group the gradients use (NCCL on CUDA), and a gloo group for the per-step
    # counters and the Python objects of checkpoints (no device round trip for them)
    group: object = None
    cpu_group: object = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False
    slots: int = 1  # environments per rank: the most episodes one step can finish

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """The base seed of this rank's environments, replay sampling and noise (rank 0's is
        ``seed`` itself)."""
        return seed + self.rank * RANK_SEED_STRIDE

    # ---- collectives (no-ops when not distributed) ---------------------------------------

    def agree(self, error: BaseException | None, **flags) -> dict:
        """Every rank reports whether its local setup failed (``error``) and some values
        (``flags``); a failure anywhere raises on every rank (the failing one re-raises its
        own error, the others :class:`DistError` naming it), so no rank is left waiting in a
        collective. Returns ``{name: [value of rank 0, rank 1, ...]}``."""
        if not self.enabled:
            if error is not None:
                raise error
            return {k: [v] for k, v in flags.items()}
        mine = {"error": None if error is None else f"{type(error).__name__}: {error}",
                "flags": flags}
        everyone = [None] * self.world
        dist.all_gather_object(everyone, mine, group=self.cpu_group)
        if error is not None:
            raise error
        failed = [(r, x["error"]) for r, x in enumerate(everyone) if x["error"]]
        if failed:
            r, msg = failed[0]
            raise DistError(f"rank {r} of {self.world} failed: {msg}")
        return {k: [x["flags"][k] for x in everyone] for k in flags}

    def step_sync(self, agent_steps: int, episodes: list[tuple[float, int]], ready: bool,
                  signal: int) -> "StepSync":
        """One exchange per vector step: this rank's agent steps (not counting action
        repeat), the episodes it finished (``(return, length)``), whether its replay can
        give a batch and the stop signal it got (0: none). Returns the totals, every rank's
        episodes (rank order), whether all shards are ready and the largest signal."""
        if not self.enabled:
            return StepSync(agent_steps, list(episodes), bool(ready), int(signal))
        # Fixed size: an environment finishes at most one episode per vector step, so
        # `slots` = the largest count any rank can report; the count is exchanged first in
        # the same message. float64 holds step counts exactly up to 2**53.
        slots = self.slots
        if len(episodes) > slots:
            raise RuntimeError(f"step_sync: {len(episodes)} episodes in one step, more than "
                               f"the {slots} environments")
        msg = torch.zeros(4 + 2 * slots, dtype=torch.float64)
        msg[0], msg[1], msg[2], msg[3] = agent_steps, float(ready), signal, len(episodes)
        for i, (ret, length) in enumerate(episodes):
            msg[4 + 2 * i], msg[5 + 2 * i] = ret, length
        out = [torch.empty_like(msg) for _ in range(self.world)]
        dist.all_gather(out, msg, group=self.cpu_group)
        eps = [(float(m[4 + 2 * i]), int(m[5 + 2 * i])) for m in out for i in range(int(m[3]))]
        return StepSync(int(sum(int(m[0]) for m in out)), eps,
                        all(bool(m[1]) for m in out), int(max(int(m[2]) for m in out)))

    def gather_to_main(self, obj) -> list | None:
        """``[object of rank 0, rank 1, ...]`` on rank 0, None elsewhere."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self.cpu_group)
        return out

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (a fresh run's initial weights)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in module.state_dict(keep_vars=True).values():
                dist.broadcast(t.data, src=0, group=self.group)

    def check_same(self, fp: torch.Tensor, what: str) -> None:
        """Raise :class:`DistError` unless the fingerprint ``fp`` (a small float64 CPU
        tensor) is the same on every rank."""
        if not self.enabled:
            return
        out = [torch.empty_like(fp) for _ in range(self.world)]
        dist.all_gather(out, fp, group=self.cpu_group)
        bad = [r for r in range(1, self.world) if not torch.equal(out[r], out[0])]
        if bad:
            raise DistError(f"{what}: rank(s) {bad} differ from rank 0 (the ranks diverged; "
                            f"on several machines the logdir must be on a filesystem all of "
                            f"them share)")

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.cpu_group)

    def close(self) -> None:
        if self.enabled and self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


@dataclass
class StepSync:
    """:meth:`Dist.step_sync`'s totals over the ranks."""

    agent_steps: int
    episodes: list[tuple[float, int]]
    ready: bool
    signal: int


def from_env() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` from torchrun's environment (``(0, 1, 0)`` when
    it is not set)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, "
                        f"LOCAL_RANK={local}")
    return rank, world, local


def setup(device: str, envs: int, timeout_s: float = 1800.0) -> Dist:
    """This process's :class:`Dist` for a run on ``device`` (``cpu``/``cuda``/``auto``) with
    ``envs`` environments per rank; joins the process group when ``WORLD_SIZE > 1`` (or
    uses the one already initialised, e.g. by a test)."""
    rank, world, local = from_env()
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    if world == 1:
        return Dist()
    if not dist.is_available():
        raise DistError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise DistError("config key 'device' is 'cuda' but no CUDA device is available")
        if local >= torch.cuda.device_count():
            raise DistError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA "
                            f"device(s) are visible; use --nproc_per_node <= that count")
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    # A rank that dies in native code (a signal, std::terminate) prints no Python
    # traceback by itself, and torchrun then only reports the signal; with the fault
    # handler each thread's Python stack goes to stderr first, so the rank's log says
    # where it was. Left as the user set it when already enabled.
    if not faulthandler.is_enabled():
        faulthandler.enable()
    owns = not dist.is_initialized()
    if owns:
        timeout = datetime.timedelta(seconds=timeout_s)
        kw = {"device_id": dev} if backend == "nccl" else {}
        store = _attempt_store(rank, world, timeout)
        if store is not None:
            kw.update(store=store, rank=rank, world_size=world)
        dist.init_process_group(backend=backend, timeout=timeout, **kw)
    group = dist.group.WORLD
    actual = dist.get_backend(group)
    if backend == "nccl" and actual != "nccl":
        raise DistError(f"the process group uses {actual}, the CUDA trainer needs nccl")
    cpu_group = dist.new_group(backend="gloo") if actual != "gloo" else group
    return Dist(rank=rank, world=world, local_rank=local, backend=actual, group=group,
                cpu_group=cpu_group, device=dev, owns_group=owns, slots=max(1, int(envs)))


def _attempt_store(rank: int, world: int, timeout: datetime.timedelta):
    """The rendezvous store of this torchrun attempt, or None outside torchrun.

    torchrun ``--max-restarts`` starts every rank again after one fails, and the new ranks
    meet in the launcher's store again. The process group's keys there (each rank's
    address) are the same every attempt, so a new rank could read the address a rank of
    the failed attempt left behind and fail to connect to it (seen with gloo:
    ``connectFullMesh ... Connection refused``). Keys under a prefix named after
    ``TORCHELASTIC_RESTART_COUNT`` keep the attempts apart."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or not os.environ.get("MASTER_ADDR"):
        return None
    base, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world, timeout=timeout))
    return dist.PrefixStore(f"dreamer_fast/attempt_{attempt}", base)


def fingerprint(tensors) -> torch.Tensor:
    """A float64 CPU vector summarising ``tensors`` (their sums and sums of squares):
    cheap to exchange, different as soon as any value differs in practice."""
    rows = []
    for t in tensors:
        if torch.is_tensor(t) and not t.is_complex():
            x = t.detach().double()
            rows += [x.sum(), (x * x).sum()]
    if not rows:
        return torch.zeros(1, dtype=torch.float64)
    return torch.stack(rows).cpu()


class GradSync:
    """Averages gradients (and loss terms) over the ranks of ``d``.

    :meth:`reduce` packs, per dtype, the gradients of ``params`` (zeros where a rank has
    none), a presence count per parameter and the loss terms into one flat buffer, sums it
    over the ranks and writes back ``grad = sum / W`` (None where no rank had a gradient,
    as a single process would leave it) and ``term = sum / W``."""

    def __init__(self, d: Dist) -> None:
        self.d = d

    def reduce(self, params, metrics: dict, prefix) -> None:
        params = list(params)
        names = [k for k, v in metrics.items() if k.startswith(prefix) and torch.is_tensor(v)]
        buckets: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in params:
            g = p.grad
            buckets.setdefault(p.dtype, []).append(g if g is not None else torch.zeros_like(p))
        # the presence counts and the loss terms travel in the float32 bucket (counts are
        # exact in float32 up to 2**24 ranks)
        extra = torch.cat([torch.tensor([float(p.grad is not None) for p in params],
                                        dtype=torch.float32, device=self.d.device)]
                          + [metrics[k].detach().float().reshape(-1) for k in names])
        buckets.setdefault(torch.float32, []).append(extra)
        out: dict[torch.dtype, list[torch.Tensor]] = {}
        for dtype, items in buckets.items():
            flat = torch.cat([t.reshape(-1) for t in items])
            dist.all_reduce(flat, group=self.d.group)
            out[dtype] = [v.view_as(t) for v, t in
                          zip(flat.split([t.numel() for t in items]), items)]
        W = self.d.world
        extra = out[torch.float32].pop()
        off = len(params)
        for k in names:
            n = metrics[k].numel()
            metrics[k] = (extra[off:off + n] / W).view_as(metrics[k]).to(metrics[k].dtype)
            off += n
        # one host read: which parameters no rank gave a gradient stay None
        present = extra[:len(params)].tolist()
        index = {dtype: 0 for dtype in out}
        for p, here in zip(params, present):
            g = out[p.dtype][index[p.dtype]]
            index[p.dtype] += 1
            p.grad = None if here == 0 else g.div_(W)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` of every rank concatenated along dim 0 (rank order); same shape on every
        rank expected."""
        out = [torch.empty_like(x) for _ in range(self.d.world)]
        dist.all_gather(out, x.contiguous(), group=self.d.group)
        return torch.cat(out)
