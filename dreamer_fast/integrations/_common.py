"""Pieces the peer integrations share: refusals, layer inspection, method patching."""

from __future__ import annotations

import dataclasses
import types

import torch
from torch import nn

from dreamer_fast.ops._dispatch import use_fused
from dreamer_fast.ops.rssm_spec import RSSMSpec

#: Below this many rows a single step (``T = 1``) runs our reference ops under
#: ``backend='auto'``: the fused sequence ops reorder every weight into oneDNN's blocked
#: layout on each call, which for one step of a few rows costs more than the step itself
#: (sheeprl's step at B=16, S size, 2-core CPU: 45-65 ms fused, 18-35 ms reference,
#: 31-45 ms the peer's eager; the reference ops are the same math, tested equal).
SMALL_STEP_ROWS = 64


def fused_for(backend: str, like: torch.Tensor, rows: int, steps: int) -> bool:
    """Whether a call of ``steps`` steps over ``rows`` rows runs the fused op."""
    if backend == "auto" and steps == 1 and rows < SMALL_STEP_ROWS:
        return False
    return use_fused(backend, like)


class UnsupportedPeerConfig(NotImplementedError):
    """A peer module's configuration that dreamer_fast's ops do not reproduce exactly."""


def refuse(peer: str, option: str, value: object, why: str) -> None:
    raise UnsupportedPeerConfig(f"{peer}: {option}={value!r} is not supported: {why}")


# activation modules -> the ops' act names (exactly the same functions)
_ACTS = {nn.SiLU: "silu", nn.ELU: "elu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
         nn.Identity: "none"}


def act_name(peer: str, where: str, module: nn.Module) -> str:
    """The ops' name of activation module ``module`` or a refusal naming it."""
    if type(module) is nn.GELU and module.approximate == "none":
        return "gelu"
    if type(module) is nn.ELU and module.alpha != 1.0:
        refuse(peer, f"{where} ELU alpha", module.alpha, "the ops' elu has alpha 1")
    name = _ACTS.get(type(module))
    if name is None:
        refuse(peer, f"{where} activation", type(module).__name__,
               f"the ops offer {sorted(set(_ACTS.values()) | {'gelu'})}")
    return name


def layer_norm_eps(peer: str, where: str, norm: nn.Module) -> float:
    """The eps of a LayerNorm with affine weight and bias over the last dim."""
    if not isinstance(norm, nn.LayerNorm):
        refuse(peer, f"{where} norm", type(norm).__name__, "expected nn.LayerNorm")
    if len(norm.normalized_shape) != 1 or norm.weight is None or norm.bias is None:
        refuse(peer, f"{where} LayerNorm", norm,
               "the ops' layer norm is over the last dim with weight and bias")
    return float(norm.eps)


def spec_supports(field: str) -> bool:
    """Whether this build's RSSMSpec has ``field`` (options added to the ops later)."""
    return field in {f.name for f in dataclasses.fields(RSSMSpec)}


def need_spec_field(peer: str, option: str, value: object, field: str) -> None:
    if not spec_supports(field):
        refuse(peer, option, value, f"this build of dreamer_fast's RSSM ops has no "
               f"`{field}` option yet")


_ORIGINALS = "_dreamer_fast_originals"


def patch_methods(module: nn.Module, methods: dict) -> None:
    """Binds ``methods`` (name -> function(self, ...)) on this instance only; the class's
    methods stay reachable through :func:`original`. Instance attributes that are plain
    functions are neither parameters nor buffers: ``state_dict`` is unchanged."""
    if hasattr(module, _ORIGINALS):
        raise RuntimeError(f"{type(module).__name__} is already accelerated")
    originals = {name: getattr(module, name, None) for name in methods}
    object.__setattr__(module, _ORIGINALS, originals)
    for name, fn in methods.items():
        object.__setattr__(module, name, types.MethodType(fn, module))


def unpatch_methods(module: nn.Module) -> None:
    originals = module.__dict__.pop(_ORIGINALS, None)
    if originals is None:
        raise RuntimeError(f"{type(module).__name__} is not accelerated")
    for name in originals:
        module.__dict__.pop(name, None)


def original(module: nn.Module, name: str):
    """The peer's own bound method ``name`` of an accelerated module."""
    return module.__dict__[_ORIGINALS][name]


def is_accelerated(module: nn.Module) -> bool:
    return _ORIGINALS in module.__dict__


def unimix_log_probs(logit: torch.Tensor, unimix: float) -> torch.Tensor:
    """``log((1 − u)·softmax(l) + u/K)``, normalised by ``logsumexp`` as
    ``torch.distributions.Categorical`` normalises the logits it is given."""
    if unimix > 0.0:
        probs = torch.softmax(logit, -1)
        probs = probs * (1.0 - unimix) + unimix / probs.shape[-1]
        logit = torch.log(probs)
    return logit - logit.logsumexp(-1, keepdim=True)
