"""Benchmark cases of the imagination rollout: 1024 start states x H=15 steps, actor MLP
+ RSSM image step, fused (``imagine``) vs the eager reference (``imagine_ref``), in both
gradient modes.

Sizes: ``debug`` (deter 128, hidden 128, 8x8 latents, actor 2x128), where per-op overhead
dominates, and ``S`` (deter 512, hidden 512, 32x32 latents, actor 2x512), where the GEMMs
do. ``grad='none'`` times the forward rollout; ``grad='dynamics'`` times the rollout plus
the backward of a scalar loss on the features into the actor.
"""

from __future__ import annotations

import torch

from dreamer_fast.bench.timing import Prepare
from dreamer_fast.nn import RSSM, Actor
from dreamer_fast.ops import draw_imagine_noise, imagine, imagine_ref

SIZES = {
    "debug": dict(deter=128, hidden=128, stoch=8, classes=8, units=128),
    "S": dict(deter=512, hidden=512, stoch=32, classes=32, units=512),
}
MODES = ("none", "dynamics")


def make_models(size: str, device: torch.device, dtype: torch.dtype, cell: str = "ln_gru",
                action: int = 6) -> dict[str, tuple[RSSM, Actor]]:
    cfg = SIZES[size]
    torch.manual_seed(0)
    out = {}
    for name, backend in (("fast", "fused"), ("eager", "ref")):
        rssm = RSSM(stoch=cfg["stoch"], classes=cfg["classes"], deter=cfg["deter"],
                    hidden=cfg["hidden"], action_size=action, embed_size=cfg["hidden"],
                    cell=cell, norm="layer", act="silu", device=device, dtype=dtype,
                    backend=backend)
        actor = Actor(rssm.feat_size, action, head="bounded_normal", units=cfg["units"],
                      layers=2, device=device, dtype=dtype, backend=backend)
        out[name] = (rssm, actor)
    fast_rssm, fast_actor = out["fast"]
    out["eager"][0].load_state_dict(fast_rssm.state_dict())
    out["eager"][1].load_state_dict(fast_actor.state_dict())
    return out


def rollout_case(models: tuple[RSSM, Actor], fn, n: int, horizon: int, grad: str) -> Prepare:
    rssm, actor = models
    p = next(rssm.parameters())
    g = torch.Generator(device="cpu").manual_seed(n)
    start = {k: (v.normal_(generator=g) if k in ("deter", "logit") else v).to(p.device)
             for k, v in rssm.initial(n).items()}
    noise = draw_imagine_noise(rssm, actor, n, horizon, like=start["deter"])

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
