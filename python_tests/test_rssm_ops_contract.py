"""The op-contract harness (``op_contract.py``) on the whole-sequence RSSM ops
``rssm_observe`` / ``rssm_imagine`` vs ``rssm_observe_ref`` / ``rssm_imagine_ref``:
every cell x latent kind; observe with a reset mid-sequence and with T = 1; imagine
with given actions (with and without ``feat_out``) and with each actor head drawing
them; the peers' options (``rssm_variants.VARIANTS``: the GRU without its LayerNorm,
cat(h, x), the Gaussian std/mean activations, the learned initial state at t = 0 and at
every reset, with and without a given start state). Float64 values of every output
and the gradients of every parameter (the posterior MLP's must get none in
imagination, nor the learned initial state's) and of every differentiable input."""

from __future__ import annotations

import dataclasses

import torch

from dreamer_fast.nn import RSSM, Actor
from dreamer_fast.ops import rssm_imagine, rssm_imagine_ref, rssm_observe, rssm_observe_ref
from dreamer_fast.ops.rssm_spec import CELLS
from conftest import OpContract, contract_tests
from rssm_variants import VARIANTS, variant

LATENTS = {"gauss": None, "cat": 4}


@dataclasses.dataclass(frozen=True)
class Case:
    cell: str
    latent: str
    B: int
    T: int
    variant: str = ""  # a key of VARIANTS ("": the module's own spec)
    start: bool = True  # False: deter = stoch = None (start from the initial state)


def build_observe(case: Case, dtype, device, gen) -> dict:
    torch.manual_seed(0)
    block = case.cell == "block_gru"
    m = RSSM(stoch=3, classes=LATENTS[case.latent], deter=12, hidden=10, action_size=2,
             embed_size=5, cell=case.cell, norm="rms" if block else "layer",
             act="silu" if block else "elu", blocks=3, dynlayers=2, img_layers=2,
             obs_layers=2, dtype=dtype, backend="fused", device=device)
    spec, B, T = m.spec(), case.B, case.T
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    keep = torch.ones(B, T, dtype=torch.float64)
    keep[:, 0] = 0
    if T > 2:
        keep[0, T // 2] = 0  # a reset mid-sequence
    if spec.classes is None:
        noise = lambda: r(B, T, spec.stoch)  # noqa: E731
    else:
        noise = lambda: torch.rand(B, T, spec.stoch, generator=gen, dtype=torch.float64)  # noqa: E731
    to = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    params = [p.detach().clone() for p in m.spec_params()]
    if case.variant:
        spec, params = variant(spec, params, gen, **VARIANTS[case.variant])
    deter, stoch = to(r(B, spec.deter)), to(r(B, spec.flat_stoch).tanh())
    if not case.start:
        deter = stoch = None
    return dict(params=params, spec=spec, embed=to(r(B, T, spec.embed_size)),
                action=to(r(B, T, spec.action_size)), keep=to(keep), deter=deter, stoch=stoch,
                prior_noise=to(noise()), post_noise=to(noise()))


RSSM_OBSERVE = OpContract(
    name="rssm_observe", fast=rssm_observe, ref=rssm_observe_ref, build=build_observe,
    differentiable=("params", "embed", "action", "deter", "stoch"),
    outputs=("deter", "post_stoch", "post_a", "post_b", "prior_stoch", "prior_a", "prior_b"),
)

def _variant_cases() -> dict:
    """ln_gru with every variant (the Gaussian activations on Gaussian latents only),
    the learned initial state on every cell, and starts without a given state."""
    out = {}
    for name, fields in VARIANTS.items():
        gauss_only = bool({"std_act", "mean_act", "min_std_mode"} & set(fields))
        for latent in ("gauss",) if gauss_only else LATENTS:
            out[f"ln_gru-{latent}-{name}"] = Case("ln_gru", latent, 3, 5, name)
    for cell in ("gru", "block_gru"):
        for latent in LATENTS:
            out[f"{cell}-{latent}-learned"] = Case(cell, latent, 3, 5, "learned")
    out["gru-gauss-clamp"] = Case("gru", "gauss", 3, 5, "clamp")  # TorchRL's RSSM
    for latent in LATENTS:
        out[f"ln_gru-{latent}-learned-nostart"] = Case("ln_gru", latent, 3, 5, "learned",
                                                       start=False)
        out[f"ln_gru-{latent}-zeros-nostart"] = Case("ln_gru", latent, 2, 3, start=False)
    out["ln_gru-cat-learned-T1"] = Case("ln_gru", "cat", 2, 1, "learned")
    return out


globals().update(contract_tests(
    RSSM_OBSERVE, grid_dtypes=(torch.float64,),
    grid={**{f"{cell}-{latent}-B{B}-T{T}": Case(cell, latent, B, T) for cell in CELLS
             for latent in LATENTS for B, T in [(3, 5), (2, 1)]}, **_variant_cases()},
))


# --------------------------------------------------------------------------------------
# rssm_imagine: actions given (with and without feat_out) or drawn by each actor head
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ImagineCase:
    cell: str
    latent: str
    mode: str  # "given" or an actor head
    feat_out: bool
    N: int
    H: int
    variant: str = ""


def build_imagine(case: ImagineCase, dtype, device, gen) -> dict:
    kw = build_observe(Case(case.cell, case.latent, case.N, 1, case.variant), dtype, device,
                       gen)
    spec, N, H = kw["spec"], case.N, case.H
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    out = dict(params=kw["params"], spec=spec, deter=kw["deter"], stoch=kw["stoch"],
               actions=None, action_noise=None,
               stoch_noise=u(N, H, spec.stoch) if spec.classes else r(N, H, spec.stoch),
               horizon=H, actor_params=[], actor_spec=None, feat_out=case.feat_out)
    if case.mode == "given":
        out["actions"] = r(N, H, spec.action_size).tanh()
    else:
        torch.manual_seed(1)
        actor = Actor(spec.feat_size, spec.action_size, head=case.mode, units=8, layers=2,
                      dtype=dtype, backend="fused")
        a = actor.spec()
        out.update(actor_params=[p.detach().clone() for p in actor.spec_params()], actor_spec=a,
                   action_noise=(u if a.head == "categorical" else r)(N, H, a.noise_size))
    return out


def _posterior_params(kw: dict) -> set:
    """The posterior MLP and the learned initial state take no part in imagination:
    their parameters get no gradient."""
    sl = kw["spec"].param_slices()
    return {f"params[{i}]" for part in ("obs_out", "initial")
            for i in range(sl[part].start, sl[part].stop)}


RSSM_IMAGINE = OpContract(
    name="rssm_imagine", fast=rssm_imagine, ref=rssm_imagine_ref, build=build_imagine,
    differentiable=("params", "deter", "stoch", "actions", "actor_params"),
    outputs=("deter", "stoch", "a", "b", "action", "feat"), ungraded=_posterior_params,
)

globals().update(contract_tests(
    RSSM_IMAGINE, grid_dtypes=(torch.float64,),
    grid={f"{cell}-{latent}-{mode}-feat{int(feat)}": ImagineCase(cell, latent, mode, feat,
                                                                *((4, 3) if feat else (3, 1)))
          for cell in CELLS for latent in LATENTS
          for mode, feat in [("given", False), ("given", True), ("tanh_normal", True),
                             ("bounded_normal", False), ("categorical", True)]}
    | {f"ln_gru-{latent}-given-{name}": ImagineCase("ln_gru", latent, "given", False, 3, 4,
                                                    name)
       for name, fields in VARIANTS.items()
       for latent in (("gauss",) if {"std_act", "mean_act", "min_std_mode"} & set(fields)
                      else LATENTS)}
    | {"ln_gru-gauss-tanh_normal-nm512": ImagineCase("ln_gru", "gauss", "tanh_normal", True, 4,
                                                     3, "nm512-gauss")},
))
