"""Whole-sequence RSSM ops over flat tensors: one native call forward, one backward
(csrc/rssm_ops.cpp), and their pure-PyTorch references (same signatures and returns).

``params`` is the flat parameter list of an :class:`~dreamer_fast.ops.RSSMSpec` (order
and shapes: :mod:`dreamer_fast.ops.rssm_spec`); ``actor_params`` that of an
:class:`~dreamer_fast.ops.ActorSpec`. Everything is batch-major; ``B`` (or ``N``) batch,
``T`` steps (``H`` for imagination), ``D`` deter, ``S`` latent groups, ``Z = S·K``
(categorical, ``K`` classes) or ``S`` (Gaussian) the flat stoch size, ``A`` actions,
``E`` embed, ``F = Z + D``. One step of the RSSM (``spec.cell``)::

    gru / ln_gru:  x = img_in(cat([stoch, action])),  deter' = cell(x, deter)
    block_gru:     deter' = block_gru_cell(deter, stoch, action)
    prior:         stats = img_out(deter'),  (stoch', a, b) = latent(stats, noise)
    posterior:     stats = obs_out(cat([deter', embed])), (stoch', a, b) = latent(stats, noise)

where ``latent`` is ``categorical_sample(stats.view(S, K), uniform, unimix)`` (``a`` =
the logits ``[.., Z]``, ``b`` empty) or ``gaussian_sample(stats, normal, min_std,
std_act, mean_act, min_std_mode)`` (``a`` = mean, ``b`` = std, ``[.., S]``).

``rssm_observe(params, spec, embed, action, keep, deter, stoch, prior_noise, post_noise)``
    ``embed [B, T, E]``, ``action [B, T, A]`` (the action before each step), ``keep
    [B, T]`` (0 where a sequence restarts), start ``deter [B, D]``, ``stoch [B, Z]``
    (or both None: every sequence starts from the initial state, as if ``keep[:, 0]``
    were 0), noise ``[B, T, S]`` each. For each t::

        deter = keep_t · deter + (1 − keep_t) · deter0,  stoch likewise with stoch0
        action_t = keep_t · action_t

    then the prior step, then the posterior step whose sample is the next ``stoch``.
    ``(deter0, stoch0)`` is the initial state (:func:`rssm_initial`: zeros, or the
    learned one of ``spec.initial='learned'``, which gets the gradient of every reset).
    Returns ``(deter, post_stoch, post_a, post_b, prior_stoch, prior_a, prior_b)``, each
    ``[B, T, ..]`` (``deter [B, T, D]`` is shared by posterior and prior; an empty
    ``b`` is ``[0]``).

``rssm_initial(params, spec)`` -> ``(deter0 [D], stoch0 [Z])``
    The initial state of ``spec.initial``: zeros, or (``'learned'``, ``W`` = the last
    parameter ``initial [D]``) ``deter0 = tanh(W)`` and ``stoch0`` the mode of the prior
    at ``deter0``: Gaussian ``mean_act(m)`` of ``img_out(deter0)``; categorical, with
    ``lp = log((1 − unimix) softmax(l) + unimix / K)`` (``lp = l`` for unimix 0)
    normalised ``lp − logsumexp(lp)``, ``onehot(argmax lp) + lp − sg(lp)``. With
    ``spec.initial_stoch_grad=False`` stoch0 is detached (the plain one-hot / mean).
    Plain PyTorch ops, differentiable in ``W`` and the prior MLP; both observe ops
    and their references call it.

``rssm_imagine(params, spec, deter, stoch, actions, action_noise, stoch_noise, horizon,
actor_params=(), actor_spec=None, feat_out=False)``
    ``H = horizon`` prior steps from ``deter [N, D]``, ``stoch [N, Z]`` with
    ``stoch_noise [N, H, S]``. The actions are given (``actions [N, H, A]``; leave the
    actor arguments and ``action_noise`` out) or drawn by the actor on each step's
    feature: ``actions=None``, ``action_noise [N, H, actor_spec.noise_size]``,
    ``a_t = head(mlp(cat([stoch_t, deter_t])), action_noise[:, t])`` (heads: see
    :class:`~dreamer_fast.ops.ActorSpec`). Returns ``(deter, stoch, a, b, action, feat)``
    for steps ``1..H`` (``[N, H, ..]``; ``action`` is the actions taken). ``feat_out``:
    ``feat = cat([stoch, deter], -1)`` of steps ``0..H`` (start included), ``[N, H + 1,
    F]``, with ``deter``/``stoch`` empty; otherwise ``feat`` is empty. The posterior MLP
    takes no part: its parameters get no gradient.

Both fast ops are differentiable in ``params``, ``actor_params``, ``embed``, ``action``,
``actions``, ``deter`` and ``stoch`` (not in ``keep`` or the noise). They do not
range-check the uniform noise (see ``categorical_sample``), nor do the references.
When recording for autograd with no world-model parameter requiring a gradient (all of
``params`` detached), ``rssm_imagine`` keeps nothing that only their gradients read.

Both are torch.library ops: their C++ bodies are also registered as Meta kernels, which
gives FakeTensor every output shape, so callers trace under
``torch.compile(fullgraph=True)`` with static shapes (``dynamic=False``; the bodies read
concrete sizes). No output shares memory with an input or another output. With
autograd recording the forward keeps every layer input, pre-activation and per-row norm
statistics of every step (what a step-by-step eager graph keeps, minus autograd's
bookkeeping); under ``no_grad`` it keeps nothing.

The references compose the ``*_ref`` ops step by step (a Python loop over time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dreamer_fast import _extension
from dreamer_fast.ops import _checks
from dreamer_fast.ops._native_spec import native_actor_spec, native_rssm_spec
from dreamer_fast.ops.cells import block_gru_cell_ref, gru_cell_ref, ln_gru_cell_ref
from dreamer_fast.ops.dense import linear_norm_act_ref
from dreamer_fast.ops.heads import _REF_MEAN_ACTS, categorical_sample_ref, gaussian_sample_ref
from dreamer_fast.ops.rssm_spec import ActorSpec, DenseSpec, RSSMSpec

__all__ = ["rssm_observe", "rssm_observe_ref", "rssm_imagine", "rssm_imagine_ref",
           "rssm_initial"]

_OBSERVE = "rssm_observe"
_IMAGINE = "rssm_imagine"


# --------------------------------------------------------------------------------------
# Argument checks shared by fast and reference
# --------------------------------------------------------------------------------------

def _check_spec(op: str, name: str, spec: object, cls: type) -> None:
    if not isinstance(spec, cls):
        raise TypeError(f"{op}: `{name}` must be a {cls.__name__}, got {type(spec).__name__}")


def _check_params(op: str, arg: str, params: object, spec, like: torch.Tensor,
                  like_name: str) -> list[torch.Tensor]:
    shapes = spec.param_shapes()
    if not isinstance(params, (list, tuple)):
        raise TypeError(f"{op}: `{arg}` must be a list of tensors, got {type(params).__name__}")
    if len(params) != len(shapes):
        raise ValueError(f"{op}: `{arg}` must hold {len(shapes)} tensors for this spec "
                         f"({', '.join(n for n, _ in shapes)}), got {len(params)}")
    for i, (p, (pname, shape)) in enumerate(zip(params, shapes)):
        name = f"{arg}[{i}]"
        _checks.check_float_tensor(op, name, p)
        if tuple(p.shape) != shape:
            raise ValueError(f"{op}: `{name}` ({pname}) must have shape {shape}, got "
                             f"{tuple(p.shape)}")
        _checks.check_dtype_device(op, like_name, like, name, p)
    return list(params)


def _check_tensor(op: str, name: str, x: object, dims: str, shape: tuple,
                  like: torch.Tensor, like_name: str) -> None:
    _checks.check_float_tensor(op, name, x)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{op}: `{name}` must have shape [{dims}] = {tuple(shape)}, got "
                         f"{tuple(x.shape)}")
    _checks.check_dtype_device(op, like_name, like, name, x)


def _observe_args(params, spec, embed, action, keep, deter, stoch, prior_noise,
                  post_noise) -> tuple:
    """The checked params, and keep, deter, stoch with a missing start state filled in
    (zeros, ``keep[:, 0] = 0``: the first step resets to the initial state)."""
    op = _OBSERVE
    _check_spec(op, "spec", spec, RSSMSpec)
    if (deter is None) != (stoch is None):
        raise ValueError(f"{op}: `deter` and `stoch` must both be given (the start state) "
                         "or both be None (start from the initial state)")
    _checks.check_float_tensor(op, "embed", embed)
    if embed.dim() != 3:
        raise ValueError(f"{op}: `embed` must be 3-D [B, T, E], got {tuple(embed.shape)}")
    B, T = embed.shape[:2]
    if B < 1 or T < 1:
        raise ValueError(f"{op}: `embed` must hold at least one sequence of at least one "
                         f"step, got shape {tuple(embed.shape)}")
    S, Z = spec.stoch, spec.flat_stoch
    checks = [("embed", embed, "B, T, E", (B, T, spec.embed_size)),
              ("action", action, "B, T, A", (B, T, spec.action_size)),
              ("keep", keep, "B, T", (B, T)),
              ("prior_noise", prior_noise, "B, T, S", (B, T, S)),
              ("post_noise", post_noise, "B, T, S", (B, T, S))]
    if deter is not None:
        checks += [("deter", deter, "B, D", (B, spec.deter)), ("stoch", stoch, "B, Z", (B, Z))]
    for name, x, dims, shape in checks:
        _check_tensor(op, name, x, dims, shape, embed, "embed")
    params = _check_params(op, "params", params, spec, embed, "embed")
    if deter is None:
        deter, stoch = embed.new_zeros(B, spec.deter), embed.new_zeros(B, Z)
        keep = keep.clone()
        keep[:, 0] = 0
    return params, keep, deter, stoch


def _native_params(params: list[torch.Tensor], spec: RSSMSpec) -> list[torch.Tensor]:
    """The parameters the native ops take: all but the learned initial state's ``W``
    (the ops take the initial state itself, see rssm_initial)."""
    return params[:spec.param_slices()["initial"].start]


def _initial(params: list[torch.Tensor], spec: RSSMSpec) -> tuple[torch.Tensor, torch.Tensor]:
    like = params[0]
    if spec.initial == "zeros":
        return like.new_zeros(spec.deter), like.new_zeros(spec.flat_stoch)
    (W,) = params[spec.param_slices()["initial"]]
    deter0 = torch.tanh(W)
    stats = _mlp(_Parts(params, spec).img_out, spec.eps, deter0[None])[0]
    if spec.classes:
        logit = stats.view(spec.stoch, spec.classes)
        if spec.unimix > 0:
            probs = torch.softmax(logit, -1) * (1 - spec.unimix) + spec.unimix / spec.classes
            logit = torch.log(probs)
        lp = logit - logit.logsumexp(-1, keepdim=True)
        onehot = F.one_hot(lp.argmax(-1), spec.classes).to(lp.dtype)
        # the straight-through mode in this order ((onehot + lp) - sg(lp)): its value
        # is the rounding of that sum, as in dreamerv3-torch's OneHotDist.mode
        stoch0 = onehot + lp - lp.detach() if spec.initial_stoch_grad else onehot
        return deter0, stoch0.reshape(spec.flat_stoch)
    mean = _REF_MEAN_ACTS[spec.mean_act](stats[:spec.stoch])
    return deter0, mean if spec.initial_stoch_grad else mean.detach()


def rssm_initial(params: list[torch.Tensor],
                 spec: RSSMSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The initial state ``(deter0 [D], stoch0 [Z])`` of ``spec.initial`` (see the module
    docstring): zeros, or ``tanh(W)`` and the mode of the prior there."""
    _check_spec("rssm_initial", "spec", spec, RSSMSpec)
    if not isinstance(params, (list, tuple)) or not params:
        raise TypeError("rssm_initial: `params` must be a non-empty list of tensors")
    params = _check_params("rssm_initial", "params", params, spec, params[0], "params[0]")
    return _initial(params, spec)


def _imagine_args(params, spec, deter, stoch, actions, action_noise, stoch_noise, horizon,
                  actor_params, actor_spec, feat_out):
    op = _IMAGINE
    _check_spec(op, "spec", spec, RSSMSpec)
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"{op}: `horizon` must be an int >= 1, got {horizon!r}")
    if not isinstance(feat_out, bool):
        raise TypeError(f"{op}: `feat_out` must be a bool, got {type(feat_out).__name__}")
    _checks.check_float_tensor(op, "deter", deter)
    if deter.dim() != 2 or deter.shape[0] < 1:
        raise ValueError(f"{op}: `deter` must be 2-D [N, D] with N >= 1, got "
                         f"{tuple(deter.shape)}")
    N, H, S = deter.shape[0], horizon, spec.stoch
    checks = [("deter", deter, "N, D", (N, spec.deter)),
              ("stoch", stoch, "N, Z", (N, spec.flat_stoch)),
              ("stoch_noise", stoch_noise, "N, H, S", (N, H, S))]
    if actions is None:
        if actor_spec is None:
            raise ValueError(f"{op}: give `actions` or an actor (`actor_params`, "
                             "`actor_spec`) that draws them")
        _check_spec(op, "actor_spec", actor_spec, ActorSpec)
        if actor_spec.feat_size != spec.feat_size:
            raise ValueError(f"{op}: `actor_spec.feat_size`={actor_spec.feat_size} but the "
                             f"RSSM's features have size {spec.feat_size}")
        if actor_spec.action_size != spec.action_size:
            raise ValueError(f"{op}: `actor_spec.action_size`={actor_spec.action_size} but "
                             f"the RSSM takes action_size={spec.action_size}")
        if action_noise is None:
            raise ValueError(f"{op}: `action_noise` is needed when the actor draws the "
                             "actions (`actions` is None)")
        checks.append(("action_noise", action_noise, "N, H, noise_size",
                       (N, H, actor_spec.noise_size)))
    else:
        if actor_spec is not None or (isinstance(actor_params, (list, tuple))
                                      and len(actor_params)):
            raise ValueError(f"{op}: `actor_params` / `actor_spec` must be left out when "
                             "`actions` are given")
        if action_noise is not None:
            raise ValueError(f"{op}: `action_noise` must be None when `actions` are given")
        checks.append(("actions", actions, "N, H, A", (N, H, spec.action_size)))
    for name, x, dims, shape in checks:
        _check_tensor(op, name, x, dims, shape, deter, "deter")
    params = _check_params(op, "params", params, spec, deter, "deter")
    a_params = ([] if actions is not None else
                _check_params(op, "actor_params", actor_params, actor_spec, deter, "deter"))
    return params, a_params


def _needs_graph(*tensors) -> bool:
    return torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors)


# --------------------------------------------------------------------------------------
# Fast ops
# --------------------------------------------------------------------------------------

def rssm_observe(params: list[torch.Tensor], spec: RSSMSpec, embed: torch.Tensor,
                 action: torch.Tensor, keep: torch.Tensor, deter: torch.Tensor,
                 stoch: torch.Tensor, prior_noise: torch.Tensor,
                 post_noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``T`` posterior steps in one native call (see the module docstring). Returns
    ``(deter, post_stoch, post_a, post_b, prior_stoch, prior_a, prior_b)``."""
    params, keep, deter, stoch = _observe_args(params, spec, embed, action, keep, deter,
                                               stoch, prior_noise, post_noise)
    _extension.require_device_kernels(_OBSERVE, embed.device)
    # zeros reset by masking alone; a learned initial state is passed to the op
    init = _initial(params, spec) if spec.initial == "learned" else (None, None)
    save = _needs_graph(*params, embed, action, deter, stoch)
    out = torch.ops.dreamer_fast.rssm_observe(
        _native_params(params, spec), *native_rssm_spec(spec), embed, action, keep, deter,
        stoch, prior_noise, post_noise, *init, save)
    return out[:7]


def rssm_imagine(params: list[torch.Tensor], spec: RSSMSpec, deter: torch.Tensor,
                 stoch: torch.Tensor, actions: torch.Tensor | None,
                 action_noise: torch.Tensor | None, stoch_noise: torch.Tensor, horizon: int,
                 actor_params: list[torch.Tensor] | tuple = (),
                 actor_spec: ActorSpec | None = None,
                 feat_out: bool = False) -> tuple[torch.Tensor, ...]:
    """``H`` prior steps in one native call, actions given or drawn by the actor (see the
    module docstring). Returns ``(deter, stoch, a, b, action, feat)``."""
    params, a_params = _imagine_args(params, spec, deter, stoch, actions, action_noise,
                                     stoch_noise, horizon, actor_params, actor_spec, feat_out)
    _extension.require_device_kernels(_IMAGINE, deter.device)
    # the posterior MLP takes no part in imagination: passed detached, it gets no
    # gradient (as in an eager rollout) while the op still sees the whole list
    obs = spec.param_slices()["obs_out"]
    params = _native_params(params, spec)
    params = params[:obs.start] + [p.detach() for p in params[obs]]
    if actions is not None:
        action_noise = deter.new_empty(0)
    save = _needs_graph(*params, *a_params, deter, stoch, actions)
    # without world-model gradients (detached parameters) the op keeps no inputs that
    # only those weight gradients would read
    save_wm_inputs = save and any(p.requires_grad for p in params)
    out = torch.ops.dreamer_fast.rssm_imagine(
        params, *native_rssm_spec(spec), a_params,
        *native_actor_spec(actor_spec if actions is None else None), deter, stoch, actions,
        action_noise, stoch_noise, horizon, save, feat_out, save_wm_inputs)
    return out[:6]


# --------------------------------------------------------------------------------------
# References: the *_ref ops step by step
# --------------------------------------------------------------------------------------

def _layers(params: list[torch.Tensor], layers: tuple[DenseSpec, ...]) -> list[tuple]:
    """``(weight, bias, norm_weight, norm_bias, spec)`` per layer (absent ones None)."""
    out, i = [], 0
    for d in layers:
        named = dict(zip(d.tensor_names(), params[i:i + d.tensor_count()]))
        i += d.tensor_count()
        out.append((named["weight"], named.get("bias"), named.get("norm_weight"),
                    named.get("norm_bias"), d))
    return out


def _mlp(layers: list[tuple], eps: float, x: torch.Tensor) -> torch.Tensor:
    for w, b, nw, nb, d in layers:
        x = linear_norm_act_ref(x, w, b, nw, nb, d.norm, d.act, eps)
    return x


class _Parts:
    """The flat RSSM parameters split into their parts."""

    def __init__(self, params: list[torch.Tensor], spec: RSSMSpec) -> None:
        sl = spec.param_slices()
        self.img_in = _layers(params[sl["img_in"]], spec.img_in)
        self.cell = params[sl["cell"]]
        self.img_out = _layers(params[sl["img_out"]], spec.img_out)
        self.obs_out = _layers(params[sl["obs_out"]], spec.obs_out)


def _cell_step(parts: _Parts, spec: RSSMSpec, deter: torch.Tensor, stoch: torch.Tensor,
               action: torch.Tensor) -> torch.Tensor:
    """``deter'`` of one step from ``deter [B, D]``, flat ``stoch [B, Z]``, ``action``."""
    c = parts.cell
    if spec.cell == "block_gru":
        L = 3 * spec.dynlayers
        return block_gru_cell_ref(deter, stoch, action, c[:9], c[9:9 + L], c[9 + L],
                                  c[10 + L], spec.blocks, spec.cell_act, spec.cell_eps)
    x = _mlp(parts.img_in, spec.eps, torch.cat([stoch, action], -1))
    if spec.cell == "gru":
        biases = c[2:4] if spec.cell_bias else (None, None)
        return gru_cell_ref(x, deter, c[0], c[1], *biases)
    norm = (c[1], c[2]) if spec.cell_norm else (None, None)
    return ln_gru_cell_ref(x, deter, c[0], *norm, spec.update_bias, spec.cell_eps,
                           spec.cell_state_first)


def _latent(spec: RSSMSpec, stats: torch.Tensor, noise: torch.Tensor,
            check_range: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(flat sample, a, b)`` from the MLP output ``stats [B, stats_size]``."""
    if spec.classes:
        logit = stats.reshape(*stats.shape[:-1], spec.stoch, spec.classes)
        sample, _ = categorical_sample_ref(logit, noise, spec.unimix, check_range=check_range)
        return sample.reshape(stats.shape), stats, None
    return gaussian_sample_ref(stats, noise, spec.min_std, spec.std_act, spec.mean_act,
                               spec.min_std_mode)


def _action(spec: ActorSpec, raw: torch.Tensor, noise: torch.Tensor,
            check_range: bool) -> torch.Tensor:
    """The actor head on the MLP output ``raw [N, out_size]`` (see ActorSpec)."""
    if spec.head == "categorical":
        sample, _ = categorical_sample_ref(raw.unsqueeze(-2), noise, spec.unimix,
                                           check_range=check_range)
        return sample.squeeze(-2)
    raw_mean, raw_std = raw.chunk(2, -1)
    if spec.head == "tanh_normal":
        mean = spec.mean_scale * torch.tanh(raw_mean / spec.mean_scale)
        std = F.softplus(raw_std + spec.std_offset) + spec.min_std
        return torch.tanh(mean + std * noise)
    mean = torch.tanh(raw_mean)
    std = (spec.max_std - spec.min_std) * torch.sigmoid(raw_std + 2.0) + spec.min_std
    x = mean + std * noise
    return x + (x.clamp(-1.0, 1.0) - x).detach()


def _stack(xs: list[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0) if xs[0] is None else torch.stack(xs, 1)


def _observe_ref(params, spec, embed, action, keep, deter, stoch, prior_noise, post_noise,
                 *, check_range: bool = False) -> tuple[torch.Tensor, ...]:
    params, keep, deter, stoch = _observe_args(params, spec, embed, action, keep, deter,
                                               stoch, prior_noise, post_noise)
    parts = _Parts(params, spec)
    learned = spec.initial == "learned"
    if learned:
        deter0, stoch0 = _initial(params, spec)
    outs: list[list] = [[] for _ in range(7)]
    for t in range(embed.shape[1]):
        k = keep[:, t, None]
        deter, stoch = deter * k, stoch * k
        if learned:
            deter, stoch = deter + (1 - k) * deter0, stoch + (1 - k) * stoch0
        deter = _cell_step(parts, spec, deter, stoch, action[:, t] * k)
        prior = _latent(spec, _mlp(parts.img_out, spec.eps, deter), prior_noise[:, t],
                        check_range)
        post = _latent(spec, _mlp(parts.obs_out, spec.eps, torch.cat([deter, embed[:, t]], -1)),
                       post_noise[:, t], check_range)
        stoch = post[0]
        for out, x in zip(outs, (deter, *post, *prior)):
            out.append(x)
    return tuple(_stack(xs, embed) for xs in outs)


def rssm_observe_ref(params: list[torch.Tensor], spec: RSSMSpec, embed: torch.Tensor,
                     action: torch.Tensor, keep: torch.Tensor, deter: torch.Tensor,
                     stoch: torch.Tensor, prior_noise: torch.Tensor,
                     post_noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Reference :func:`rssm_observe`: a Python loop over the ``*_ref`` ops."""
    return _observe_ref(params, spec, embed, action, keep, deter, stoch, prior_noise,
                        post_noise)


def _imagine_ref(params, spec, deter, stoch, actions, action_noise, stoch_noise, horizon,
                 actor_params=(), actor_spec=None, feat_out=False, *,
                 check_range: bool = False) -> tuple[torch.Tensor, ...]:
    params, a_params = _imagine_args(params, spec, deter, stoch, actions, action_noise,
                                     stoch_noise, horizon, actor_params, actor_spec, feat_out)
    parts = _Parts(params, spec)
    actor = _layers(a_params, actor_spec.layers) if actions is None else None
    deters, stochs, outs_a, outs_b, taken = [deter], [stoch], [], [], []
    for t in range(horizon):
        if actions is None:
            raw = _mlp(actor, actor_spec.eps, torch.cat([stoch, deter], -1))
            action = _action(actor_spec, raw, action_noise[:, t], check_range)
        else:
            action = actions[:, t]
        deter = _cell_step(parts, spec, deter, stoch, action)
        stoch, a, b = _latent(spec, _mlp(parts.img_out, spec.eps, deter), stoch_noise[:, t],
                              check_range)
        for out, x in zip((deters, stochs, outs_a, outs_b, taken), (deter, stoch, a, b, action)):
            out.append(x)
    empty = deter.new_empty(0)
    if feat_out:
        feat = torch.cat([torch.stack(stochs, 1), torch.stack(deters, 1)], -1)
        deter_out = stoch_out = empty
    else:
        feat = empty
        deter_out, stoch_out = torch.stack(deters[1:], 1), torch.stack(stochs[1:], 1)
    return (deter_out, stoch_out, torch.stack(outs_a, 1), _stack(outs_b, deter),
            torch.stack(taken, 1), feat)


def rssm_imagine_ref(params: list[torch.Tensor], spec: RSSMSpec, deter: torch.Tensor,
                     stoch: torch.Tensor, actions: torch.Tensor | None,
                     action_noise: torch.Tensor | None, stoch_noise: torch.Tensor,
                     horizon: int, actor_params: list[torch.Tensor] | tuple = (),
                     actor_spec: ActorSpec | None = None,
                     feat_out: bool = False) -> tuple[torch.Tensor, ...]:
    """Reference :func:`rssm_imagine`: a Python loop over the ``*_ref`` ops."""
    return _imagine_ref(params, spec, deter, stoch, actions, action_noise, stoch_noise,
                        horizon, actor_params, actor_spec, feat_out)


# --------------------------------------------------------------------------------------
# torch.library registration: autograd (the fake kernels are the C++ Meta kernels)
# --------------------------------------------------------------------------------------

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


def _arg_names(op) -> list[str]:
    return [a.name for a in op.default._schema.arguments]


def _register() -> None:
    # The spec arguments are whatever lies between the parameter list and the next
    # named input (see _native_spec): ctx keeps them as one tuple.
    observe_names = _arg_names(torch.ops.dreamer_fast.rssm_observe)
    o_params, o_embed = observe_names.index("params"), observe_names.index("embed")
    o_init = observe_names.index("init_deter")

    def observe_setup(ctx, inputs, output):
        ctx.list_lens = _list_lens(inputs)
        ctx.init = inputs[o_init] is not None
        params = inputs[o_params]
        ctx.native_spec = tuple(inputs[o_params + 1:o_embed])
        saved = output[7]
        ctx.mark_non_differentiable(*saved)
        # Unused outputs get None, not zero tensors: autograd would otherwise allocate
        # and fill a zero gradient for each of the hundreds of saved activations.
        ctx.set_materialize_grads(False)
        ctx.n_saved = len(saved)
        ctx.save_for_backward(*saved, *params)

    def observe_backward(ctx, gd, gps, gpa, gpb, gqs, gqa, gqb, _g_saved):
        t = ctx.saved_tensors
        if ctx.n_saved == 0:
            raise RuntimeError("rssm_observe: backward through a call made without "
                               "recording (save=False)")
        saved, params = list(t[:ctx.n_saved]), list(t[ctx.n_saved:])
        d_params, d_embed, d_action, d_deter, d_stoch, d_init_deter, d_init_stoch = (
            torch.ops.dreamer_fast.rssm_observe_backward(gd, gps, gpa, gpb, gqs, gqa, gqb, saved,
                                                        params, *ctx.native_spec, ctx.init))
        grads = {"params": d_params, "embed": d_embed, "action": d_action, "deter": d_deter,
                 "stoch": d_stoch}
        if ctx.init:
            grads.update(init_deter=d_init_deter, init_stoch=d_init_stoch)
        return _structured(ctx, [grads.get(n) for n in observe_names])

    torch.library.register_autograd("dreamer_fast::rssm_observe", observe_backward,
                                    setup_context=observe_setup)

    imagine_names = _arg_names(torch.ops.dreamer_fast.rssm_imagine)
    i_params, i_actor, i_deter = (imagine_names.index(n)
                                  for n in ("params", "actor_params", "deter"))

    def imagine_setup(ctx, inputs, output):
        ctx.list_lens = _list_lens(inputs)
        args = dict(zip(imagine_names, inputs))
        params, a_params = args["params"], args["actor_params"]
        ctx.native_spec = tuple(inputs[i_params + 1:i_actor])
        ctx.native_actor_spec = tuple(inputs[i_actor + 1:i_deter])
        saved = output[6]
        ctx.mark_non_differentiable(*saved)
        ctx.set_materialize_grads(False)
        ctx.use_actor = args["actions"] is None
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
                gd, gs, ga, gb, g_action, g_feat, saved, params, *ctx.native_spec, a_params,
                *ctx.native_actor_spec, ctx.use_actor, ctx.need_params, ctx.need_actor))
        grads = {"params": d_params if ctx.need_params else None,
                 "actor_params": d_actor if ctx.need_actor else None,
                 "deter": d_deter, "stoch": d_stoch,
                 "actions": None if ctx.use_actor else d_actions}
        return _structured(ctx, [grads.get(n) for n in imagine_names])

    torch.library.register_autograd("dreamer_fast::rssm_imagine", imagine_backward,
                                    setup_context=imagine_setup)


if _extension.has_extension():
    _register()
