"""sheeprl's DreamerV3 RSSM and λ-values on dreamer_fast's fused ops, its own module and
parameters.

Use::

    from dreamer_fast.integrations import sheeprl as df_sheeprl
    df_sheeprl.accelerate(world_model.rssm)                 # dynamic / imagination, in place
    df_sheeprl.install(sheeprl.algos.dreamer_v3.dreamer_v3) # its compute_lambda_values

``accelerate(rssm)`` replaces ``dynamic(posterior, recurrent_state, action,
embedded_obs, is_first)`` and ``imagination(prior, recurrent_state, actions)`` on that
instance with one fused step each (same signatures, same returns, time-major ``[1, B,
...]`` as sheeprl calls them), on the module's own parameters read at every call (its
optimiser and checkpoints keep working; ``restore(rssm)`` undoes it). sheeprl's train
loop calls ``dynamic`` once per time step; for the full speed replace that loop (the
``for i in range(0, sequence_length)`` over ``rssm.dynamic`` in ``dreamer_v3.train``) by
one call of :func:`observe`, which returns the same tensors stacked over time in one
native call (a single ``dynamic`` of fewer than 64 rows runs our reference ops under
``backend='auto'``: there the fused op's per-call weight packing costs more than the
step)::

    recurrent_states, posteriors, priors, posteriors_logits, priors_logits = \\
        df_sheeprl.observe(world_model.rssm, embedded_obs, batch_actions, data["is_first"])

The mapping (sheeprl's layout)::

    recurrent_model.mlp._model = [Linear(Z + A -> U), LayerNorm, act]  -> spec.img_in[0]
    recurrent_model.rnn        = LayerNormGRUCell: linear [3D, D + U] over cat(h, x)
                                 (no bias), layer_norm, update bias -1  -> cell 'ln_gru'
    transition_model._model    = [Linear(D -> U), LayerNorm, act, Linear(U -> S·K)] -> img_out
    representation_model._model= [Linear(D + E -> U), LayerNorm, act, Linear] -> obs_out
    initial_recurrent_state [D] (parameter, or a zero buffer)

Exactly reproduced (values and gradients to float64 round-off): the reset at
``is_first`` to ``tanh(initial_recurrent_state)`` and the one-hot mode of the prior
(which sheeprl gives no gradient), the action zeroed at ``is_first``, the unimix
categorical latents and the returned logits (the mixed log-probabilities
``log(clamp((1 − u)·softmax(l) + u/K))``), the straight-through sample ``onehot + p −
sg(p)``; the ``cat(h, x)`` column order of sheeprl's GRU weight (the spec's
``cell_state_first``). ``observe`` is one native call whatever the resets.
The integration draws the noise (``torch.rand``: the inverse-CDF categorical sample);
sheeprl's ``torch.distributions`` draw it inside, so samples are equal in distribution.

Refused (:class:`~dreamer_fast.integrations.UnsupportedPeerConfig`): ``DecoupledRSSM``
(its ``dynamic`` has no embedding; not mapped yet), a GRU linear with a bias, more than
one hidden layer in a model.

λ-values: :func:`compute_lambda_values` has sheeprl's signature ``(rewards, values,
continues, lmbda=0.95)`` and return (``[T, N, 1]``), as one fused reverse scan
(``inputs = r + c·v·(1 − λ)``, ``decay = c·λ``, initial ``values[-1]``).
:func:`install` sets it as the ``compute_lambda_values`` of a module that imported it
(sheeprl's ``dreamer_v3.py`` does ``from ...utils import compute_lambda_values``).
"""

from __future__ import annotations

import types

import torch
from torch import nn

from dreamer_fast.integrations._common import (
    act_name, fused_for, layer_norm_eps, need_spec_field, patch_methods, refuse,
    unpatch_methods)
from dreamer_fast.ops._dispatch import check_backend
from dreamer_fast.ops.rssm import _imagine_ref, _observe_ref, rssm_imagine, rssm_observe
from dreamer_fast.ops.rssm_spec import DenseSpec, RSSMSpec
from dreamer_fast.ops.scan import reverse_scan

__all__ = ["accelerate", "restore", "spec_of", "params_of", "observe",
           "compute_lambda_values", "install", "uninstall"]

PEER = "sheeprl RSSM"


def _unwrap(m: nn.Module) -> nn.Module:
    """The module inside Lightning Fabric / DDP wrappers (``_forward_module`` /
    ``module``)."""
    for _ in range(4):
        inner = m.__dict__.get("_modules", {}).get("_forward_module") or (
            m._modules.get("module") if type(m).__name__ in (
                "DistributedDataParallel", "DataParallel") else None)
        if inner is None:
            return m
        m = inner
    return m


def _mlp(where: str, mlp: nn.Module, with_out: bool):
    """sheeprl ``MLP._model`` = ``[Linear, norm, act] (+ Linear out)`` -> (DenseSpecs,
    tensors, eps list)."""
    seq = list(_unwrap(mlp)._model) if hasattr(_unwrap(mlp), "_model") else None
    if seq is None:
        refuse(PEER, where, type(mlp).__name__, "expected sheeprl's MLP (with `_model`)")
    n = 4 if with_out else 3
    linears = [seq[0]] + ([seq[3]] if with_out and len(seq) == n else [])
    if len(seq) != n or any(type(x) is not nn.Linear for x in linears):
        refuse(PEER, f"{where} layers", [type(x).__name__ for x in seq],
               "expected [Linear, norm, act" + (", Linear]" if with_out else "]")
               + " (one hidden layer, no dropout)")
    lin, norm, act = seq[0], seq[1], seq[2]
    tensors = [lin.weight] + ([lin.bias] if lin.bias is not None else [])
    eps = []
    if type(norm) is nn.Identity:
        kind = "none"
    else:
        eps.append(layer_norm_eps(PEER, where, norm))
        kind = "layer"
        tensors += [norm.weight, norm.bias]
    specs = [DenseSpec(has_bias=lin.bias is not None, norm=kind,
                       act=act_name(PEER, where, act))]
    if with_out:
        out = seq[3]
        if out.bias is None:
            refuse(PEER, f"{where} output bias", None, "sheeprl's output layer has a bias")
        specs.append(DenseSpec(has_bias=True))
        tensors += [out.weight, out.bias]
    return specs, tensors, eps


def _parts(rssm: nn.Module):
    if type(rssm).__name__ == "DecoupledRSSM":
        refuse(PEER, "decoupled_rssm", True, "DecoupledRSSM is not mapped yet")
    for name in ("recurrent_model", "representation_model", "transition_model",
                 "initial_recurrent_state", "discrete", "unimix"):
        if not hasattr(rssm, name):
            refuse(PEER, "module", type(rssm).__name__, f"it has no `{name}` (not sheeprl's "
                   "dreamer_v3 RSSM layout)")
    rec = _unwrap(rssm.recurrent_model)
    return rec, rec.mlp, rec.rnn, rssm.transition_model, rssm.representation_model


def spec_of(rssm: nn.Module) -> RSSMSpec:
    """The :class:`RSSMSpec` of a sheeprl dreamer_v3 ``RSSM`` (refusing what the ops cannot
    reproduce)."""
    rec, mlp, rnn, trans, rep = _parts(rssm)
    img_in, _, eps_in = _mlp("recurrent_model.mlp", mlp, False)
    img_out, _, eps_out = _mlp("transition_model", trans, True)
    obs_out, _, eps_obs = _mlp("representation_model", rep, True)
    eps = eps_in + eps_out + eps_obs
    if len(set(eps)) > 1:
        refuse(PEER, "LayerNorm eps", eps, "the spec has one eps for the dense layers")
    if rnn.linear.bias is not None:
        refuse(PEER, "recurrent_model.rnn bias", True, "the ops' LayerNorm GRU has no bias")
    kw = {}
    if type(rnn.layer_norm) is nn.Identity:
        need_spec_field(PEER, "recurrent_model layer_norm", "Identity", "cell_norm")
        kw["cell_norm"] = False
        cell_eps = 1e-3
    else:
        cell_eps = layer_norm_eps(PEER, "recurrent_model.rnn", rnn.layer_norm)
    need_spec_field(PEER, "recurrent_model.rnn column order", "cat(h, x)", "cell_state_first")
    kw["cell_state_first"] = True
    # sheeprl resets to tanh(initial_recurrent_state) (a parameter, or a zero buffer) and
    # the one-hot mode of its prior there, without gradient through the mode
    need_spec_field(PEER, "initial_recurrent_state", "tanh(W) + prior mode", "initial")
    kw.update(initial="learned", initial_stoch_grad=False)
    K = int(rssm.discrete)
    D, U = int(rnn.hidden_size), int(rnn.input_size)
    Z = int(_unwrap(trans)._model[3].out_features)
    if Z % K:
        refuse(PEER, "stochastic size", Z, f"not a multiple of discrete={K}")
    A = int(_unwrap(mlp)._model[0].in_features) - Z
    E = int(_unwrap(rep)._model[0].in_features) - D
    return RSSMSpec(cell="ln_gru", deter=D, stoch=Z // K, classes=K, hidden=U, action_size=A,
                    embed_size=E, img_in=tuple(img_in), img_out=tuple(img_out),
                    obs_out=tuple(obs_out), cell_bias=False,
                    eps=eps[0] if eps else 1e-3, cell_eps=cell_eps, update_bias=-1.0,
                    unimix=float(rssm.unimix), **kw)


def params_of(rssm: nn.Module, spec: RSSMSpec | None = None) -> list[torch.Tensor]:
    """The flat parameter list of :func:`spec_of`: the module's own tensors."""
    spec = spec or spec_of(rssm)
    rec, mlp, rnn, trans, rep = _parts(rssm)
    cell = [rnn.linear.weight] + ([] if type(rnn.layer_norm) is nn.Identity else
                  [rnn.layer_norm.weight, rnn.layer_norm.bias])
    return [*_mlp("", mlp, False)[1], *cell, *_mlp("", trans, True)[1],
            *_mlp("", rep, True)[1], rssm.initial_recurrent_state]


# --------------------------------------------------------------------------------------

def _ctx(self):
    return self.__dict__["_dreamer_fast_ctx"]


def _mixed_logits(spec: RSSMSpec, raw: torch.Tensor) -> torch.Tensor:
    """sheeprl's ``_uniform_mix``: ``log(clamp_probs((1 − u)·softmax(l) + u·(1/K)))``
    over ``[..., S·K]`` (flat, as it returns them)."""
    K = spec.classes
    logits = raw.reshape(*raw.shape[:-1], -1, K)
    if spec.unimix > 0.0:
        probs = logits.softmax(dim=-1)
        uniform = torch.ones_like(probs) / K
        probs = (1 - spec.unimix) * probs + spec.unimix * uniform
        eps = torch.finfo(probs.dtype).eps
        logits = torch.log(probs.clamp(min=eps, max=1 - eps))
    return logits.reshape(raw.shape)


def _run_observe(rssm, embed, action, keep, deter, stoch, noise):
    """``rssm_observe`` over batch-major ``[B, T, ..]``."""
    c = _ctx(rssm)
    B, T = embed.shape[:2]
    fn = rssm_observe if fused_for(c.backend, embed, B, T) else _observe_ref
    return fn(params_of(rssm, c.spec), c.spec, embed, action, keep, deter, stoch,
              noise[0], noise[1])


def _draw(spec, B, T, like):
    return tuple(torch.rand(B, T, spec.stoch, dtype=like.dtype, device=like.device)
                 for _ in range(2))


def observe(rssm: nn.Module, embedded_obs: torch.Tensor, actions: torch.Tensor,
            is_first: torch.Tensor, posterior: torch.Tensor | None = None,
            recurrent_state: torch.Tensor | None = None, *, noise=None):
    """sheeprl's train-loop over ``rssm.dynamic`` in one call (time-major, as sheeprl):
    ``embedded_obs [T, B, E]``, ``actions [T, B, A]`` (the action before each step),
    ``is_first [T, B, 1]``, start ``posterior [1, B, S, K]`` and ``recurrent_state [1, B,
    D]`` (zeros when None, as sheeprl starts). Returns ``(recurrent_states [T, B, D],
    posteriors [T, B, S, K], priors [T, B, S, K], posteriors_logits [T, B, S·K],
    priors_logits [T, B, S·K])``. ``noise``: optional ``(prior, post)`` uniforms ``[B, T,
    S]``."""
    spec = _ctx(rssm).spec
    T, B = actions.shape[:2]
    like = embedded_obs
    if posterior is None:
        posterior = like.new_zeros(1, B, spec.stoch, spec.classes)
    if recurrent_state is None:
        recurrent_state = like.new_zeros(1, B, spec.deter)
    if noise is None:
        noise = _draw(spec, B, T, like)
    # sheeprl's reset (1 − f)·x + f·x0 is the op's keep·x + (1 − keep)·x0, keep = 1 − f
    keep = 1.0 - is_first.reshape(T, B).to(like.dtype).transpose(0, 1)
    out = _run_observe(rssm, embedded_obs.transpose(0, 1), actions.transpose(0, 1), keep,
                       recurrent_state[0], posterior.reshape(B, -1), noise)
    deter, post, post_raw, _, prior, prior_raw, _ = out
    tm = lambda x: x.transpose(0, 1)  # noqa: E731
    grid = (T, B, spec.stoch, spec.classes)
    return (tm(deter), tm(post).reshape(grid), tm(prior).reshape(grid),
            tm(_mixed_logits(spec, post_raw)), tm(_mixed_logits(spec, prior_raw)))


def dynamic(self, posterior, recurrent_state, action, embedded_obs, is_first, *, noise=None):
    """sheeprl ``RSSM.dynamic`` as one fused step: ``posterior [1, B, S, K]``,
    ``recurrent_state [1, B, D]``, ``action [1, B, A]``, ``embedded_obs [1, B, E]``,
    ``is_first [1, B, 1]`` -> ``(recurrent_state, posterior, prior, posterior_logits,
    prior_logits)`` (``[1, B, ...]``)."""
    return observe(self, embedded_obs, action, is_first, posterior, recurrent_state,
                   noise=noise)


def imagination(self, prior, recurrent_state, actions, *, noise=None):
    """sheeprl ``RSSM.imagination(prior [1, N, S·K or S, K], recurrent_state [1, N, D],
    actions [1, N, A])`` -> ``(imagined_prior [1, N, S, K], recurrent_state [1, N, D])``
    as one fused step. ``noise``: optional uniforms ``[N, 1, S]``."""
    c = _ctx(self)
    spec = c.spec
    N = recurrent_state.shape[1]
    if noise is None:
        noise = torch.rand(N, 1, spec.stoch, dtype=actions.dtype, device=actions.device)
    fn = rssm_imagine if fused_for(c.backend, actions, N, 1) else _imagine_ref
    deter, stoch, _, _, _, _ = fn(params_of(self, spec), spec, recurrent_state[0],
                                  prior.reshape(N, -1), actions.reshape(N, 1, -1), None,
                                  noise, 1)
    return (stoch.transpose(0, 1).reshape(1, N, spec.stoch, spec.classes),
            deter.transpose(0, 1))


def accelerate(rssm: nn.Module, backend: str = "auto") -> nn.Module:
    """Runs this sheeprl dreamer_v3 ``RSSM`` instance's ``dynamic`` and ``imagination`` on
    the fused ops, its own parameters in place; returns it (see the module docstring).
    ``backend`` as in :func:`dreamer_fast.integrations.nm512.accelerate` (``'auto'`` runs
    single steps of fewer than 64 rows, e.g. ``dynamic`` at B=16, on the reference ops,
    where they are faster)."""
    spec = spec_of(rssm)
    check_backend(backend)
    patch_methods(rssm, {"dynamic": dynamic, "imagination": imagination})
    object.__setattr__(rssm, "_dreamer_fast_ctx", types.SimpleNamespace(spec=spec,
                                                                         backend=backend))
    return rssm


def restore(rssm: nn.Module) -> nn.Module:
    unpatch_methods(rssm)
    rssm.__dict__.pop("_dreamer_fast_ctx", None)
    return rssm


# --------------------------------------------------------------------------------------

def compute_lambda_values(rewards, values, continues, lmbda=0.95):
    """sheeprl ``compute_lambda_values`` (``[T, N, 1]`` each; ``continues`` already times
    γ) as one fused reverse scan: ``R[T] = values[-1]``, ``R[t] = rewards[t] +
    continues[t]·values[t]·(1 − λ) + continues[t]·λ·R[t+1]``; returns ``R[0..T-1]``."""
    interm = rewards + continues * values * (1 - lmbda)
    return reverse_scan(interm, continues * lmbda, values[-1], 0)


def install(module: types.ModuleType) -> None:
    """Sets :func:`compute_lambda_values` as ``module.compute_lambda_values`` (e.g.
    ``sheeprl.algos.dreamer_v3.dreamer_v3``); :func:`uninstall` puts it back."""
    saved = module.__dict__.setdefault("_dreamer_fast_saved", {})
    saved.setdefault("compute_lambda_values", module.compute_lambda_values)
    module.compute_lambda_values = compute_lambda_values


def uninstall(module: types.ModuleType) -> None:
    for name, val in module.__dict__.pop("_dreamer_fast_saved", {}).items():
        setattr(module, name, val)
