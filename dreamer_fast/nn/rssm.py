"""The Recurrent State-Space Model of Dreamer V1/V2/V3 on the fused ops.

State: a dict of tensors with batch shape ``[B]`` (one step) or ``[B, T]`` (sequences,
**batch-major**, as in dreamerv3 and dreamerv3-torch):

* ``deter  [..., D]`` the recurrent (deterministic) state
* ``stoch  [..., S, K]`` one-hot samples (categorical latents, ``classes=K``) or
  ``[..., S]`` Gaussian samples (``classes=None``)
* ``logit  [..., S, K]`` (categorical) or ``mean``/``std`` ``[..., S]`` (Gaussian)

Transitions:

* ``img_step(state, action)`` (prior): cell input ``[stoch, action]`` -> deter' ->
  ``img_layers`` dense layers -> stats -> sample.
  - ``cell='gru'`` (V1) / ``'ln_gru'`` (V2): input layer ``Dense([stoch, action] -> hidden)``
    then the cell ``(hidden, deter) -> deter'``.
  - ``cell='block_gru'`` (V3): the block GRU consumes ``deter, stoch, action`` directly.
* ``obs_step(state, action, embed, is_first)`` (posterior): resets ``state`` and
  ``action`` to zeros where ``is_first``, runs ``img_step`` for the prior, then
  ``[deter', embed]`` -> ``obs_layers`` dense layers -> stats -> sample.

Parameters and structure reach the ops as a flat tensor list and a plain spec:
:meth:`RSSM.spec` (a :class:`~dreamer_fast.ops.RSSMSpec`) and :meth:`RSSM.spec_params`
(order: :mod:`dreamer_fast.ops.rssm_spec`). Every transition method makes one
fused/reference decision (``dreamer_fast.ops._dispatch``) and one call: ``observe`` /
``obs_step`` run ``rssm_observe`` (``T = 1`` for a step), ``img_step`` /
``imagine_with_action`` run ``rssm_imagine`` with given actions (``H = 1`` for a step),
or their references ``rssm_observe_ref`` / ``rssm_imagine_ref`` with ``backend='ref'``;
both give the same numbers for the same parameters and noise.

Sampling takes noise as an input (uniform ``[..., S]`` for categorical, standard normal
``[..., S]`` for Gaussian), drawn with torch.rand/randn when not given: the fused
backend draws each noise tensor of a call at once, the reference one step at a time
(prior, then posterior) as a step-by-step loop would. Caller noise is range-checked by
the reference backend (``categorical_sample``'s check) and not by the fused one.
"""

from __future__ import annotations

import torch
from torch import nn

from dreamer_fast.nn.cells import BlockGRUCell, GRUCell, LNGRUCell
from dreamer_fast.nn.dense import MLP, Dense, shared_eps
from dreamer_fast.nn.flat_params import FlatParams
from dreamer_fast.ops._dispatch import check_backend, use_fused
from dreamer_fast.ops.rssm import (_imagine_ref, _observe_ref, rssm_imagine, rssm_initial,
                                   rssm_observe)
from dreamer_fast.ops.rssm_spec import CELLS, INITIALS, RSSMSpec

State = dict[str, torch.Tensor]


class RSSM(FlatParams, nn.Module):
    def __init__(self, *, stoch: int, deter: int, hidden: int, action_size: int,
                 embed_size: int, classes: int | None = None, cell: str = "ln_gru",
                 blocks: int = 8, dynlayers: int = 1, img_layers: int = 1, obs_layers: int = 1,
                 norm: str = "layer", act: str = "silu", unimix: float = 0.01,
                 min_std: float = 0.1, eps: float | None = None, device=None, dtype=None,
                 backend: str = "auto", cell_norm: bool = True, cell_state_first: bool = False,
                 std_act: str = "softplus", mean_act: str = "none", initial: str = "zeros",
                 initial_stoch_grad: bool = True, min_std_mode: str = "add") -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"RSSM: `cell` must be one of {CELLS}, got {cell!r}")
        if classes is not None and classes < 1:
            raise ValueError(f"RSSM: `classes` must be None (Gaussian) or >= 1, got {classes}")
        if cell == "block_gru" and deter % blocks:
            raise ValueError(f"RSSM: `blocks`={blocks} must divide `deter`={deter}")
        if not 0.0 <= unimix < 1.0:
            raise ValueError(f"RSSM: `unimix` must be in [0, 1), got {unimix}")
        if min_std < 0:
            raise ValueError(f"RSSM: `min_std` must be >= 0, got {min_std}")
        if initial not in INITIALS:
            raise ValueError(f"RSSM: `initial` must be one of {INITIALS}, got {initial!r}")
        if cell != "ln_gru" and (not cell_norm or cell_state_first):
            raise ValueError("RSSM: `cell_norm=False` and `cell_state_first=True` are options "
                             f"of cell 'ln_gru', got cell {cell!r}")
        # the Gaussian activations and the learned initial state's gradient: RSSMSpec
        # checks them (a ValueError naming the field)
        self.std_act, self.mean_act, self.min_std_mode = std_act, mean_act, min_std_mode
        self.initial_type, self.initial_stoch_grad = initial, initial_stoch_grad
        self.stoch, self.deter, self.classes, self.hidden = stoch, deter, classes, hidden
        self.action_size, self.embed_size = action_size, embed_size
        self.cell_type, self.unimix, self.min_std = cell, float(unimix), float(min_std)
        self.backend = check_backend(backend)
        eps = (1e-4 if norm == "rms" else 1e-3) if eps is None else eps
        kw = dict(device=device, dtype=dtype, backend=backend)
        flat_stoch = stoch * (classes or 1)
        stats = stoch * classes if classes else 2 * stoch
        if cell == "block_gru":
            self.img_in = None
            self.cell = BlockGRUCell(deter, flat_stoch, action_size, hidden, blocks, dynlayers,
                                     act=act, eps=eps, **kw)
        else:
            self.img_in = Dense(flat_stoch + action_size, hidden, norm, act, eps=eps, **kw)
            if cell == "gru":
                self.cell = GRUCell(hidden, deter, **kw)
            else:
                self.cell = LNGRUCell(hidden, deter, norm=cell_norm, state_first=cell_state_first,
                                      **kw)
        self.img_out = MLP(deter, hidden, img_layers, stats, norm, act, eps, **kw)
        self.obs_out = MLP(deter + embed_size, hidden, obs_layers, stats, norm, act, eps, **kw)
        # the learned initial state's W [D] (zeros: deter0 = tanh(0) = 0, as
        # dreamerv3-torch and sheeprl initialise it); None for initial='zeros'
        self.initial_weight = (nn.Parameter(torch.zeros(deter, device=device, dtype=dtype))
                               if initial == "learned" else None)
        self._spec = self._build_spec()

    # ---- spec and flat parameters ------------------------------------------------------

    def _build_spec(self) -> RSSMSpec:
        img_in = [] if self.img_in is None else [self.img_in]
        cell = self.cell
        if self.cell_type == "gru":
            kw = dict(cell_bias=cell.bias)
        elif self.cell_type == "ln_gru":
            kw = dict(cell_bias=False, cell_eps=cell.eps, update_bias=cell.update_bias,
                      cell_norm=cell.norm, cell_state_first=cell.state_first)
        else:
            kw = dict(blocks=cell.blocks, dynlayers=len(cell.hidden_params) // 3,
                      cell_act=cell.act, cell_eps=cell.eps)
        return RSSMSpec(
            cell=self.cell_type, deter=self.deter, stoch=self.stoch, classes=self.classes,
            hidden=self.hidden, action_size=self.action_size, embed_size=self.embed_size,
            img_in=tuple(d.spec() for d in img_in),
            img_out=tuple(d.spec() for d in self.img_out),
            obs_out=tuple(d.spec() for d in self.obs_out),
            eps=shared_eps("RSSM", [*img_in, *self.img_out, *self.obs_out]),
            unimix=self.unimix, min_std=self.min_std, std_act=self.std_act,
            mean_act=self.mean_act, min_std_mode=self.min_std_mode, initial=self.initial_type,
            initial_stoch_grad=self.initial_stoch_grad, **kw)

    def spec(self) -> RSSMSpec:
        """The structure and constants of this RSSM (fixed at construction)."""
        return self._spec

    def spec_params(self) -> list[torch.Tensor]:
        """The parameters as the flat list of :meth:`spec` (the module's own tensors, in
        the order of ``RSSMSpec.param_names``)."""
        cell = self.cell
        if self.cell_type == "gru":
            cell_t = [cell.weight_ih, cell.weight_hh] + (
                [cell.bias_ih, cell.bias_hh] if cell.bias else [])
        elif self.cell_type == "ln_gru":
            cell_t = [cell.weight] + ([cell.norm_weight, cell.norm_bias] if cell.norm else [])
        else:
            cell_t = [*cell.in_params, *cell.hidden_params, cell.gru_weight, cell.gru_bias]
        img_in = [] if self.img_in is None else self.img_in.spec_params()
        initial = [] if self.initial_weight is None else [self.initial_weight]
        return [*img_in, *cell_t, *(t for d in self.img_out for t in d.spec_params()),
                *(t for d in self.obs_out for t in d.spec_params()), *initial]

    # ---- state helpers -------------------------------------------------------------

    @property
    def feat_size(self) -> int:
        return self.stoch * (self.classes or 1) + self.deter

    def initial(self, batch: int) -> State:
        """The initial state for ``batch`` sequences: zeros (``initial='zeros'``) or the
        learned one, ``deter = tanh(W)`` and ``stoch`` the prior's mode there
        (:func:`~dreamer_fast.ops.rssm_initial`; ``logit`` / ``mean`` / ``std`` stay
        zeros / ones, as only ``deter`` and ``stoch`` feed a step)."""
        p = next(self.parameters())
        z = lambda *s: torch.zeros(batch, *s, device=p.device, dtype=p.dtype)  # noqa: E731
        if self.classes:
            state = {"deter": z(self.deter), "stoch": z(self.stoch, self.classes),
                     "logit": z(self.stoch, self.classes)}
        else:
            state = {"deter": z(self.deter), "stoch": z(self.stoch), "mean": z(self.stoch),
                     "std": z(self.stoch) + 1.0}
        if self.initial_weight is not None:
            deter0, stoch0 = rssm_initial(self.spec_params(), self._spec)
            # contiguous copies (not expanded views): callers write into the state
            state["deter"] = deter0.expand(batch, -1).contiguous()
            state["stoch"] = stoch0.reshape(state["stoch"].shape[1:]).expand(
                batch, *state["stoch"].shape[1:]).contiguous()
        return state

    def get_feat(self, state: State) -> torch.Tensor:
        """``cat([stoch.flatten(), deter], -1)``: ``[..., S*K + D]``."""
        stoch = state["stoch"]
        if self.classes:
            stoch = stoch.reshape(*stoch.shape[:-2], self.stoch * self.classes)
        return torch.cat([stoch, state["deter"]], -1)

    def draw_noise(self, *batch: int, like: torch.Tensor) -> torch.Tensor:
        """Noise for one sampling step per batch element: uniform [0, 1) (categorical) or
        standard normal (Gaussian), ``[*batch, S]``."""
        shape = (*batch, self.stoch)
        if self.classes:
            return torch.rand(shape, device=like.device, dtype=like.dtype)
        return torch.randn(shape, device=like.device, dtype=like.dtype)

    def flatten_stoch(self, stoch: torch.Tensor) -> torch.Tensor:
        """``[..., S, K]`` one-hot latents -> ``[..., S*K]`` (Gaussian: unchanged)."""
        if self.classes:
            return stoch.reshape(*stoch.shape[:-2], self.stoch * self.classes)
        return stoch

    def state_from_flat(self, deter: torch.Tensor | None, stoch: torch.Tensor,
                        a: torch.Tensor, b: torch.Tensor) -> State:
        """A state dict from the ops' flat outputs (``a``, ``b``: logits and nothing, or
        mean and std)."""
        if self.classes:
            shape = (*stoch.shape[:-1], self.stoch, self.classes)
            return {"deter": deter, "stoch": stoch.reshape(shape), "logit": a.reshape(shape)}
        return {"deter": deter, "stoch": stoch, "mean": a, "std": b}

    # ---- transitions -----------------------------------------------------------------

    def _draw_steps(self, B: int, T: int, streams: int, like: torch.Tensor,
                    fused: bool) -> tuple[torch.Tensor, ...]:
        """``streams`` noise tensors ``[B, T, S]``: drawn whole (fused) or step by step,
        every stream's step t before step t + 1 (reference)."""
        if fused:
            return tuple(self.draw_noise(B, T, like=like) for _ in range(streams))
        steps = [[self.draw_noise(B, like=like) for _ in range(streams)] for _ in range(T)]
        return tuple(torch.stack([step[i] for step in steps], 1) for i in range(streams))

    def _observe(self, fused: bool, embed, action, is_first, state,
                 noise) -> tuple[State, State]:
        given = noise is not None
        if not given:
            noise = self._draw_steps(*action.shape[:2], 2, action, fused)
        keep = (~is_first.bool()).to(embed.dtype)
        args = (self.spec_params(), self._spec, embed, action, keep, state["deter"],
                self.flatten_stoch(state["stoch"]), noise[0], noise[1])
        # the reference range-checks the caller's uniform noise, as categorical_sample does
        out = rssm_observe(*args) if fused else _observe_ref(*args, check_range=given)
        deter, ps, pa, pb, qs, qa, qb = out
        return self.state_from_flat(deter, ps, pa, pb), self.state_from_flat(deter, qs, qa, qb)

    def _imagine(self, fused: bool, state, action, noise) -> State:
        given = noise is not None
        if not given:
            (noise,) = self._draw_steps(*action.shape[:2], 1, action, fused)
        args = (self.spec_params(), self._spec, state["deter"],
                self.flatten_stoch(state["stoch"]), action, None, noise, action.shape[1])
        out = rssm_imagine(*args) if fused else _imagine_ref(*args, check_range=given)
        deter, stoch, a, b, _, _ = out
        return self.state_from_flat(deter, stoch, a, b)

    def img_step(self, state: State, action: torch.Tensor,
                 noise: torch.Tensor | None = None) -> State:
        """Prior step: ``state`` (batch ``[B]``), ``action [B, A]``, ``noise [B, S]`` ->
        next prior state."""
        out = self._imagine(use_fused(self.backend, action), state, action[:, None],
                            None if noise is None else noise[:, None])
        return {k: v[:, 0] for k, v in out.items()}

    def obs_step(self, state: State, action: torch.Tensor, embed: torch.Tensor,
                 is_first: torch.Tensor,
                 noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[State, State]:
        """Posterior step. Resets ``state``/``action`` where ``is_first [B]`` (bool), then
        returns ``(post, prior)``. ``noise = (prior_noise, post_noise)``, each ``[B, S]``."""
        if noise is not None:
            noise = (noise[0][:, None], noise[1][:, None])
        post, prior = self._observe(use_fused(self.backend, action), embed[:, None],
                                    action[:, None], is_first[:, None], state, noise)
        return ({k: v[:, 0] for k, v in post.items()}, {k: v[:, 0] for k, v in prior.items()})

    def observe(self, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor,
                state: State | None = None,
                noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[State, State]:
        """Posterior and prior over a sequence, batch-major: ``embed [B, T, E]``,
        ``action [B, T, A]`` (the action *before* each step), ``is_first [B, T]``,
        ``noise = (prior [B, T, S], post [B, T, S])``; ``state``: the state before the
        first step (batch ``[B]``; None: :meth:`initial`, zeros or the learned state).
        Where ``is_first`` the state resets to :meth:`initial`. Returns ``(post,
        prior)`` with ``[B, T, ...]`` tensors (``deter`` shared by both)."""
        state = self.initial(action.shape[0]) if state is None else state
        return self._observe(use_fused(self.backend, action), embed, action, is_first, state,
                             noise)

    def imagine_with_action(self, action: torch.Tensor, state: State,
                            noise: torch.Tensor | None = None) -> State:
        """Prior rollout from ``state`` (batch ``[B]``) for ``action [B, T, A]``; ``noise
        [B, T, S]``. Returns ``[B, T, ...]`` states (the step after each action)."""
        return self._imagine(use_fused(self.backend, action), state, action, noise)

    # ---- losses ----------------------------------------------------------------------

    def kl(self, lhs: State, rhs: State) -> torch.Tensor:
        """KL(lhs || rhs) summed over the latent dims: ``[...]``."""
        if self.classes:
            lp, rp = _unimix_log_probs(lhs["logit"], self.unimix), _unimix_log_probs(
                rhs["logit"], self.unimix)
            return (lp.exp() * (lp - rp)).sum((-2, -1))
        m1, s1, m2, s2 = lhs["mean"], lhs["std"], rhs["mean"], rhs["std"]
        return (torch.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5).sum(-1)

    def kl_loss(self, post: State, prior: State, free: float = 1.0, dyn_scale: float = 0.5,
                rep_scale: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """DreamerV3: ``dyn = max(free, KL(sg(post) || prior))``, ``rep = max(free,
        KL(post || sg(prior)))``; returns ``(dyn_scale·dyn + rep_scale·rep, dyn, rep)``
        per element ``[...]``."""
        dyn = self.kl(_detach(post), prior)
        rep = self.kl(post, _detach(prior))
        dyn, rep = dyn.clamp(min=free), rep.clamp(min=free)
        return dyn_scale * dyn + rep_scale * rep, dyn, rep

    def kl_balance_loss(self, post: State, prior: State, free: float = 1.0,
                        balance: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
        """DreamerV2 KL balancing: ``balance·max(free, KL(sg(post)||prior)) + (1 −
        balance)·max(free, KL(post||sg(prior)))``; returns ``(loss, KL(post || prior))``.
        ``balance=0.5`` with ``free=3`` is DreamerV1's free-nats KL."""
        dyn = self.kl(_detach(post), prior).clamp(min=free)
        rep = self.kl(post, _detach(prior)).clamp(min=free)
        with torch.no_grad():
            value = self.kl(post, prior)
        return balance * dyn + (1 - balance) * rep, value


def _unimix_log_probs(logit: torch.Tensor, unimix: float) -> torch.Tensor:
    probs = torch.softmax(logit, -1)
    if unimix:
        probs = (1 - unimix) * probs + unimix / logit.shape[-1]
    return torch.log(probs)


def _detach(state: State) -> State:
    return {k: v.detach() for k, v in state.items()}
