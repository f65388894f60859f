"""The specs as the native sequence ops take them: the one place that knows that layout.

``native_rssm_spec(spec)`` and ``native_actor_spec(spec)`` return the spec arguments of
``torch.ops.dreamer_fast.rssm_*`` as a tuple, to be splatted into the call
(``op(params, *native_rssm_spec(spec), ...)``). Today that is ``(ints, floats)``
(csrc/rssm_model.h, ``parse_rssm`` / ``parse_actor``)::

    rssm ints:   [cell, classes (0 = Gaussian), stoch, blocks, dynlayers, cell_act,
                  cell_bias, n_img_in, n_img_out, n_obs_out,
                  then (has_bias, norm, act) per dense layer: img_in, img_out, obs_out]
    rssm floats: [eps, cell_eps, update_bias, unimix, min_std]
    actor ints:  [head, action_size, n_layers, then (has_bias, norm, act) per layer]
    actor floats: [eps, min_std, max_std, std_offset, mean_scale, unimix]

``native_actor_spec(None)`` is the spec of "no actor" (imagination with given actions).
"""

from __future__ import annotations

from dreamer_fast.ops.dense import ACTS, NORMS
from dreamer_fast.ops.rssm_spec import ActorSpec, DenseSpec, RSSMSpec

CELL_CODES = {"gru": 0, "ln_gru": 1, "block_gru": 2}
HEAD_CODES = {"tanh_normal": 0, "bounded_normal": 1, "categorical": 2}


def _layer_ints(layers: tuple[DenseSpec, ...]) -> list[int]:
    out: list[int] = []
    for d in layers:
        out += [int(d.has_bias), NORMS[d.norm], ACTS[d.act]]
    return out


def native_rssm_spec(spec: RSSMSpec) -> tuple:
    """The RSSM spec arguments of the native ops (see the module docstring)."""
    ints = [CELL_CODES[spec.cell], spec.classes or 0, spec.stoch, spec.blocks, spec.dynlayers,
            ACTS[spec.cell_act], int(spec.cell_bias), len(spec.img_in), len(spec.img_out),
            len(spec.obs_out), *_layer_ints(spec.img_in), *_layer_ints(spec.img_out),
            *_layer_ints(spec.obs_out)]
    floats = [float(spec.eps), float(spec.cell_eps), float(spec.update_bias),
              float(spec.unimix), float(spec.min_std)]
    return ints, floats


def native_actor_spec(spec: ActorSpec | None) -> tuple:
    """The actor spec arguments of the native ops; ``None``: no actor."""
    if spec is None:
        return [], []
    ints = [HEAD_CODES[spec.head], spec.action_size, len(spec.layers),
            *_layer_ints(spec.layers)]
    floats = [float(spec.eps), float(spec.min_std), float(spec.max_std),
              float(spec.std_offset), float(spec.mean_scale), float(spec.unimix)]
    return ints, floats
