"""Recurrent cell modules backed by the fused ops (``backend='ref'`` for plain PyTorch)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dreamer_fast.ops._dispatch import check_backend, choose
from dreamer_fast.ops.cells import (block_gru_cell, block_gru_cell_ref, gru_cell, gru_cell_ref,
                                    ln_gru_cell, ln_gru_cell_ref)


class GRUCell(nn.GRUCell):
    """Drop-in ``torch.nn.GRUCell``: same constructor, parameters and state_dict; the
    forward pass is the fused :func:`dreamer_fast.ops.gru_cell`.

    ``input [B, I]`` (or any leading dims), ``hx [B, H]`` or None; returns ``[B, H]``.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None, backend: str = "auto") -> None:
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.backend = check_backend(backend)

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        fn = choose(self.backend, input, gru_cell, gru_cell_ref)
        return fn(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class LNGRUCell(nn.Module):
    """The LayerNorm GRU of DreamerV2 / dreamerv3-torch / sheeprl (see
    :func:`dreamer_fast.ops.ln_gru_cell` for the equations).

    Parameters: ``weight [3H, I + H]`` (no bias), ``norm_weight [3H]``, ``norm_bias [3H]``
    (``norm=False``: no LayerNorm and neither norm tensor, both None). ``state_first``:
    the weight's columns take ``cat(h, x)`` (sheeprl's order) instead of ``cat(x, h)``.
    """

    def __init__(self, input_size: int, hidden_size: int, update_bias: float = -1.0,
                 eps: float = 1e-3, device=None, dtype=None, backend: str = "auto",
                 norm: bool = True, state_first: bool = False) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size = input_size, hidden_size
        self.update_bias, self.eps = float(update_bias), float(eps)
        self.norm, self.state_first = bool(norm), bool(state_first)
        self.weight = nn.Parameter(torch.empty(3 * hidden_size, input_size + hidden_size, **kw))
        if self.norm:
            self.norm_weight = nn.Parameter(torch.ones(3 * hidden_size, **kw))
            self.norm_bias = nn.Parameter(torch.zeros(3 * hidden_size, **kw))
        else:
            self.register_parameter("norm_weight", None)
            self.register_parameter("norm_bias", None)
        self.backend = check_backend(backend)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default initialisation (what the reference implementations use).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.norm:
            nn.init.ones_(self.norm_weight)
            nn.init.zeros_(self.norm_bias)

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        fn = choose(self.backend, input, ln_gru_cell, ln_gru_cell_ref)
        return fn(input, hx, self.weight, self.norm_weight, self.norm_bias, self.update_bias,
                  self.eps, self.state_first)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, update_bias={self.update_bias}, "
                f"eps={self.eps}, norm={self.norm}, state_first={self.state_first}, "
                f"backend={self.backend!r}")


class BlockGRUCell(nn.Module):
    """The DreamerV3 block GRU core (see :func:`dreamer_fast.ops.block_gru_cell` for the
    equations): ``forward(deter [B, D], stoch [B, S], action [B, A]) -> deter' [B, D]``.

    ``stoch`` is the flattened stochastic state (``stoch * classes`` for categorical
    latents). Initialisation: PyTorch's Linear default for every weight (block weights
    use fan-in ``in / blocks``), zero biases, unit RMSNorm scales.
    """

    def __init__(self, deter: int, stoch: int, action: int, hidden: int, blocks: int = 8,
                 dynlayers: int = 1, act: str = "silu", eps: float = 1e-4, device=None,
                 dtype=None, backend: str = "auto") -> None:
        super().__init__()
        if deter % blocks:
            raise ValueError(f"BlockGRUCell: `blocks`={blocks} must divide `deter`={deter}")
        if dynlayers < 1:
            raise ValueError(f"BlockGRUCell: `dynlayers` must be >= 1, got {dynlayers}")
        kw = {"device": device, "dtype": dtype}
        self.deter, self.blocks, self.act, self.eps = deter, blocks, act, float(eps)
        self.backend = check_backend(backend)
        dg = deter // blocks
        self.in_params = nn.ParameterList()
        for fan_in in (deter, stoch, action):
            self.in_params.extend([nn.Parameter(torch.empty(hidden, fan_in, **kw)),
                                   nn.Parameter(torch.zeros(hidden, **kw)),
                                   nn.Parameter(torch.ones(hidden, **kw))])
        self.hidden_params = nn.ParameterList()
        for layer in range(dynlayers):
            in_g = dg + 3 * hidden if layer == 0 else dg
            self.hidden_params.extend([nn.Parameter(torch.empty(blocks, in_g, dg, **kw)),
                                       nn.Parameter(torch.zeros(deter, **kw)),
                                       nn.Parameter(torch.ones(deter, **kw))])
        self.gru_weight = nn.Parameter(torch.empty(blocks, dg, 3 * dg, **kw))
        self.gru_bias = nn.Parameter(torch.zeros(3 * deter, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        weights = [self.in_params[i] for i in (0, 3, 6)]
        weights += [self.hidden_params[i] for i in range(0, len(self.hidden_params), 3)]
        for w in weights + [self.gru_weight]:
            bound = 1 / math.sqrt(w.shape[-1] if w.dim() == 2 else w.shape[1])
            nn.init.uniform_(w, -bound, bound)

    def forward(self, deter: torch.Tensor, stoch: torch.Tensor,
                action: torch.Tensor) -> torch.Tensor:
        fn = choose(self.backend, deter, block_gru_cell, block_gru_cell_ref)
        return fn(deter, stoch, action, list(self.in_params), list(self.hidden_params),
                  self.gru_weight, self.gru_bias, self.blocks, self.act, self.eps)
