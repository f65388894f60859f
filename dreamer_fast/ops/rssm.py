"""Whole-sequence RSSM ops: one native call forward, one backward (csrc/rssm_ops.cpp).

* ``rssm_observe`` — ``T`` posterior steps over a batch-major sequence (used by
  ``RSSM.observe`` and, with ``T = 1``, ``RSSM.obs_step``).
* ``rssm_imagine`` — ``H`` prior steps whose actions are given (``RSSM.img_step`` with
  ``H = 1``, ``RSSM.imagine_with_action``) or sampled from an :class:`~dreamer_fast.nn.Actor`
  on each step's feature (``dreamer_fast.nn.imagine``).

The modules' parameters are passed as one flat list with an integer and a float spec
(:func:`rssm_spec`, :func:`actor_spec`); the native side rebuilds the layer structure
from them. The references are the module methods with ``backend='ref'`` (and
``imagine_ref``), which compose the ``*_ref`` ops step by step.

Both ops are torch.library ops: their C++ bodies are also registered as Meta kernels
(nothing is launched on the meta device), which gives FakeTensor every output shape, so
the fused ``RSSM.observe`` and ``imagine`` trace under ``torch.compile(fullgraph=True)``
with static shapes (``dynamic=False``; the bodies read concrete sizes). No output shares
memory with an input or another output.

Memory: with autograd recording, the forward keeps every layer input, pre-activation
and per-row norm statistics of every step (what a step-by-step eager graph keeps, minus
autograd's own bookkeeping); under ``no_grad`` it keeps nothing.
"""

from __future__ import annotations

import torch

from dreamer_fast import _extension
from dreamer_fast.ops.dense import ACTS, NORMS

CELL_CODES = {"gru": 0, "ln_gru": 1, "block_gru": 2}
HEAD_CODES = {"tanh_normal": 0, "bounded_normal": 1, "categorical": 2}


def _dense_entries(layers) -> tuple[list[torch.Tensor], list[int], float | None]:
    tensors, ints, eps = [], [], None
    for d in layers:
        tensors.append(d.weight)
        for t in (d.bias, d.norm_weight, d.norm_bias):
            if t is not None:
                tensors.append(t)
        ints += [int(d.bias is not None), NORMS[d.norm], ACTS[d.act]]
        if d.norm != "none":
            if eps is not None and eps != d.eps:
                raise ValueError("rssm_fused: all normalised dense layers must share one eps")
            eps = d.eps
    return tensors, ints, eps


def rssm_spec(rssm) -> tuple[list[torch.Tensor], list[int], list[float]]:
    """``(params, ints, floats)`` of an :class:`~dreamer_fast.nn.RSSM` (see rssm_model.h)."""
    cell = rssm.cell
    img_in = [] if rssm.img_in is None else [rssm.img_in]
    t_in, i_in, e_in = _dense_entries(img_in)
    t_out, i_out, e_out = _dense_entries(list(rssm.img_out))
    t_obs, i_obs, e_obs = _dense_entries(list(rssm.obs_out))
    eps = next((e for e in (e_in, e_out, e_obs) if e is not None), 1e-3)
    if rssm.cell_type == "gru":
        has_bias = cell.bias
        cell_t = [cell.weight_ih, cell.weight_hh] + (
            [cell.bias_ih, cell.bias_hh] if has_bias else [])
        blocks, dynlayers, cell_act, cell_eps, update_bias = 1, 1, 0, 1e-3, -1.0
    elif rssm.cell_type == "ln_gru":
        has_bias = False
        cell_t = [cell.weight, cell.norm_weight, cell.norm_bias]
        blocks, dynlayers, cell_act = 1, 1, 0
        cell_eps, update_bias = cell.eps, cell.update_bias
    else:
        has_bias = True
        cell_t = [*cell.in_params, *cell.hidden_params, cell.gru_weight, cell.gru_bias]
        blocks, dynlayers = cell.blocks, len(cell.hidden_params) // 3
        cell_act, cell_eps, update_bias = ACTS[cell.act], cell.eps, -1.0
    ints = [CELL_CODES[rssm.cell_type], rssm.classes or 0, rssm.stoch, blocks, dynlayers,
            cell_act, int(has_bias), len(img_in), len(rssm.img_out), len(rssm.obs_out),
            *i_in, *i_out, *i_obs]
    floats = [float(eps), float(cell_eps), float(update_bias), rssm.unimix, rssm.min_std]
    return [*t_in, *cell_t, *t_out, *t_obs], ints, floats


def actor_spec(actor) -> tuple[list[torch.Tensor], list[int], list[float]]:
    """``(params, ints, floats)`` of an :class:`~dreamer_fast.nn.Actor`."""
    tensors, ints, eps = _dense_entries(list(actor.net))
    ints = [HEAD_CODES[actor.head], actor.action_size, len(actor.net), *ints]
    floats = [float(eps or 1e-3), actor.min_std, actor.max_std, actor.std_offset,
              actor.mean_scale, actor.unimix]
    return tensors, ints, floats


def _obs_tensor_count(ints: list[int]) -> int:
    """How many of the RSSM's tensors (the last ones) belong to the posterior MLP."""
    n_obs = ints[9]
    triples = ints[len(ints) - 3 * n_obs:]
    return sum(1 + has_bias + (norm != 0) + (norm == 1)
               for has_bias, norm, _ in zip(triples[0::3], triples[1::3], triples[2::3]))


def _needs_graph(*tensors) -> bool:
    return torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors)


def rssm_observe(rssm, embed, action, keep, deter, stoch, prior_noise, post_noise):
    """Raw op call: returns ``(deter, post_stoch, post_a, post_b, prior_stoch, prior_a,
    prior_b)`` batch-major with flat latents (``a``/``b`` = logits/empty or mean/std)."""
    _extension.require_device_kernels("rssm_observe", embed.device)
    params, ints, floats = rssm_spec(rssm)
    save = _needs_graph(*params, embed, action, deter, stoch)
    out = torch.ops.dreamer_fast.rssm_observe(params, ints, floats, embed, action, keep, deter,
                                              stoch, prior_noise, post_noise, save)
    return out[:7]


def rssm_imagine(rssm, actor, deter, stoch, actions, action_noise, stoch_noise, horizon,
                 wm_params=None, feat_out=False):
    """Raw op call: returns ``(deter, stoch, a, b, action, feat)`` for steps ``1..H``,
    batch-major with flat latents. ``actions`` given -> ``actor`` unused. ``feat_out``:
    ``feat = cat([flat stoch, deter], -1)`` of steps ``0..H`` (start included),
    ``[N, H + 1, F]``, and empty ``deter``/``stoch``; otherwise ``feat`` is empty.
    When recording for autograd with no world-model parameter requiring a gradient
    (``wm_params`` detaching them), the op saves nothing that only their gradients read."""
    _extension.require_device_kernels("rssm_imagine", deter.device)
    params, ints, floats = rssm_spec(rssm)
    if wm_params is not None:
        params = wm_params(params)
    if actor is not None and actions is None:
        a_params, a_ints, a_floats = actor_spec(actor)
    else:
        a_params, a_ints, a_floats = [], [], []
        action_noise = deter.new_empty(0) if action_noise is None else action_noise
    save = _needs_graph(*params, *a_params, deter, stoch, actions)
    # without world-model gradients (detached parameters) the op keeps no inputs that
    # only those weight gradients would read
    save_wm_inputs = save and any(p.requires_grad for p in params)
    out = torch.ops.dreamer_fast.rssm_imagine(params, ints, floats, a_params, a_ints, a_floats,
                                              deter, stoch, actions, action_noise, stoch_noise,
                                              horizon, save, feat_out, save_wm_inputs)
    return out[:6]


def _structured(ctx, grads):
    """register_autograd wants the gradients shaped like the inputs: a list of the same
    length for every tensor-list input (and for an empty list), None for the rest."""
    out = []
    for n, g in zip(ctx.list_lens, grads):
        if n is None:
            out.append(g)
        else:
            out.append(list(g) if g is not None else [None] * n)
    return tuple(out)


def _list_lens(inputs):
    def tensor_list(x):
        return isinstance(x, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in x)
    return [len(x) if tensor_list(x) else None for x in inputs]


def _register() -> None:
    def observe_setup(ctx, inputs, output):
        ctx.list_lens = _list_lens(inputs)
        params, spec, fspec = inputs[:3]
        saved = output[7]
        ctx.mark_non_differentiable(*saved)
        # Unused outputs get None, not zero tensors: autograd would otherwise allocate
        # and fill a zero gradient for each of the hundreds of saved activations.
        ctx.set_materialize_grads(False)
        ctx.spec, ctx.fspec, ctx.n_saved = spec, fspec, len(saved)
        ctx.save_for_backward(*saved, *params)

    def observe_backward(ctx, gd, gps, gpa, gpb, gqs, gqa, gqb, _g_saved):
        t = ctx.saved_tensors
        if ctx.n_saved == 0:
            raise RuntimeError("rssm_observe: backward through a call made without "
                               "recording (save=False)")
        saved, params = list(t[:ctx.n_saved]), list(t[ctx.n_saved:])
        d_params, d_embed, d_action, d_deter, d_stoch = (
            torch.ops.dreamer_fast.rssm_observe_backward(gd, gps, gpa, gpb, gqs, gqa, gqb, saved,
                                                        params, ctx.spec, ctx.fspec))
        return _structured(ctx, (d_params, None, None, d_embed, d_action, None, d_deter, d_stoch,
                                 None, None, None))

    torch.library.register_autograd("dreamer_fast::rssm_observe", observe_backward,
                                    setup_context=observe_setup)

    def imagine_setup(ctx, inputs, output):
        ctx.list_lens = _list_lens(inputs)
        params, spec, fspec, a_params, a_spec, a_fspec, deter, stoch, actions = inputs[:9]
        saved = output[6]
        ctx.mark_non_differentiable(*saved)
        ctx.set_materialize_grads(False)
        ctx.spec, ctx.fspec, ctx.a_spec, ctx.a_fspec = spec, fspec, a_spec, a_fspec
        ctx.use_actor = actions is None
        ctx.need_params = any(p.requires_grad for p in params)
        ctx.need_actor = any(p.requires_grad for p in a_params)
        ctx.n_saved, ctx.n_params = len(saved), len(params)
        ctx.save_for_backward(*saved, *params, *a_params)

    def imagine_backward(ctx, gd, gs, ga, gb, g_action, g_feat, _g_saved):
        if ctx.n_saved == 0:
            raise RuntimeError("rssm_imagine: backward through a call made without "
                               "recording (save=False)")
        t = list(ctx.saved_tensors)
        saved, t = t[:ctx.n_saved], t[ctx.n_saved:]
        params, a_params = t[:ctx.n_params], t[ctx.n_params:]
        d_params, d_actor, d_deter, d_stoch, d_actions = (
            torch.ops.dreamer_fast.rssm_imagine_backward(
                gd, gs, ga, gb, g_action, g_feat, saved, params, ctx.spec, ctx.fspec, a_params,
                ctx.a_spec, ctx.a_fspec, ctx.use_actor, ctx.need_params, ctx.need_actor))
        if ctx.need_params:
            # the posterior MLP takes no part in imagination: no gradient, as in eager
            n_obs = _obs_tensor_count(ctx.spec)
            d_params = list(d_params[:len(d_params) - n_obs]) + [None] * n_obs
        return _structured(ctx, (
            d_params if ctx.need_params else None, None, None,
            d_actor if ctx.need_actor else None, None, None, d_deter, d_stoch,
            None if ctx.use_actor else d_actions, None, None, None, None, None, None))

    torch.library.register_autograd("dreamer_fast::rssm_imagine", imagine_backward,
                                    setup_context=imagine_setup)


if _extension.has_extension():
    _register()
