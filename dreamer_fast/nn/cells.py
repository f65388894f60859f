"""Recurrent cell modules backed by the fused ops (``backend='ref'`` for plain PyTorch)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dreamer_fast.nn._backend import check_backend, use_fused
from dreamer_fast.ops.cells import gru_cell, gru_cell_ref, ln_gru_cell, ln_gru_cell_ref


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
        fn = gru_cell if use_fused(self.backend, input) else gru_cell_ref
        return fn(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class LNGRUCell(nn.Module):
    """The LayerNorm GRU of DreamerV2 / dreamerv3-torch / sheeprl (see
    :func:`dreamer_fast.ops.ln_gru_cell` for the equations).

    Parameters: ``weight [3H, I + H]`` (no bias), ``norm_weight [3H]``, ``norm_bias [3H]``.
    """

    def __init__(self, input_size: int, hidden_size: int, update_bias: float = -1.0,
                 eps: float = 1e-3, device=None, dtype=None, backend: str = "auto") -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size = input_size, hidden_size
        self.update_bias, self.eps = float(update_bias), float(eps)
        self.weight = nn.Parameter(torch.empty(3 * hidden_size, input_size + hidden_size, **kw))
        self.norm_weight = nn.Parameter(torch.ones(3 * hidden_size, **kw))
        self.norm_bias = nn.Parameter(torch.zeros(3 * hidden_size, **kw))
        self.backend = check_backend(backend)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default initialisation (what the reference implementations use).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.ones_(self.norm_weight)
        nn.init.zeros_(self.norm_bias)

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        fn = ln_gru_cell if use_fused(self.backend, input) else ln_gru_cell_ref
        return fn(input, hx, self.weight, self.norm_weight, self.norm_bias, self.update_bias,
                  self.eps)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, update_bias={self.update_bias}, "
                f"eps={self.eps}, backend={self.backend!r}")
