"""Dense layers and MLPs on the fused ``linear_norm_act`` op."""

from __future__ import annotations

import math

import torch
from torch import nn

from dreamer_fast.ops._dispatch import check_backend, choose
from dreamer_fast.ops.dense import ACTS, NORMS, linear_norm_act, linear_norm_act_ref
from dreamer_fast.ops.rssm_spec import DenseSpec


class Dense(nn.Module):
    """``act(norm(x W^T + b))``: ``x [..., in_features]`` -> ``[..., out_features]``.

    ``norm`` in {'none', 'layer', 'rms'} (with a learnable scale, and a shift for
    'layer'), ``act`` in {'none', 'silu', 'elu', 'tanh', 'gelu', 'sigmoid'}. With a norm,
    the linear bias is dropped by default (the norm's shift or the scale make it redundant),
    as in the Dreamer reference implementations.
    """

    def __init__(self, in_features: int, out_features: int, norm: str = "none",
                 act: str = "none", bias: bool | None = None, eps: float = 1e-3, device=None,
                 dtype=None, backend: str = "auto") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"Dense: `norm` must be one of {list(NORMS)}, got {norm!r}")
        if act not in ACTS:
            raise ValueError(f"Dense: `act` must be one of {list(ACTS)}, got {act!r}")
        kw = {"device": device, "dtype": dtype}
        bias = (norm == "none") if bias is None else bias
        self.in_features, self.out_features = in_features, out_features
        self.norm, self.act, self.eps = norm, act, float(eps)
        self.backend = check_backend(backend)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.norm_weight = (nn.Parameter(torch.ones(out_features, **kw)) if norm != "none"
                            else None)
        self.norm_bias = (nn.Parameter(torch.zeros(out_features, **kw)) if norm == "layer"
                          else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = choose(self.backend, x, linear_norm_act, linear_norm_act_ref)
        return fn(x, self.weight, self.bias, self.norm_weight, self.norm_bias, self.norm,
                  self.act, self.eps)

    def spec(self) -> DenseSpec:
        """The layer's structure, for the ops that take flat parameter lists."""
        return DenseSpec(self.bias is not None, self.norm, self.act)

    def spec_params(self) -> list[torch.Tensor]:
        """``weight``, then ``bias``, ``norm_weight``, ``norm_bias`` where present (the
        order of :meth:`DenseSpec.tensor_names`)."""
        return [self.weight] + [t for t in (self.bias, self.norm_weight, self.norm_bias)
                                if t is not None]

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, norm={self.norm!r}, act={self.act!r}, "
                f"bias={self.bias is not None}")


class MLP(nn.Sequential):
    """``layers`` hidden :class:`Dense` layers of width ``units`` (norm + act), then an
    optional linear output layer of size ``out`` (no norm, no act)."""

    def __init__(self, in_features: int, units: int, layers: int, out: int | None = None,
                 norm: str = "layer", act: str = "silu", eps: float = 1e-3, device=None,
                 dtype=None, backend: str = "auto") -> None:
        mods: list[nn.Module] = []
        size = in_features
        for _ in range(layers):
            mods.append(Dense(size, units, norm, act, eps=eps, device=device, dtype=dtype,
                              backend=backend))
            size = units
        if out is not None:
            mods.append(Dense(size, out, device=device, dtype=dtype, backend=backend))
        super().__init__(*mods)
        self.out_features = out if out is not None else size


def shared_eps(owner: str, layers) -> float:
    """The one epsilon of the normalised layers among ``layers`` (Dense modules), or 1e-3
    when none is normalised; a ValueError if they differ (the specs hold one)."""
    eps = {d.eps for d in layers if d.norm != "none"}
    if len(eps) > 1:
        raise ValueError(f"{owner}: all normalised dense layers must share one eps, got "
                         f"{sorted(eps)}")
    return eps.pop() if eps else 1e-3
