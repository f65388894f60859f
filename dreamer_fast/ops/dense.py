"""A dense layer with a fused normalisation + activation epilogue.

``linear_norm_act(input, weight, bias=None, norm_weight=None, norm_bias=None,
norm='none', act='none', eps=1e-3)`` computes ``act(norm(input @ weight.T + bias))``:

* ``input [..., I]``, ``weight [N, I]``, ``bias``/``norm_weight``/``norm_bias`` ``[N]``
* ``norm='layer'``: ``(z − mean) / sqrt(var + eps) · norm_weight + norm_bias``
  (``torch.nn.functional.layer_norm``); ``norm='rms'``: ``z / sqrt(mean(z²) + eps) ·
  norm_weight`` (``torch.nn.functional.rms_norm``); ``norm='none'``.
* ``act``: ``none``, ``silu``, ``elu``, ``tanh``, ``gelu`` (exact erf form, as
  ``torch.nn.GELU()``), ``sigmoid``.

This is every hidden layer of Dreamer's MLPs (encoder, heads, RSSM input and prior
layers). The GEMM runs through ``csrc/gemm.h`` (cuBLAS, or oneDNN for float32 on the
CPU); the epilogue is one row kernel forward and one backward. Differentiable in every
tensor argument.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dreamer_fast import _extension
from dreamer_fast.ops import _checks

__all__ = ["linear_norm_act", "linear_norm_act_ref", "NORMS", "ACTS"]

NORMS = {"none": 0, "layer": 1, "rms": 2}
ACTS = {"none": 0, "silu": 1, "elu": 2, "tanh": 3, "gelu": 4, "sigmoid": 5}

_TORCH_ACTS = {
    "none": lambda x: x, "silu": F.silu, "elu": F.elu, "tanh": torch.tanh,
    "gelu": F.gelu, "sigmoid": torch.sigmoid,
}


def _args(input, weight, bias, norm_weight, norm_bias, norm, act, eps):
    op = "linear_norm_act"
    input = _checks.check_float_tensor(op, "input", input)
    if input.dim() < 1:
        raise ValueError(f"{op}: `input` must be at least 1-D [..., I], got a 0-dim tensor")
    weight = _checks.check_float_tensor(op, "weight", weight)
    if weight.dim() != 2 or weight.shape[1] != input.shape[-1]:
        raise ValueError(f"{op}: `weight` must have shape [N, {input.shape[-1]}] (I from "
                         f"`input`), got {tuple(weight.shape)}")
    _checks.check_dtype_device(op, "input", input, "weight", weight)
    if norm not in NORMS:
        raise ValueError(f"{op}: `norm` must be one of {list(NORMS)}, got {norm!r}")
    if act not in ACTS:
        raise ValueError(f"{op}: `act` must be one of {list(ACTS)}, got {act!r}")
    N = weight.shape[0]
    for name, t in (("bias", bias), ("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        if t is not None:
            t = _checks.check_float_tensor(op, name, t)
            if tuple(t.shape) != (N,):
                raise ValueError(f"{op}: `{name}` must have shape ({N},), got {tuple(t.shape)}")
            _checks.check_dtype_device(op, "input", input, name, t)
    if norm == "none" and (norm_weight is not None or norm_bias is not None):
        raise ValueError(f"{op}: `norm_weight`/`norm_bias` given but `norm` is 'none'")
    if norm == "rms" and norm_bias is not None:
        raise ValueError(f"{op}: `norm_bias` given but RMSNorm has no bias (`norm`='rms')")
    if norm != "none" and (isinstance(eps, bool) or not isinstance(eps, (int, float))
                           or not eps > 0):
        raise ValueError(f"{op}: `eps` must be a float > 0, got {eps!r}")
    return input, float(eps)


def linear_norm_act(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    norm_weight: torch.Tensor | None = None,
                    norm_bias: torch.Tensor | None = None, norm: str = "none",
                    act: str = "none", eps: float = 1e-3) -> torch.Tensor:
    """``act(norm(input @ weight.T + bias))`` with a fused epilogue. Returns ``[..., N]``."""
    input, eps = _args(input, weight, bias, norm_weight, norm_bias, norm, act, eps)
    _extension.require_device_kernels("linear_norm_act", input.device)
    out, _, _ = torch.ops.dreamer_fast.linear_norm_act(
        input.reshape(-1, input.shape[-1]), weight, bias, norm_weight, norm_bias, NORMS[norm],
        ACTS[act], eps)
    return out.reshape(*input.shape[:-1], weight.shape[0])


def linear_norm_act_ref(input: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None = None,
                        norm_weight: torch.Tensor | None = None,
                        norm_bias: torch.Tensor | None = None, norm: str = "none",
                        act: str = "none", eps: float = 1e-3) -> torch.Tensor:
    """Reference: ``F.linear`` → ``F.layer_norm`` / ``F.rms_norm`` → activation."""
    input, eps = _args(input, weight, bias, norm_weight, norm_bias, norm, act, eps)
    z = F.linear(input, weight, bias)
    if norm == "layer":
        z = F.layer_norm(z, (z.shape[-1],), norm_weight, norm_bias, eps)
    elif norm == "rms":
        z = F.rms_norm(z, (z.shape[-1],), norm_weight, eps)
    return _TORCH_ACTS[act](z)


def _register() -> None:
    acc_dtype = {torch.float16: torch.float32, torch.bfloat16: torch.float32}

    def _check(ok, msg):
        torch._check(ok, lambda: f"linear_norm_act: {msg}")

    def _fake_checks(input, weight, bias, norm_weight, norm_bias):
        _check(input.dim() == 2, f"`input` must be 2-D [B, I], got {tuple(input.shape)}")
        _check(weight.dim() == 2 and weight.shape[1] == input.shape[1],
               f"`weight` must have shape [N, {input.shape[1]}], got {tuple(weight.shape)}")
        for name, t in (("weight", weight), ("bias", bias), ("norm_weight", norm_weight),
                        ("norm_bias", norm_bias)):
            if t is None:
                continue
            if name != "weight":
                _check(tuple(t.shape) == (weight.shape[0],),
                       f"`{name}` must have shape ({weight.shape[0]},), got {tuple(t.shape)}")
            _check(t.dtype == input.dtype, f"`{name}` has dtype {t.dtype}, expected {input.dtype}")
            _check(t.device == input.device, f"`{name}` is on {t.device}, expected {input.device}")

    @torch.library.register_fake("dreamer_fast::linear_norm_act")
    def _(input, weight, bias, norm_weight, norm_bias, norm, act, eps):
        _fake_checks(input, weight, bias, norm_weight, norm_bias)
        B, N = input.shape[0], weight.shape[0]
        stats = input.new_empty(B, 2, dtype=acc_dtype.get(input.dtype, input.dtype))
        return input.new_empty(B, N), input.new_empty(B, N), stats

    @torch.library.register_fake("dreamer_fast::linear_norm_act_backward")
    def _(grad_out, z, stats, input, weight, bias, norm_weight, norm_bias, norm, act,
          need_input=True, need_params=True):
        _fake_checks(input, weight, bias, norm_weight, norm_bias)
        N = weight.shape[0]
        none = lambda: input.new_empty(0)  # noqa: E731  (a fresh one each: no aliasing)
        dx = torch.empty_like(input) if need_input else none()
        if not need_params:
            return dx, none(), none(), none(), none()
        opt = lambda t, n: input.new_empty(n) if t is not None else none()  # noqa: E731
        return (dx, torch.empty_like(weight), opt(bias, N), opt(norm_weight, N),
                opt(norm_bias, N))

    def setup(ctx, inputs, output):
        input, weight, bias, norm_weight, norm_bias, norm, act, _eps = inputs
        _, z, stats = output
        ctx.mark_non_differentiable(z, stats)
        ctx.codes = (norm, act)
        ctx.has = (bias is not None, norm_weight is not None, norm_bias is not None)
        ctx.save_for_backward(z, stats, input, weight, bias, norm_weight, norm_bias)

    def backward(ctx, grad_out, _gz, _gstats):
        z, stats, input, weight, bias, norm_weight, norm_bias = ctx.saved_tensors
        # Only what the graph needs: no dx for an input that needs no gradient (the
        # observation into an encoder, a detached feature into a critic), no parameter
        # gradients for a layer whose parameters were constants when it ran (a frozen
        # head the actor's gradient only passes through).
        need = ctx.needs_input_grad
        need_input, need_params = bool(need[0]), any(need[1:5])
        dx, dw, db, dnw, dnb = torch.ops.dreamer_fast.linear_norm_act_backward(
            grad_out, z, stats, input, weight, bias, norm_weight, norm_bias, *ctx.codes,
            need_input, need_params)
        has_b, has_nw, has_nb = ctx.has
        p = need_params
        return (dx if need_input else None, dw if p else None,
                db if p and has_b else None, dnw if p and has_nw else None,
                dnb if p and has_nb else None, None, None, None)

    torch.library.register_autograd("dreamer_fast::linear_norm_act", backward,
                                    setup_context=setup)


if _extension.has_extension():
    _register()
