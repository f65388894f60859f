"""NM512/dreamerv3-torch on dreamer_fast's fused ops, its own module and parameters.

Use::

    from dreamer_fast.integrations import nm512
    nm512.accelerate(world_model.dynamics)          # its networks.RSSM, in place
    nm512.install(tools, models)                    # optional: the fast λ-return call sites

``accelerate(rssm)`` replaces ``observe``, ``obs_step``, ``img_step`` and
``imagine_with_action`` **on that instance** with versions of the same signatures and
return types that run :func:`~dreamer_fast.ops.rssm_observe` /
:func:`~dreamer_fast.ops.rssm_imagine` (one native call forward, one backward, for a
whole sequence) on the module's own ``nn.Parameter`` objects, read at every call (no
copy: the optimiser the peer built from ``self.parameters()`` keeps training them, its
``state_dict`` and checkpoints are unchanged). ``restore(rssm)`` undoes it. Every other
method (``initial``, ``get_feat``, ``get_dist``, ``kl_loss``, ...) stays the peer's own.

The mapping (the peer's layout, ``A`` its ``act``, ``LN`` its LayerNorm, eps 1e-3)::

    _img_in_layers  = [Linear(Z + A -> U, no bias), LN, A]   -> spec.img_in[0]
    _cell.layers    = [GRU_linear (3D, U + D), GRU_norm LN]  -> cell 'ln_gru' (cat(x, h),
                      update_bias = _cell._update_bias, act tanh)
    _img_out_layers + _imgs_stat_layer                       -> spec.img_out (2 layers)
    _obs_out_layers + _obs_stat_layer                        -> spec.obs_out (2 layers)
    discrete K -> categorical latents (unimix_ratio), False -> Gaussian (min_std)
    initial 'learned' (W [1, D]) / 'zeros'

What is reproduced exactly (values and gradients to float64 round-off, tested, and
checked against the real checkout): the LayerNorm GRU and ``norm: False`` (no LayerNorm
anywhere), the categorical latents with unimix and their straight-through sample
``onehot + probs − sg(probs)``, the Gaussian ``mean + std·ε`` with ``std = std_act(raw) +
min_std`` for every ``std_act`` (softplus, sigmoid2, sigmoid, abs) and ``mean_act`` (none,
tanh5), ``observe``'s resets (``state=None``, all-first and partial ``is_first``, the
action zeroed where ``is_first``), the learned initial state ``tanh(W)`` with the prior's
mode as its stoch (at t = 0 and at every reset, with the mode's straight-through gradient
of the normalised unimix log-probs), and ``sample=False`` (the mode instead of a sample).
``observe`` is one native call whatever the resets. The peer draws its noise inside
``torch.distributions``; here the integration draws it (``torch.rand`` for the
categorical inverse-CDF, ``torch.randn`` for the Gaussian), so samples are equal in
distribution, not in value, to an eager run with the same seed; the methods take an
optional keyword ``noise=`` for reproducible runs.

The peer's in-place ``prev_action *= 1 − is_first`` (which also zeroes the caller's
action tensor where ``is_first``) is not repeated: our outputs are the same, the
caller's tensor is left alone.

Refused with :class:`~dreamer_fast.integrations.UnsupportedPeerConfig` (what the ops
cannot express): ``rec_depth != 1`` (the peer's loop re-reads the old deter, it says
"not correctly implemented"), activations other than SiLU/ELU/Tanh/Sigmoid/GELU, a GRU
activation other than tanh, different LayerNorm eps between dense layers.

NM512/r2dreamer is **not** this layout: its RSSM is DreamerV3's block GRU
(``_deter_net`` with ``_dyn_in0..2``, ``BlockLinear`` ``_dyn_hid`` / ``_dyn_gru``, RMSNorm
MLPs), its methods take ``(stoch, deter, ...)`` tuples, and it samples with
``F.gumbel_softmax(hard=True)``, whose gradient (through the softmax of the
Gumbel-perturbed logits) none of our samplers has. :func:`accelerate` refuses it.

λ-return: :func:`lambda_return` has ``tools.lambda_return``'s signature and returns
what it returns (a tuple of ``N`` tensors ``[T, 1]`` for ``reward [T, N, 1]``, which
``models.py`` ``torch.stack``\\ s along dim 1). Building that tuple (``N`` autograd views)
costs more than the scan; :func:`install` also gives ``models`` a ``torch`` whose
``stack`` returns the scan's ``[T, N, 1]`` output for it at no cost (the peer's code is
not edited: ``models.torch`` becomes a proxy of ``torch``).
"""

from __future__ import annotations

import types
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dreamer_fast.integrations._common import (
    act_name, fused_for, layer_norm_eps, need_spec_field, patch_methods, refuse, unimix_log_probs,
    unpatch_methods)
from dreamer_fast.ops._dispatch import check_backend
from dreamer_fast.ops.rssm import (_imagine_ref, _observe_ref, rssm_imagine, rssm_observe)
from dreamer_fast.ops.rssm_spec import DenseSpec, RSSMSpec
from dreamer_fast.ops.scan import lambda_return as _lambda_return_op

__all__ = ["accelerate", "restore", "spec_of", "params_of", "lambda_return", "install",
           "uninstall", "LambdaReturns"]

PEER = "dreamerv3-torch RSSM"


# --------------------------------------------------------------------------------------
# The mapping: spec and flat parameters (the peer's own tensors)
# --------------------------------------------------------------------------------------

def _dense_block(where: str, seq: nn.Module) -> tuple[nn.Linear, nn.LayerNorm | None, str]:
    """``[Linear(no bias), LayerNorm?, act]`` -> (linear, norm or None, act name)."""
    layers = list(seq)
    if not layers or type(layers[0]) is not nn.Linear or layers[0].bias is not None:
        refuse(PEER, where, seq, "expected Sequential(Linear(bias=False), [LayerNorm], act)")
    norm = layers[1] if len(layers) == 3 else None
    if len(layers) not in (2, 3):
        refuse(PEER, where, seq, "expected Sequential(Linear(bias=False), [LayerNorm], act)")
    return layers[0], norm, act_name(PEER, where, layers[-1])


def _is_r2dreamer(rssm: nn.Module) -> bool:
    return hasattr(rssm, "_deter_net") and hasattr(rssm, "_img_net")


def spec_of(rssm: nn.Module) -> RSSMSpec:
    """The :class:`RSSMSpec` of a dreamerv3-torch ``networks.RSSM`` (refusing what the
    ops cannot reproduce, see the module docstring)."""
    if _is_r2dreamer(rssm):
        refuse("r2dreamer RSSM", "layout", type(rssm).__name__,
               "r2dreamer's RSSM is a block GRU sampled with F.gumbel_softmax(hard=True); "
               "its straight-through Gumbel-softmax gradient has no counterpart in "
               "dreamer_fast's samplers (dreamerv3-torch's layout only)")
    for name in ("_img_in_layers", "_cell", "_img_out_layers", "_obs_out_layers",
                 "_imgs_stat_layer", "_obs_stat_layer"):
        if not hasattr(rssm, name):
            refuse(PEER, "module", type(rssm).__name__, f"it has no `{name}` (not "
                   "dreamerv3-torch's networks.RSSM layout)")
    if rssm._rec_depth != 1:
        refuse(PEER, "rec_depth", rssm._rec_depth,
               "the peer's loop re-reads the previous deter on every repetition")
    if rssm._initial not in ("learned", "zeros"):
        refuse(PEER, "initial", rssm._initial, "only 'learned' and 'zeros' exist")
    img_in, in_norm, act = _dense_block("_img_in_layers", rssm._img_in_layers)
    img_out, out_norm, out_act = _dense_block("_img_out_layers", rssm._img_out_layers)
    obs_out, obs_norm, obs_act = _dense_block("_obs_out_layers", rssm._obs_out_layers)
    norms = [in_norm, out_norm, obs_norm]
    if any((n is None) != (norms[0] is None) for n in norms) or len({act, out_act, obs_act}) > 1:
        refuse(PEER, "layers", "mixed", "every dense layer has the same norm and act")
    cell = rssm._cell
    if cell._act is not torch.tanh:
        refuse(PEER, "GRUCell act", cell._act, "the ops' LayerNorm GRU uses tanh")
    cell_layers = dict(cell.layers.named_children())
    lin, cnorm = cell_layers.get("GRU_linear"), cell_layers.get("GRU_norm")
    if lin is None or lin.bias is not None or set(cell_layers) - {"GRU_linear", "GRU_norm"}:
        refuse(PEER, "_cell.layers", cell.layers, "expected GRU_linear (no bias) [+ GRU_norm]")
    norm = "layer" if norms[0] is not None else "none"
    eps = [layer_norm_eps(PEER, w, n) for w, n in
           zip(("_img_in_layers", "_img_out_layers", "_obs_out_layers"), norms) if n is not None]
    if len(set(eps)) > 1:
        refuse(PEER, "LayerNorm eps", eps, "the spec has one eps for the dense layers")
    kw = {}
    if cnorm is None:
        need_spec_field(PEER, "norm", False, "cell_norm")
        kw["cell_norm"] = False
    cell_eps = layer_norm_eps(PEER, "_cell GRU_norm", cnorm) if cnorm is not None else 1e-3
    classes = int(rssm._discrete) if rssm._discrete else None
    if classes is None:
        if rssm._std_act != "softplus":
            need_spec_field(PEER, "std_act", rssm._std_act, "std_act")
            kw["std_act"] = rssm._std_act
        if rssm._mean_act != "none":
            need_spec_field(PEER, "mean_act", rssm._mean_act, "mean_act")
            kw["mean_act"] = rssm._mean_act
    if rssm._initial == "learned":
        need_spec_field(PEER, "initial", "learned", "initial")
        kw.update(initial="learned", initial_stoch_grad=True)
    hidden_layer = DenseSpec(has_bias=False, norm=norm, act=act)
    stat_layer = DenseSpec(has_bias=True)
    return RSSMSpec(
        cell="ln_gru", deter=int(rssm._deter), stoch=int(rssm._stoch), classes=classes,
        hidden=int(rssm._hidden), action_size=int(rssm._num_actions),
        embed_size=int(rssm._embed), img_in=(hidden_layer,),
        img_out=(hidden_layer, stat_layer), obs_out=(hidden_layer, stat_layer),
        cell_bias=False, eps=eps[0] if eps else 1e-3, cell_eps=cell_eps,
        update_bias=float(cell._update_bias), unimix=float(rssm._unimix_ratio),
        min_std=float(rssm._min_std), **kw)


def params_of(rssm: nn.Module, spec: RSSMSpec | None = None) -> list[torch.Tensor]:
    """The module's own parameters in the flat order of :func:`spec_of` (read at every
    call, so optimiser steps and ``load_state_dict`` are seen)."""
    spec = spec or spec_of(rssm)

    def dense(seq, stat):
        lin = seq[0]
        out = [lin.weight]
        if spec.img_in[0].norm == "layer":
            out += [seq[1].weight, seq[1].bias]
        return out + ([stat.weight, stat.bias] if stat is not None else [])

    cell = dict(rssm._cell.layers.named_children())
    cell_t = [cell["GRU_linear"].weight]
    if "GRU_norm" in cell:
        cell_t += [cell["GRU_norm"].weight, cell["GRU_norm"].bias]
    # W [1, D] enters as the view W.reshape(D): its gradient lands in W
    initial = [rssm.W.reshape(-1)] if getattr(spec, "initial", "zeros") == "learned" else []
    return [*dense(rssm._img_in_layers, None), *cell_t,
            *dense(rssm._img_out_layers, rssm._imgs_stat_layer),
            *dense(rssm._obs_out_layers, rssm._obs_stat_layer), *initial]


# --------------------------------------------------------------------------------------
# The accelerated methods
# --------------------------------------------------------------------------------------

class _Ctx:
    """What an accelerated instance keeps: its spec and backend."""

    def __init__(self, spec: RSSMSpec, backend: str) -> None:
        self.spec, self.backend = spec, backend


def _ctx(self) -> _Ctx:
    return self.__dict__["_dreamer_fast_ctx"]


def _draw(spec: RSSMSpec, shape, like: torch.Tensor) -> torch.Tensor:
    """Noise for ``shape + (S,)``: uniform [0, 1) (categorical inverse CDF) or standard
    normal (Gaussian), what the peer's ``torch.distributions`` draw inside."""
    shape = (*shape, spec.stoch)
    if spec.classes:
        return torch.rand(shape, dtype=like.dtype, device=like.device)
    return torch.randn(shape, dtype=like.dtype, device=like.device)


def _flat_stoch(spec: RSSMSpec, stoch: torch.Tensor) -> torch.Tensor:
    return stoch.reshape(*stoch.shape[:-2], spec.flat_stoch) if spec.classes else stoch


def _state(spec: RSSMSpec, deter, stoch, a, b) -> dict:
    """The peer's dict: ``{"stoch", "deter", "logit"}`` or ``{"stoch", "deter", "mean",
    "std"}`` (its key order)."""
    if spec.classes:
        shape = (*stoch.shape[:-1], spec.stoch, spec.classes)
        return {"stoch": stoch.reshape(shape), "deter": deter, "logit": a.reshape(shape)}
    return {"stoch": stoch, "deter": deter, "mean": a, "std": b}


def _mode(spec: RSSMSpec, state: dict) -> torch.Tensor:
    """The peer's ``get_dist(state).mode()``: the one-hot argmax with the straight-through
    gradient of its normalised (unimix) log-probs, or the Gaussian mean."""
    if not spec.classes:
        return state["mean"]
    logp = unimix_log_probs(state["logit"], spec.unimix)
    hot = F.one_hot(torch.argmax(logp, -1), spec.classes)
    return hot.detach() + logp - logp.detach()


def _run_observe(self, embed, action, keep, deter, stoch, prior_noise, post_noise):
    c = _ctx(self)
    params = params_of(self, c.spec)
    fused = fused_for(c.backend, embed, *embed.shape[:2])
    fn = rssm_observe if fused else _observe_ref
    return fn(params, c.spec, embed, action, keep, deter, stoch, prior_noise, post_noise)


def observe(self, embed, action, is_first, state=None, *, noise=None):
    """dreamerv3-torch ``RSSM.observe(embed, action, is_first, state=None)`` as one fused
    call: ``embed [B, T, E]``, ``action [B, T, A]``, ``is_first [B, T]`` -> ``(post,
    prior)`` dicts of ``[B, T, ...]``. ``noise``: optional ``(prior, post)`` noise
    ``[B, T, S]`` each (uniform or standard normal); drawn when None.

    The op's reset ``keep·x + (1 − keep)·x0`` with ``keep = 1 − is_first`` is the peer's
    ``x·(1 − f) + x0·f`` (and, where every ``f`` is 1, its ``initial()`` itself);
    ``state=None`` starts every sequence from the initial state with a zero action, as
    the peer does whatever ``is_first[:, 0]`` says."""
    c = _ctx(self)
    spec = c.spec
    B, T = action.shape[:2]
    first = is_first.to(embed.dtype)
    if first.dim() == 3 and first.shape[-1] == 1:
        first = first[..., 0]
    if noise is None:
        noise = (_draw(spec, (B, T), embed), _draw(spec, (B, T), embed))
    keep = 1.0 - first
    if state is None:
        deter = stoch = None
    else:
        deter, stoch = state["deter"], _flat_stoch(spec, state["stoch"])
    out = _run_observe(self, embed, action, keep, deter, stoch, noise[0], noise[1])
    return _outputs(spec, out)


def _outputs(spec: RSSMSpec, out) -> tuple[dict, dict]:
    deter, ps, pa, pb, qs, qa, qb = out
    return _state(spec, deter, ps, pa, pb), _state(spec, deter, qs, qa, qb)


def obs_step(self, prev_state, prev_action, embed, is_first, sample=True, *, noise=None):
    """dreamerv3-torch ``RSSM.obs_step(prev_state, prev_action, embed, is_first,
    sample=True)`` (``prev_state=None`` allowed) as one fused step; ``sample=False``
    gives the posterior's mode (the prior is sampled, as in the peer). ``noise``:
    optional ``(prior, post)`` ``[B, S]`` each."""
    if noise is not None:
        noise = (noise[0][:, None], noise[1][:, None])
    first = is_first.reshape(is_first.shape[0])
    if prev_action is None:
        # the peer's policy starts with obs_step(None, None, ...): the action is then
        # replaced by zeros, as at every all-first step
        if prev_state is not None and not bool((first == 1).all()):
            raise ValueError("obs_step: `prev_action` is None but `prev_state` is given and "
                             "not every `is_first` is set")
        prev_action = embed.new_zeros(embed.shape[0], _ctx(self).spec.action_size)
    post, prior = observe(self, embed[:, None], prev_action[:, None], first[:, None],
                          prev_state, noise=noise)
    post = {k: v[:, 0] for k, v in post.items()}
    prior = {k: v[:, 0] for k, v in prior.items()}
    if not sample:
        post["stoch"] = _mode(_ctx(self).spec, post)
    return post, prior


def imagine_with_action(self, action, state, *, noise=None):
    """dreamerv3-torch ``RSSM.imagine_with_action(action [B, T, A], state)`` -> the prior
    dict of ``[B, T, ...]`` as one fused call. ``noise``: optional ``[B, T, S]``."""
    assert isinstance(state, dict), state
    return _imagine(self, action, state, noise, sample=True)


def _imagine(self, action, state, noise, sample):
    c = _ctx(self)
    spec = c.spec
    B, H = action.shape[:2]
    if noise is None:
        noise = _draw(spec, (B, H), action)
    params = params_of(self, spec)
    fused = fused_for(c.backend, action, B, H)
    fn = rssm_imagine if fused else _imagine_ref
    deter, stoch, a, b, _, _ = fn(params, spec, state["deter"],
                                  _flat_stoch(spec, state["stoch"]), action, None, noise, H)
    out = _state(spec, deter, stoch, a, b)
    if not sample:
        out["stoch"] = _mode(spec, out)
    return out


def img_step(self, prev_state, prev_action, sample=True, *, noise=None):
    """dreamerv3-torch ``RSSM.img_step(prev_state, prev_action, sample=True)`` -> the prior
    dict ``[B, ...]`` as one fused step. ``noise``: optional ``[B, S]``."""
    out = _imagine(self, prev_action[:, None], prev_state,
                   None if noise is None else noise[:, None], sample)
    return {k: v[:, 0] for k, v in out.items()}


_METHODS = {"observe": observe, "obs_step": obs_step, "img_step": img_step,
            "imagine_with_action": imagine_with_action}


def accelerate(rssm: nn.Module, backend: str = "auto") -> nn.Module:
    """Runs this dreamerv3-torch ``networks.RSSM`` instance on the fused ops, its own
    parameters in place (see the module docstring); returns it. ``backend``: ``'auto'``
    (fused where the extension has kernels for the tensors' device, except single steps
    of fewer than :data:`~dreamer_fast.integrations._common.SMALL_STEP_ROWS` rows, which
    run the reference ops: there the fused op's per-call weight packing costs more than
    the step), ``'fused'`` or ``'ref'`` (our pure-PyTorch references of the same ops)."""
    spec = spec_of(rssm)
    check_backend(backend)
    patch_methods(rssm, _METHODS)
    object.__setattr__(rssm, "_dreamer_fast_ctx", _Ctx(spec, backend))
    return rssm


def restore(rssm: nn.Module) -> nn.Module:
    """Gives the instance its own eager methods back."""
    unpatch_methods(rssm)
    rssm.__dict__.pop("_dreamer_fast_ctx", None)
    return rssm


# --------------------------------------------------------------------------------------
# λ-return
# --------------------------------------------------------------------------------------

def _returns(reward, value, pcont, bootstrap, lambda_, axis) -> torch.Tensor:
    if axis != 0:
        # the peer permutes the inputs and then calls .permute on its tuple (an error)
        raise ValueError(f"lambda_return: axis={axis!r}: dreamerv3-torch's lambda_return "
                         "works for axis=0 only (its axis != 0 path fails)")
    if reward.dim() != 3 or reward.shape[-1] != 1:
        raise ValueError(f"lambda_return: `reward` must be [T, N, 1] as in dreamerv3-torch's "
                         f"models.py (its scan reshapes to [N, T, 1]), got "
                         f"{tuple(reward.shape)}")
    if len(reward.shape) != len(value.shape):
        raise ValueError(f"lambda_return: `reward` {tuple(reward.shape)} and `value` "
                         f"{tuple(value.shape)} differ in rank")
    if isinstance(pcont, (int, float)):
        pcont = float(pcont)
    return _lambda_return_op(reward, value, pcont, bootstrap, float(lambda_), 0)


def lambda_return(reward, value, pcont, bootstrap, lambda_, axis):
    """dreamerv3-torch ``tools.lambda_return`` on the fused scan: same signature, same
    result (a tuple of ``N`` tensors ``[T, 1]`` for ``reward [T, N, 1]``)."""
    return tuple(_returns(reward, value, pcont, bootstrap, lambda_, axis).unbind(1))


class LambdaReturns(Sequence):
    """What :func:`install`'s ``tools.lambda_return`` returns: a sequence of the ``N``
    returns ``[T, 1]`` (made on first access) holding the scan's ``[T, N, 1]`` output,
    which the patched ``models.torch.stack(x, dim=1)`` returns as it is."""

    def __init__(self, stacked: torch.Tensor) -> None:
        self.stacked = stacked
        self._items = None

    def _views(self):
        if self._items is None:
            self._items = self.stacked.unbind(1)
        return self._items

    def __len__(self) -> int:
        return self.stacked.shape[1]

    def __getitem__(self, i):
        return self._views()[i]


def _fast_lambda_return(reward, value, pcont, bootstrap, lambda_, axis):
    return LambdaReturns(_returns(reward, value, pcont, bootstrap, lambda_, axis))


class _TorchProxy(types.ModuleType):
    """``torch`` for a peer module, with a ``stack`` that knows :class:`LambdaReturns`."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def stack(tensors, dim=0, *, out=None):
        if isinstance(tensors, LambdaReturns) and out is None:
            if dim in (1, -2):
                return tensors.stacked
            tensors = list(tensors)
        elif isinstance(tensors, LambdaReturns):
            tensors = list(tensors)
        return torch.stack(tensors, dim, out=out) if out is not None else torch.stack(
            tensors, dim)


def install(tools: types.ModuleType, models: types.ModuleType | None = None) -> None:
    """The λ-return at full speed: ``tools.lambda_return`` becomes the fused scan
    returning a :class:`LambdaReturns`, and ``models.torch`` a proxy of ``torch`` whose
    ``stack`` returns its ``[T, N, 1]`` tensor (``models.py`` stacks the returns along
    dim 1 twice). Without ``models`` only the exact drop-in :func:`lambda_return` (a
    tuple) is installed. :func:`uninstall` puts the peer's own back."""
    saved = tools.__dict__.setdefault("_dreamer_fast_saved", {})
    saved.setdefault("lambda_return", tools.lambda_return)
    if models is None:
        tools.lambda_return = lambda_return
        return
    msaved = models.__dict__.setdefault("_dreamer_fast_saved", {})
    msaved.setdefault("torch", models.torch)
    models.torch = _TorchProxy()
    tools.lambda_return = _fast_lambda_return


def uninstall(tools: types.ModuleType, models: types.ModuleType | None = None) -> None:
    for mod in (tools, models):
        if mod is None:
            continue
        for name, val in mod.__dict__.pop("_dreamer_fast_saved", {}).items():
            setattr(mod, name, val)

