"""RSSM spec variants for the tests of the RSSM ops: a spec and flat parameter list
built by ``dreamer_fast.nn.RSSM``, changed to the peers' options the module does not
build (``cell_norm=False``, ``cell_state_first``, ``std_act``, ``mean_act``,
``min_std_mode``, ``initial='learned'``)."""

from __future__ import annotations

import dataclasses

import torch

from dreamer_fast.ops import RSSMSpec

#: id -> RSSMSpec fields, each a peer's option (dreamerv3-torch: norm False, std/mean
#: activations, initial='learned'; sheeprl: cat(h, x) and a learned initial state whose
#: categorical mode carries no gradient)
VARIANTS: dict[str, dict] = {
    "no-norm": dict(cell_norm=False),
    "state-first": dict(cell_state_first=True),
    "sigmoid2-tanh5": dict(std_act="sigmoid2", mean_act="tanh5"),
    "abs": dict(std_act="abs"),
    "sigmoid": dict(std_act="sigmoid"),
    # TorchRL: std = max(softplus(raw), scale_lb)
    "clamp": dict(min_std_mode="clamp", min_std=0.6),
    "learned": dict(initial="learned"),
    "learned-nograd": dict(initial="learned", initial_stoch_grad=False),
    "nm512-gauss": dict(cell_norm=False, std_act="sigmoid2", mean_act="tanh5",
                        initial="learned"),
    "sheeprl": dict(cell_state_first=True, initial="learned", initial_stoch_grad=False),
}


def variant(spec: RSSMSpec, params: list[torch.Tensor], gen: torch.Generator | None = None,
            **fields) -> tuple[RSSMSpec, list[torch.Tensor]]:
    """``spec`` with ``fields`` replaced and its parameter list to match: the cell's norm
    tensors dropped for ``cell_norm=False``, a learned initial ``W [D]`` (random, so
    tanh(W) is not zero) appended for ``initial='learned'``. The other fields change no
    parameter."""
    new = dataclasses.replace(spec, **fields)
    params = list(params)
    if spec.cell_norm and not new.cell_norm:
        cell = spec.param_slices()["cell"]
        params = params[:cell.start + 1] + params[cell.start + 3:]  # weight only
    if spec.initial != "learned" and new.initial == "learned":
        W = torch.randn(spec.deter, generator=gen, dtype=torch.float64) * 0.7
        params.append(W.to(device=params[0].device, dtype=params[0].dtype))
    assert [tuple(p.shape) for p in params] == [s for _, s in new.param_shapes()]
    return new, params
