"""Benchmark cases of the RSSM: one image step per cell at B=1024 and a 64-step observe
(B=16, deter 512, hidden 512, 32x32 latents, ln_gru), fused vs reference backend, and
optionally the reference backend under ``torch.compile`` ("compiled").

All candidates hold the same parameters and get the same noise; the timed run is the
forward pass (under no_grad) or forward + backward of a scalar loss on the outputs.

The compiled candidate is a third ``RSSM(backend='ref')`` whose per-step methods
``img_step`` and ``obs_step`` are ``torch.compile``-d (:func:`compile_steps`), and whose
``observe`` is a Python loop over the 64 steps calling the compiled ``obs_step``: that
is what one would compile in practice (compiling the whole ``observe`` would unroll the
64 steps, each with two categorical samplers whose reference loops over the 32 classes
in Python). Both steps trace as single graphs (no graph breaks, for every cell); they
are compiled with the default ``fullgraph=False`` like the λ-return's compiled column,
so a future graph break would slow the column down rather than stop the run. The backward
runs through the compiled graphs (AOTAutograd).
"""

from __future__ import annotations

import functools

import torch

from dreamer_fast.bench.timing import Prepare
from dreamer_fast.nn import RSSM

MODES = ("forward", "forward+backward")


def make_pair(cell: str, device: torch.device, dtype: torch.dtype, *, deter: int = 512,
              hidden: int = 512, embed: int = 1024, action: int = 6, stoch: int = 32,
              classes: int = 32, with_compile: bool = False,
              compile_backend: str = "inductor") -> dict[str, RSSM]:
    """``{"fast": fused, "eager": ref}`` RSSMs with equal parameters, plus ``"compiled"``
    (another ref RSSM, :func:`compile_steps`) when ``with_compile``."""
    torch.manual_seed(0)
    kw = dict(stoch=stoch, classes=classes, deter=deter, hidden=hidden, action_size=action,
              embed_size=embed, cell=cell, norm="rms" if cell == "block_gru" else "layer",
              act="silu", blocks=8, device=device, dtype=dtype)
    fused, ref = RSSM(**kw, backend="fused"), RSSM(**kw, backend="ref")
    ref.load_state_dict(fused.state_dict())
    models = {"fast": fused, "eager": ref}
    if with_compile:
        compiled = RSSM(**kw, backend="ref")
        compiled.load_state_dict(fused.state_dict())
        models["compiled"] = compile_steps(compiled, compile_backend)
    return models


def compile_steps(model: RSSM, backend: str = "inductor") -> RSSM:
    """Replaces ``model``'s ``img_step`` and ``obs_step`` by ``torch.compile``-d versions
    (static shapes) and its ``observe`` by :func:`stepwise_observe` over the compiled
    ``obs_step``."""
    model.img_step = torch.compile(model.img_step, dynamic=False, backend=backend)
    model.obs_step = torch.compile(model.obs_step, dynamic=False, backend=backend)
    model.observe = functools.partial(stepwise_observe, model)
    return model


def stepwise_observe(model: RSSM, embed: torch.Tensor, action: torch.Tensor,
                     is_first: torch.Tensor, state=None, noise=None):
    """``model.observe`` as a Python loop over ``model.obs_step`` (same arguments and
    returns: ``[B, T, ...]`` posterior and prior states)."""
    B, T = action.shape[:2]
    state = model.initial(B) if state is None else state
    posts, priors = [], []
    for t in range(T):
        step_noise = None if noise is None else (noise[0][:, t], noise[1][:, t])
        state, prior = model.obs_step(state, action[:, t], embed[:, t], is_first[:, t],
                                      step_noise)
        posts.append(state)
        priors.append(prior)
    stack = lambda states: {k: torch.stack([s[k] for s in states], 1)  # noqa: E731
                            for k in states[0]}
    return stack(posts), stack(priors)


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
