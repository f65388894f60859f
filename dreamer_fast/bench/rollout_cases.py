"""Benchmark cases of the imagination rollout: 1024 start states x H=15 steps, actor MLP
+ RSSM image step, fused (``imagine``) vs the eager reference (``imagine_ref``), in both
gradient modes.

Sizes: ``debug`` (deter 128, hidden 128, 8x8 latents, actor 2x128), where per-op overhead
dominates, and ``S`` (deter 512, hidden 512, 32x32 latents, actor 2x512), where the GEMMs
do. ``grad='none'`` times the forward rollout; ``grad='dynamics'`` times the rollout plus
the backward of a scalar loss on the features into the actor.

The compiled candidate ("compiled", :func:`implementations`) is
``torch.compile(imagine_ref)`` on a third pair of reference-backend models with the
same parameters. ``grad='none'`` traces the whole 15-step rollout as one graph.
``grad='dynamics'`` does not: ``imagine_ref`` builds a module and runs the image step
through ``functional_call`` with detached world-model parameters, where dynamo breaks
the graph and falls back to eager for the rollout loop, compiling the frames it calls
(actor, image step) one by one. So it is compiled with ``fullgraph=False``. A frame
that falls back is skipped for good, so each gradient mode gets its own entry point
(:func:`_rollout_no_grad`, :func:`_rollout_dynamics`): otherwise the ``dynamics``
fallback would also drop the one-graph ``none`` rollout.
"""

from __future__ import annotations

from typing import Callable

import torch

from dreamer_fast.bench import memory
from dreamer_fast.bench.timing import Prepare
from dreamer_fast.nn import RSSM, Actor
from dreamer_fast.nn import draw_imagine_noise, imagine, imagine_ref

SIZES = {
    "debug": dict(deter=128, hidden=128, stoch=8, classes=8, units=128),
    "S": dict(deter=512, hidden=512, stoch=32, classes=32, units=512),
}
MODES = ("none", "dynamics")


def make_models(size: str, device: torch.device, dtype: torch.dtype, cell: str = "ln_gru",
                action: int = 6, with_compile: bool = False) -> dict[str, tuple[RSSM, Actor]]:
    """``(rssm, actor)`` per candidate with equal parameters: ``fast`` (fused backend),
    ``eager`` and, when ``with_compile``, ``compiled`` (both reference backend)."""
    cfg = SIZES[size]
    torch.manual_seed(0)
    out = {}
    names = (("fast", "fused"), ("eager", "ref")) + ((("compiled", "ref"),) if with_compile
                                                      else ())
    for name, backend in names:
        rssm = RSSM(stoch=cfg["stoch"], classes=cfg["classes"], deter=cfg["deter"],
                    hidden=cfg["hidden"], action_size=action, embed_size=cfg["hidden"],
                    cell=cell, norm="layer", act="silu", device=device, dtype=dtype,
                    backend=backend)
        actor = Actor(rssm.feat_size, action, head="bounded_normal", units=cfg["units"],
                      layers=2, device=device, dtype=dtype, backend=backend)
        out[name] = (rssm, actor)
    fast_rssm, fast_actor = out["fast"]
    for name, _ in names[1:]:
        out[name][0].load_state_dict(fast_rssm.state_dict())
        out[name][1].load_state_dict(fast_actor.state_dict())
    return out


def rollout_inputs(rssm: RSSM, actor: Actor, n: int,
                   horizon: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Seeded start states (random ``deter`` and logits) and the rollout's noise."""
    p = next(rssm.parameters())
    g = torch.Generator(device="cpu").manual_seed(n)
    start = {k: (v.normal_(generator=g) if k in ("deter", "logit") else v).to(p.device)
             for k, v in rssm.initial(n).items()}
    return start, draw_imagine_noise(rssm, actor, n, horizon, like=start["deter"])


def rollout_case(models: tuple[RSSM, Actor], fn, n: int, horizon: int, grad: str) -> Prepare:
    rssm, actor = models
    start, noise = rollout_inputs(rssm, actor, n, horizon)

    def prepare():
        if grad == "none":
            def run():
                return fn(rssm, actor, start, horizon, grad="none", noise=noise)
            return run

        def run():
            actor.zero_grad(set_to_none=True)
            traj = fn(rssm, actor, start, horizon, grad="dynamics", noise=noise)
            traj["feat"].square().mean().backward()
        return run
    return prepare


IMPLS = {"fast": imagine, "eager": imagine_ref}


def saved_for_backward_bytes(models: tuple[RSSM, Actor], fn, n: int, horizon: int) -> int:
    """Bytes that a ``grad='dynamics'`` rollout keeps alive for its backward: every tensor
    autograd saves during ``fn(...)`` (an eager graph's saved activations, or the fused
    op's ``save_for_backward``), seen through ``torch.autograd.graph.saved_tensors_hooks``,
    counted by whole storage (a saved view keeps its storage alive) and once per storage;
    the modules' parameters are left out."""
    rssm, actor = models
    start, noise = rollout_inputs(rssm, actor, n, horizon)
    return memory.saved_for_backward_bytes(
        lambda: fn(rssm, actor, start, horizon, grad="dynamics", noise=noise),
        list(rssm.parameters()) + list(actor.parameters()))


def graph_case(models: tuple[RSSM, Actor], n: int, horizon: int) -> Prepare:
    """CUDA only, ``grad='none'``: the rollout captured into a CUDA graph
    (:class:`~dreamer_fast.nn.ImagineGraph`, built on the first call at each float32
    matmul precision, outside the timing: cuBLAS fixes its TF32 choice at capture, so a
    row at another precision must not replay it) and replayed; each timed run copies the
    start states and noise into the graph's buffers and replays (no output clone).
    ``models`` with ``backend='ref'`` give the "eager + CUDA graph" baseline."""
    from dreamer_fast.nn import ImagineGraph

    rssm, actor = models
    start, noise = rollout_inputs(rssm, actor, n, horizon)
    graphs: dict[str, ImagineGraph] = {}

    def prepare():
        precision = torch.get_float32_matmul_precision()
        if precision not in graphs:
            graphs[precision] = ImagineGraph(rssm, actor, n, horizon, clone=False)
        graph = graphs[precision]

        def run():
            return graph(start, noise)
        return run
    return prepare


def _rollout_no_grad(rssm, actor, start, horizon, noise):
    """``imagine_ref`` for ``grad='none'``: the entry point compiled for that mode."""
    return imagine_ref(rssm, actor, start, horizon, grad="none", noise=noise)


def _rollout_dynamics(rssm, actor, start, horizon, noise):
    """``imagine_ref`` for ``grad='dynamics'``: the entry point compiled for that mode."""
    return imagine_ref(rssm, actor, start, horizon, grad="dynamics", noise=noise)


def compiled_imagine_ref(backend: str = "inductor") -> Callable:
    """``torch.compile(imagine_ref)`` (static shapes), with one compiled entry point per
    gradient mode (see the module docstring); called like ``imagine_ref`` (no ``wm_grad``)."""
    compiled = {"none": torch.compile(_rollout_no_grad, dynamic=False, backend=backend),
                "dynamics": torch.compile(_rollout_dynamics, dynamic=False, backend=backend)}

    def rollout(rssm, actor, start, horizon, grad="none", noise=None):
        return compiled[grad](rssm, actor, start, horizon, noise)
    return rollout


def implementations(with_compile: bool, backend: str = "inductor") -> dict[str, Callable]:
    """Rollout function per candidate; each runs on ``make_models(...)[name]``."""
    impls: dict[str, Callable] = dict(IMPLS)
    if with_compile:
        impls["compiled"] = compiled_imagine_ref(backend)
    return impls
