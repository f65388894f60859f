"""Plain specs of an RSSM and an actor: what the sequence ops need to know besides the
tensors.

An :class:`RSSMSpec` (or :class:`ActorSpec`) fixes the layer structure, sizes and
constants; the parameters travel as one flat list of tensors in the order
:meth:`RSSMSpec.param_names` documents (shapes: :meth:`RSSMSpec.param_shapes`). The
specs are frozen dataclasses, validated on construction (a ValueError or TypeError
names the field). They know nothing of ``torch.nn``: ``dreamer_fast.nn.RSSM.spec()`` /
``spec_params()`` build them from a module, and anything else that holds the tensors can
build them by hand.

Flat parameter order of an RSSM (``D`` deter, ``U`` hidden, ``S`` latent groups, ``K``
classes, ``Z = S·K`` (categorical) or ``S`` (Gaussian) the flat stoch size, ``A``
actions, ``E`` embed, ``G`` blocks, ``Dg = D / G``, ``stats = S·K`` or ``2S``)::

    img_in     (gru, ln_gru: one dense layer [Z + A] -> U; block_gru: none)
    cell       gru:       weight_ih [3D, U], weight_hh [3D, D] (+ bias_ih [3D], bias_hh [3D])
               ln_gru:    weight [3D, U + D], norm_weight [3D], norm_bias [3D] (no norm
                          tensors with cell_norm=False; columns for cat(h, x) with
                          cell_state_first=True)
               block_gru: in_params: (W [U, D], b [U], s [U]), (W [U, Z], b, s), (W [U, A], b, s);
                          hidden_params per layer: W [G, Dg + 3U (first) or Dg, Dg], b [D], s [D];
                          gru_weight [G, Dg, 3Dg], gru_bias [3D]
    img_out    prior MLP: D -> U -> ... -> stats (one dense layer per entry)
    obs_out    posterior MLP: D + E -> U -> ... -> stats
    initial    (initial='learned' only) initial [D]: the learned initial state's W

A dense layer ``act(norm(x Wᵀ + b))`` contributes ``weight [out, in]``, then ``bias``
(if ``has_bias``), ``norm_weight`` (norm 'layer' or 'rms') and ``norm_bias`` (norm
'layer'), each ``[out]``. Every layer of an MLP is ``U`` wide except the last.

Flat parameter order of an actor: its MLP, ``feat_size -> units -> ... -> out`` with
``out = 2A`` (normal heads: raw mean and raw std) or ``A`` (categorical logits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

from dreamer_fast.ops.dense import ACTS, NORMS

__all__ = ["DenseSpec", "RSSMSpec", "ActorSpec", "CELLS", "HEADS", "STD_ACTS", "MEAN_ACTS",
           "INITIALS", "MIN_STD_MODES"]

CELLS = ("gru", "ln_gru", "block_gru")
HEADS = ("tanh_normal", "bounded_normal", "categorical")
#: Gaussian latents: ``std = std_act(raw) + min_std`` (``softplus``, ``abs``: ``|raw + 1|``,
#: ``sigmoid``: ``σ(raw)``, ``sigmoid2``: ``2σ(raw / 2)``) and ``mean = mean_act(m)``
#: (``none``, ``tanh5``: ``5 tanh(m / 5)``), the options of dreamerv3-torch's RSSM.
STD_ACTS = ("softplus", "abs", "sigmoid", "sigmoid2")
MEAN_ACTS = ("none", "tanh5")
#: ``min_std_mode``: ``std = std_act(raw) + min_std`` (``add``) or ``max(std_act(raw),
#: min_std)`` (``clamp``, TorchRL's NormalParamExtractor ``scale_lb``)
MIN_STD_MODES = ("add", "clamp")
#: The state a sequence starts from and resets to: zeros, or the learned ``deter0 =
#: tanh(W)`` with ``stoch0`` the mode of the prior at ``deter0`` (dreamerv3-torch's
#: ``initial='learned'``, sheeprl's learnable initial recurrent state).
INITIALS = ("zeros", "learned")

Shape = tuple[int, ...]


def _fail(cls: str, name: str, want: str, value: object, exc=ValueError):
    raise exc(f"{cls}: `{name}` must be {want}, got {value!r}")


def _int(cls: str, name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(cls, name, f"an int >= {low}", value, TypeError)
    if value < low:
        _fail(cls, name, f"an int >= {low}", value)


def _bool(cls: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        _fail(cls, name, "a bool", value, TypeError)


def _float(cls: str, name: str, value: object, want: str, ok) -> None:
    if isinstance(value, bool) or not isinstance(value, Real):
        _fail(cls, name, f"a float {want}", value, TypeError)
    if not (math.isfinite(value) and ok(float(value))):
        _fail(cls, name, f"a finite float {want}", value)


def _choice(cls: str, name: str, value: object, allowed) -> None:
    if value not in allowed:
        _fail(cls, name, f"one of {tuple(allowed)}", value)


def _layers(obj, cls: str, name: str, low: int, high: int | None = None) -> None:
    """Converts the field to a tuple of DenseSpec (in place) and checks its length."""
    value = getattr(obj, name)
    if not isinstance(value, (tuple, list)) or not all(isinstance(d, DenseSpec) for d in value):
        _fail(cls, name, "a tuple of DenseSpec", value, TypeError)
    object.__setattr__(obj, name, tuple(value))
    n = len(value)
    if n < low or (high is not None and n > high):
        want = f"exactly {low}" if high == low else f"at least {low}"
        _fail(cls, name, f"{want} DenseSpec", value)


def _dense_entries(prefix: str, layers: tuple[DenseSpec, ...],
                   sizes: list[tuple[int, int]]) -> list[tuple[str, Shape]]:
    out = []
    for i, (d, (fan_in, fan_out)) in enumerate(zip(layers, sizes)):
        out += [(f"{prefix}[{i}].{n}", s) for n, s in d.tensor_shapes(fan_in, fan_out)]
    return out


def _mlp_sizes(fan_in: int, width: int, out: int, n: int) -> list[tuple[int, int]]:
    """(in, out) of ``n`` layers: ``fan_in -> width -> ... -> out``."""
    return [(fan_in if i == 0 else width, out if i == n - 1 else width) for i in range(n)]


@dataclass(frozen=True)
class DenseSpec:
    """One dense layer ``act(norm(x Wᵀ + b))``: whether it has the linear bias, its norm
    (``'none'``, ``'layer'``, ``'rms'``) and activation (see :data:`~dreamer_fast.ops.
    dense.ACTS`)."""

    has_bias: bool
    norm: str = "none"
    act: str = "none"

    def __post_init__(self) -> None:
        _bool("DenseSpec", "has_bias", self.has_bias)
        _choice("DenseSpec", "norm", self.norm, NORMS)
        _choice("DenseSpec", "act", self.act, ACTS)

    def tensor_names(self) -> tuple[str, ...]:
        """The layer's tensors in flat order: ``weight``, then ``bias``, ``norm_weight``,
        ``norm_bias`` where present."""
        return (("weight",) + (("bias",) if self.has_bias else ())
                + (("norm_weight",) if self.norm != "none" else ())
                + (("norm_bias",) if self.norm == "layer" else ()))

    def tensor_count(self) -> int:
        return len(self.tensor_names())

    def tensor_shapes(self, fan_in: int, fan_out: int) -> list[tuple[str, Shape]]:
        return [(n, (fan_out, fan_in) if n == "weight" else (fan_out,))
                for n in self.tensor_names()]


@dataclass(frozen=True)
class RSSMSpec:
    """Structure and constants of an RSSM (see the module docstring for the flat
    parameter order).

    ``cell`` in ``('gru', 'ln_gru', 'block_gru')``; ``classes=None`` gives Gaussian
    latents of ``stoch`` dims, an int ``K`` gives ``stoch`` categoricals of ``K``
    classes. ``img_in`` has one layer (gru, ln_gru) or none (block_gru); ``img_out``
    (prior) and ``obs_out`` (posterior) at least their output layer. ``eps`` is the
    epsilon of every normalised dense layer; ``cell_eps`` that of the cell's norms
    (ln_gru, block_gru); ``update_bias`` the ln_gru's update-gate bias; ``blocks``,
    ``dynlayers`` and ``cell_act`` are the block GRU's (1, 1, 'none' for the other
    cells); ``cell_bias`` the GRU's biases (ln_gru: False, block_gru: True).
    ``cell_norm`` (ln_gru): the LayerNorm on the gates (False: ``parts = cat(x, h) Wᵀ``
    goes to the gates as it is, dreamerv3-torch's ``norm: False``); ``cell_state_first``
    (ln_gru): the weight's columns take ``cat(h, x)`` (sheeprl's order) instead of
    ``cat(x, h)``.
    ``unimix``: the categorical latents' uniform mix; Gaussian latents: ``std =
    std_act(raw) + min_std`` (``min_std_mode='clamp'``: ``max(std_act(raw), min_std)``),
    ``mean = mean_act(m)`` (:data:`STD_ACTS`, :data:`MEAN_ACTS`, :data:`MIN_STD_MODES`).
    ``initial``: the state at ``t = 0`` when none is given and at every reset
    (``keep = 0``): ``'zeros'``, or ``'learned'`` with one more parameter ``initial
    [D]`` (``W``, last in the flat list): ``deter0 = tanh(W)``, ``stoch0`` = the mode of
    the prior at ``deter0`` (Gaussian: its mean; categorical: the one-hot of the
    argmax of the unimix log-probs). ``initial_stoch_grad`` (learned only): whether
    ``stoch0`` passes gradient back into the prior MLP and ``W``: True is
    dreamerv3-torch's (the Gaussian mean; the categorical mode straight-through the
    normalised unimix log-probs, ``onehot + lp − sg(lp)``), False sheeprl's (its
    ``OneHotCategorical.mode`` carries none).
    """

    cell: str
    deter: int
    stoch: int
    classes: int | None
    hidden: int
    action_size: int
    embed_size: int
    img_in: tuple[DenseSpec, ...]
    img_out: tuple[DenseSpec, ...]
    obs_out: tuple[DenseSpec, ...]
    blocks: int = 1
    dynlayers: int = 1
    cell_act: str = "none"
    cell_bias: bool = True
    eps: float = 1e-3
    cell_eps: float = 1e-3
    update_bias: float = -1.0
    unimix: float = 0.01
    min_std: float = 0.1
    cell_norm: bool = True
    cell_state_first: bool = False
    std_act: str = "softplus"
    mean_act: str = "none"
    initial: str = "zeros"
    initial_stoch_grad: bool = True
    min_std_mode: str = "add"

    def __post_init__(self) -> None:
        c = "RSSMSpec"
        _choice(c, "cell", self.cell, CELLS)
        for name in ("deter", "stoch", "hidden", "action_size", "embed_size", "blocks",
                     "dynlayers"):
            _int(c, name, getattr(self, name), 1)
        if self.classes is not None:
            _int(c, "classes", self.classes, 1)
        block = self.cell == "block_gru"
        _layers(self, c, "img_in", 0 if block else 1, 0 if block else 1)
        _layers(self, c, "img_out", 1)
        _layers(self, c, "obs_out", 1)
        _choice(c, "cell_act", self.cell_act, ACTS)
        _bool(c, "cell_bias", self.cell_bias)
        if block:
            if self.deter % self.blocks:
                _fail(c, "blocks", f"a divisor of `deter`={self.deter}", self.blocks)
            if not self.cell_bias:
                _fail(c, "cell_bias", "True for cell 'block_gru'", self.cell_bias)
        else:
            for name, want in (("blocks", 1), ("dynlayers", 1), ("cell_act", "none")):
                if getattr(self, name) != want:
                    _fail(c, name, f"{want!r} for cell {self.cell!r} (block_gru only)",
                          getattr(self, name))
        if self.cell == "ln_gru" and self.cell_bias:
            _fail(c, "cell_bias", "False for cell 'ln_gru' (it has no linear bias)",
                  self.cell_bias)
        _bool(c, "cell_norm", self.cell_norm)
        _bool(c, "cell_state_first", self.cell_state_first)
        if self.cell != "ln_gru":
            for name, want in (("cell_norm", True), ("cell_state_first", False)):
                if getattr(self, name) != want:
                    _fail(c, name, f"{want!r} for cell {self.cell!r} (ln_gru only)",
                          getattr(self, name))
        _choice(c, "std_act", self.std_act, STD_ACTS)
        _choice(c, "mean_act", self.mean_act, MEAN_ACTS)
        _choice(c, "min_std_mode", self.min_std_mode, MIN_STD_MODES)
        _choice(c, "initial", self.initial, INITIALS)
        _bool(c, "initial_stoch_grad", self.initial_stoch_grad)
        _float(c, "eps", self.eps, "> 0", lambda v: v > 0)
        _float(c, "cell_eps", self.cell_eps, "> 0", lambda v: v > 0)
        _float(c, "update_bias", self.update_bias, "", lambda v: True)
        _float(c, "unimix", self.unimix, "in [0, 1)", lambda v: 0.0 <= v < 1.0)
        _float(c, "min_std", self.min_std, ">= 0", lambda v: v >= 0.0)
        object.__setattr__(self, "_shapes", tuple(self._param_shapes()))

    # ---- sizes ----------------------------------------------------------------------

    @property
    def flat_stoch(self) -> int:
        """``Z``: the flattened stochastic state, ``S·K`` or ``S``."""
        return self.stoch * (self.classes or 1)

    @property
    def stats_size(self) -> int:
        """Outputs of the prior/posterior MLPs: logits ``S·K`` or mean and raw std ``2S``."""
        return self.stoch * self.classes if self.classes else 2 * self.stoch

    @property
    def feat_size(self) -> int:
        """``Z + D``: ``feat = cat([flat stoch, deter], -1)``."""
        return self.flat_stoch + self.deter

    # ---- the flat parameter list ----------------------------------------------------

    def cell_param_shapes(self) -> list[tuple[str, Shape]]:
        D, U = self.deter, self.hidden
        if self.cell == "gru":
            out = [("cell.weight_ih", (3 * D, U)), ("cell.weight_hh", (3 * D, D))]
            if self.cell_bias:
                out += [("cell.bias_ih", (3 * D,)), ("cell.bias_hh", (3 * D,))]
            return out
        if self.cell == "ln_gru":
            out = [("cell.weight", (3 * D, U + D))]
            if self.cell_norm:
                out += [("cell.norm_weight", (3 * D,)), ("cell.norm_bias", (3 * D,))]
            return out
        G = self.blocks
        Dg = D // G
        out = []
        for i, fan_in in enumerate((D, self.flat_stoch, self.action_size)):
            out += [(f"cell.in_params[{3 * i}]", (U, fan_in)),
                    (f"cell.in_params[{3 * i + 1}]", (U,)),
                    (f"cell.in_params[{3 * i + 2}]", (U,))]
        for layer in range(self.dynlayers):
            in_g = Dg + 3 * U if layer == 0 else Dg
            out += [(f"cell.hidden_params[{3 * layer}]", (G, in_g, Dg)),
                    (f"cell.hidden_params[{3 * layer + 1}]", (D,)),
                    (f"cell.hidden_params[{3 * layer + 2}]", (D,))]
        return out + [("cell.gru_weight", (G, Dg, 3 * Dg)), ("cell.gru_bias", (3 * D,))]

    def param_shapes(self) -> tuple[tuple[str, Shape], ...]:
        """``(name, shape)`` of every flat parameter, in order (module docstring)."""
        return self._shapes

    def _param_shapes(self) -> list[tuple[str, Shape]]:
        U, stats = self.hidden, self.stats_size
        return (_dense_entries("img_in", self.img_in,
                               [(self.flat_stoch + self.action_size, U)])
                + self.cell_param_shapes()
                + _dense_entries("img_out", self.img_out,
                                 _mlp_sizes(self.deter, U, stats, len(self.img_out)))
                + _dense_entries("obs_out", self.obs_out,
                                 _mlp_sizes(self.deter + self.embed_size, U, stats,
                                            len(self.obs_out)))
                + ([("initial", (self.deter,))] if self.initial == "learned" else []))

    def param_names(self) -> list[str]:
        return [n for n, _ in self.param_shapes()]

    def param_counts(self) -> dict[str, int]:
        """Tensors per part, in flat order: ``img_in``, ``cell``, ``img_out``, ``obs_out``,
        ``initial`` (1 with ``initial='learned'``, else 0)."""
        return {"img_in": sum(d.tensor_count() for d in self.img_in),
                "cell": len(self.cell_param_shapes()),
                "img_out": sum(d.tensor_count() for d in self.img_out),
                "obs_out": sum(d.tensor_count() for d in self.obs_out),
                "initial": int(self.initial == "learned")}

    def param_slices(self) -> dict[str, slice]:
        """Where each part (``img_in``, ``cell``, ``img_out``, ``obs_out``, ``initial``)
        lies in the flat list; ``obs_out`` (the posterior MLP) takes no part in
        imagination, nor does ``initial`` (the learned initial state, last)."""
        out, start = {}, 0
        for part, n in self.param_counts().items():
            out[part] = slice(start, start + n)
            start += n
        return out

    def param_count(self) -> int:
        return sum(self.param_counts().values())


@dataclass(frozen=True)
class ActorSpec:
    """Structure and constants of an actor: an MLP on the RSSM feature (``layers``, one
    DenseSpec per layer, output layer last; every layer ``units`` wide except the output
    of size ``2·action_size`` or ``action_size`` (categorical)) and its action head.

    Heads, with ``m, s`` the halves of the MLP output and ``ε`` the noise::

        tanh_normal:    mean = mean_scale·tanh(m / mean_scale),
                        std = softplus(s + std_offset) + min_std,   a = tanh(mean + std·ε)
        bounded_normal: mean = tanh(m), std = (max_std − min_std)·σ(s + 2) + min_std,
                        a = clip(mean + std·ε, −1, 1) (straight-through)
        categorical:    the straight-through one-hot of categorical_sample(logits, u, unimix)

    ``eps``: the epsilon of the normalised layers.
    """

    head: str
    action_size: int
    feat_size: int
    units: int
    layers: tuple[DenseSpec, ...]
    eps: float = 1e-3
    min_std: float = 0.1
    max_std: float = 1.0
    std_offset: float = 0.0
    mean_scale: float = 1.0
    unimix: float = 0.01

    def __post_init__(self) -> None:
        c = "ActorSpec"
        _choice(c, "head", self.head, HEADS)
        for name in ("action_size", "feat_size", "units"):
            _int(c, name, getattr(self, name), 1)
        _layers(self, c, "layers", 1)
        _float(c, "eps", self.eps, "> 0", lambda v: v > 0)
        _float(c, "min_std", self.min_std, ">= 0", lambda v: v >= 0)
        _float(c, "max_std", self.max_std, "", lambda v: True)
        if self.head == "bounded_normal" and not self.min_std < self.max_std:
            _fail(c, "max_std", f"> `min_std`={self.min_std} for head 'bounded_normal'",
                  self.max_std)
        _float(c, "std_offset", self.std_offset, "", lambda v: True)
        _float(c, "mean_scale", self.mean_scale, "> 0 for head 'tanh_normal'",
               lambda v: v > 0 or self.head != "tanh_normal")
        _float(c, "unimix", self.unimix, "in [0, 1)", lambda v: 0.0 <= v < 1.0)
        object.__setattr__(self, "_shapes", tuple(_dense_entries(
            "layers", self.layers,
            _mlp_sizes(self.feat_size, self.units, self.out_size, len(self.layers)))))

    @property
    def out_size(self) -> int:
        """Outputs of the MLP: ``A`` logits (categorical) or ``2A`` (raw mean, raw std)."""
        return self.action_size if self.head == "categorical" else 2 * self.action_size

    @property
    def noise_size(self) -> int:
        """Noise values per action: 1 uniform (categorical) or ``A`` standard normals."""
        return 1 if self.head == "categorical" else self.action_size

    def param_shapes(self) -> tuple[tuple[str, Shape], ...]:
        """``(name, shape)`` of every flat parameter, in order."""
        return self._shapes

    def param_names(self) -> list[str]:
        return [n for n, _ in self.param_shapes()]

    def param_count(self) -> int:
        return sum(d.tensor_count() for d in self.layers)
