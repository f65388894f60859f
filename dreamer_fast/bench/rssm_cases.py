"""Benchmark cases of the RSSM: one image step per cell at B=1024 and a 64-step observe
(B=16, deter 512, hidden 512, 32x32 latents, ln_gru), fused vs reference backend.

Both backends hold the same parameters and get the same noise; the timed run is the
forward pass (under no_grad) or forward + backward of a scalar loss on the outputs.
"""

from __future__ import annotations

import torch

from dreamer_fast.bench.timing import Prepare
from dreamer_fast.nn import RSSM

MODES = ("forward", "forward+backward")


def make_pair(cell: str, device: torch.device, dtype: torch.dtype, *, deter: int = 512,
              hidden: int = 512, embed: int = 1024, action: int = 6) -> dict[str, RSSM]:
    torch.manual_seed(0)
    kw = dict(stoch=32, classes=32, deter=deter, hidden=hidden, action_size=action,
              embed_size=embed, cell=cell, norm="rms" if cell == "block_gru" else "layer",
              act="silu", blocks=8, device=device, dtype=dtype)
    fused, ref = RSSM(**kw, backend="fused"), RSSM(**kw, backend="ref")
    ref.load_state_dict(fused.state_dict())
    return {"fast": fused, "eager": ref}


def image_step_case(model: RSSM, B: int, mode: str) -> Prepare:
    p = next(model.parameters())
    g = torch.Generator(device="cpu").manual_seed(B)
    state = {k: v.normal_(generator=g) if k != "stoch" else v
             for k, v in model.initial(B).items()}
    state = {k: v.to(p.device) for k, v in state.items()}
    action = torch.randn(B, model.action_size, generator=g).to(p)
    noise = torch.rand(B, model.stoch, generator=g).to(p)

    def prepare():
        if mode == "forward":
            def run():
                with torch.no_grad():
                    return model.img_step(state, action, noise)
            return run

        def run():
            model.zero_grad(set_to_none=True)
            out = model.img_step(state, action, noise)
            model.get_feat(out).square().mean().backward()
        return run
    return prepare


def observe_case(model: RSSM, B: int, T: int, mode: str) -> Prepare:
    p = next(model.parameters())
    g = torch.Generator(device="cpu").manual_seed(B * T)
    embed = torch.randn(B, T, model.embed_size, generator=g).to(p)
    action = torch.randn(B, T, model.action_size, generator=g).to(p)
    is_first = torch.zeros(B, T, dtype=torch.bool, device=p.device)
    is_first[:, 0] = True
    noise = (torch.rand(B, T, model.stoch, generator=g).to(p),
             torch.rand(B, T, model.stoch, generator=g).to(p))

    def prepare():
        if mode == "forward":
            def run():
                with torch.no_grad():
                    return model.observe(embed, action, is_first, noise=noise)
            return run

        def run():
            model.zero_grad(set_to_none=True)
            post, prior = model.observe(embed, action, is_first, noise=noise)
            kl, _, _ = model.kl_loss(post, prior)
            (kl.mean() + model.get_feat(post).square().mean()).backward()
        return run
    return prepare
