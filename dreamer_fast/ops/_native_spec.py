"""The specs as the native sequence ops take them: the one place that knows that layout.

``native_rssm_spec(spec)`` and ``native_actor_spec(spec)`` return the spec arguments of
``torch.ops.dreamer_fast.rssm_*`` as a tuple, to be splatted into the call
(``op(params, *native_rssm_spec(spec), ...)``): one string of ``key=value`` fields
separated by ``;``, parsed and checked by the ops (csrc/rssm/spec.h documents the format
exactly). A dense layer is ``has_bias:norm:act`` with the names of ``NORMS`` / ``ACTS``
(dreamer_fast/ops/dense.py), a layer list is comma-separated (the empty string: no
layers), floats are written by ``repr`` (the shortest string that reads back to the same
double), bools as ``0`` / ``1``::

    cell=ln_gru;classes=32;stoch=32;blocks=1;dynlayers=1;cell_act=silu;cell_bias=0;
    img_in=1:layer:silu;img_out=1:layer:silu,1:none:none;obs_out=...;eps=0.001;
    cell_eps=0.001;cell_norm=1;cell_state_first=0;update_bias=-1.0;unimix=0.01;
    min_std=0.1;std_act=softplus;mean_act=none;min_std_mode=add

    head=tanh_normal;actions=6;layers=...;eps=0.001;min_std=0.1;max_std=1.0;
    std_offset=0.0;mean_scale=1.0;unimix=0.01

(``classes=0``: Gaussian latents.) ``native_actor_spec(None)`` is the spec of "no actor"
(imagination with given actions): the empty string.
"""

from __future__ import annotations

import functools

from dreamer_fast.ops.dense import ACTS, NORMS
from dreamer_fast.ops.rssm_spec import ActorSpec, DenseSpec, RSSMSpec


def _layers(layers: tuple[DenseSpec, ...]) -> str:
    for d in layers:  # the native parser knows exactly these names
        assert d.norm in NORMS and d.act in ACTS, d
    return ",".join(f"{int(d.has_bias)}:{d.norm}:{d.act}" for d in layers)


def _float(x) -> str:
    return repr(float(x))


def _join(fields: dict[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in fields.items())


# Specs are frozen (hashable) and fixed per module: each one's string is built once.
@functools.lru_cache(maxsize=256)
def native_rssm_spec(spec: RSSMSpec) -> tuple:
    """The RSSM spec argument of the native ops (see the module docstring)."""
    assert spec.cell_act in ACTS, spec.cell_act
    return (_join({
        "cell": spec.cell, "classes": str(spec.classes or 0), "stoch": str(spec.stoch),
        "blocks": str(spec.blocks), "dynlayers": str(spec.dynlayers),
        "cell_act": spec.cell_act, "cell_bias": str(int(spec.cell_bias)),
        "img_in": _layers(spec.img_in), "img_out": _layers(spec.img_out),
        "obs_out": _layers(spec.obs_out), "eps": _float(spec.eps),
        "cell_eps": _float(spec.cell_eps), "cell_norm": str(int(spec.cell_norm)),
        "cell_state_first": str(int(spec.cell_state_first)),
        "update_bias": _float(spec.update_bias), "unimix": _float(spec.unimix),
        "min_std": _float(spec.min_std), "std_act": spec.std_act, "mean_act": spec.mean_act,
        "min_std_mode": spec.min_std_mode,
    }),)


@functools.lru_cache(maxsize=256)
def native_actor_spec(spec: ActorSpec | None) -> tuple:
    """The actor spec argument of the native ops; ``None``: no actor."""
    if spec is None:
        return ("",)
    return (_join({
        "head": spec.head, "actions": str(spec.action_size), "layers": _layers(spec.layers),
        "eps": _float(spec.eps), "min_std": _float(spec.min_std),
        "max_std": _float(spec.max_std), "std_offset": _float(spec.std_offset),
        "mean_scale": _float(spec.mean_scale), "unimix": _float(spec.unimix),
    }),)
