"""The DreamerV3 block GRU core as one fused op (danijar/dreamerv3 ``RSSM._core``,
NM512/r2dreamer ``Deter``).

``block_gru_cell(deter, stoch, action, in_params, hidden_params, gru_weight, gru_bias,
blocks, act='silu', eps=1e-4)`` with B batch, D deter, G = ``blocks``, Dg = D / G,
U hidden, S flattened stoch, A action size::

    a  = action / max(1, |action|)               (divisor treated as a constant)
    x0 = act(rms_norm(deter @ W0.T + b0) * s0)    [B, U]
    x1 = act(rms_norm(stoch @ W1.T + b1) * s1)    [B, U]
    x2 = act(rms_norm(a     @ W2.T + b2) * s2)    [B, U]
    x  = cat([x0, x1, x2], -1)                    [B, 3U], broadcast to every block
    h  = cat([deter.view(B, G, Dg), x.expand(B, G, 3U)], -1)      [B, G, Dg + 3U]
    for each hidden layer l:  h = act(rms_norm(blocklinear(h, Wl) + bl) * sl)   [B, D]
    parts = blocklinear(h, Wg) + bg             [B, 3D]; block g = (reset, cand, update)
    r = σ(reset), c = tanh(r ⊙ cand), u = σ(update − 1)
    deter' = u ⊙ c + (1 − u) ⊙ deter

where ``blocklinear(h, W)[:, g] = h[:, g] @ W[g]`` with ``W [G, in/G, out/G]`` (the
einsum ``'...gi,gio->...go'``) and the RMSNorms run over all U (or D) units.

Parameters: ``in_params = [W0 [U, D], b0 [U], s0 [U], W1 [U, S], b1, s1, W2 [U, A], b2,
s2]``; ``hidden_params = [W [G, Dg + 3U, Dg], b [D], s [D]]`` for the first hidden
layer, then ``[W [G, Dg, Dg], b [D], s [D]]`` per further layer; ``gru_weight
[G, Dg, 3Dg]``, ``gru_bias [3D]``. ``dreamer_fast.nn.BlockGRUCell`` owns them.
The fast op is one native call forward and one backward (GEMMs via ATen, epilogues and
gates fused); the x-part of the first hidden layer is one [B, 3U] x [3U, D] GEMM instead
of a broadcast copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dreamer_fast import _extension
from dreamer_fast.ops import _checks
from dreamer_fast.ops.dense import ACTS, _TORCH_ACTS

__all__ = ["block_gru_cell", "block_gru_cell_ref"]

_OP = "block_gru_cell"


def _args(deter, stoch, action, in_params, hidden_params, gru_weight, gru_bias, blocks, act,
          eps):
    deter = _checks.check_float_tensor(_OP, "deter", deter)
    if deter.dim() != 2:
        raise ValueError(f"{_OP}: `deter` must be 2-D [B, D], got {tuple(deter.shape)}")
    B, D = deter.shape
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1 or D % blocks:
        raise ValueError(f"{_OP}: `blocks`={blocks!r} must be a positive int dividing the deter "
                         f"size {D}")
    for name, t in (("stoch", stoch), ("action", action)):
        t = _checks.check_float_tensor(_OP, name, t)
        if t.dim() != 2 or t.shape[0] != B:
            raise ValueError(f"{_OP}: `{name}` must be 2-D [{B}, *] (batch of `deter`), got "
                             f"{tuple(t.shape)}")
        _checks.check_dtype_device(_OP, "deter", deter, name, t)
    if act not in ACTS:
        raise ValueError(f"{_OP}: `act` must be one of {list(ACTS)}, got {act!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{_OP}: `eps` must be a float > 0, got {eps!r}")
    in_params, hidden_params = list(in_params), list(hidden_params)
    if len(in_params) != 9:
        raise ValueError(f"{_OP}: `in_params` must hold 9 tensors (W, b, scale for deter, stoch "
                         f"and action), got {len(in_params)}")
    if not hidden_params or len(hidden_params) % 3:
        raise ValueError(f"{_OP}: `hidden_params` must hold 3 tensors (W, b, scale) per hidden "
                         f"layer, at least one layer, got {len(hidden_params)}")
    W0 = _checks.check_float_tensor(_OP, "in_params[0]", in_params[0])
    if W0.dim() != 2:
        raise ValueError(f"{_OP}: `in_params[0]` must be [U, D], got {tuple(W0.shape)}")
    U, G = W0.shape[0], blocks
    Dg = D // G
    expected = []
    for i, fan_in in enumerate((D, stoch.shape[1], action.shape[1])):
        expected += [(f"in_params[{3 * i}]", (U, fan_in)), (f"in_params[{3 * i + 1}]", (U,)),
                     (f"in_params[{3 * i + 2}]", (U,))]
    for t, (pname, shape) in zip(in_params, expected):
        _check_shape(pname, t, deter, shape)
    for l in range(len(hidden_params) // 3):
        in_g = Dg + 3 * U if l == 0 else Dg
        _check_shape(f"hidden_params[{3 * l}]", hidden_params[3 * l], deter, (G, in_g, Dg))
        _check_shape(f"hidden_params[{3 * l + 1}]", hidden_params[3 * l + 1], deter, (D,))
        _check_shape(f"hidden_params[{3 * l + 2}]", hidden_params[3 * l + 2], deter, (D,))
    _check_shape("gru_weight", gru_weight, deter, (G, Dg, 3 * Dg))
    _check_shape("gru_bias", gru_bias, deter, (3 * D,))
    return in_params, hidden_params, float(eps)


def _check_shape(name, t, like, shape):
    t = _checks.check_float_tensor(_OP, name, t)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{_OP}: `{name}` must have shape {tuple(shape)}, got {tuple(t.shape)}")
    _checks.check_dtype_device(_OP, "deter", like, name, t)


def block_gru_cell(deter: torch.Tensor, stoch: torch.Tensor, action: torch.Tensor,
                   in_params: list[torch.Tensor], hidden_params: list[torch.Tensor],
                   gru_weight: torch.Tensor, gru_bias: torch.Tensor, blocks: int,
                   act: str = "silu", eps: float = 1e-4) -> torch.Tensor:
    """One fused DreamerV3 block-GRU step (see the module docstring). Returns ``[B, D]``."""
    in_params, hidden_params, eps = _args(deter, stoch, action, in_params, hidden_params,
                                          gru_weight, gru_bias, blocks, act, eps)
    _extension.require_device_kernels(_OP, deter.device)
    out, _ = torch.ops.dreamer_fast.block_gru_cell(deter, stoch, action, in_params,
                                                   hidden_params, gru_weight, gru_bias, blocks,
                                                   ACTS[act], eps)
    return out


def block_gru_cell_ref(deter: torch.Tensor, stoch: torch.Tensor, action: torch.Tensor,
                       in_params: list[torch.Tensor], hidden_params: list[torch.Tensor],
                       gru_weight: torch.Tensor, gru_bias: torch.Tensor, blocks: int,
                       act: str = "silu", eps: float = 1e-4) -> torch.Tensor:
    """Reference: the equations above in plain PyTorch, with the explicit broadcast."""
    in_params, hidden_params, eps = _args(deter, stoch, action, in_params, hidden_params,
                                          gru_weight, gru_bias, blocks, act, eps)
    f = _TORCH_ACTS[act]
    B, D = deter.shape
    G = blocks

    def layer(x, W, b, s):
        z = F.linear(x, W, b)
        return f(F.rms_norm(z, (z.shape[-1],), s, eps))

    def blocklinear(h, W):
        return torch.einsum("bgi,gio->bgo", h.reshape(B, G, -1), W).reshape(B, -1)

    a = action / action.abs().clamp(min=1.0).detach()
    xs = [layer(inp, *in_params[3 * i:3 * i + 3]) for i, inp in enumerate((deter, stoch, a))]
    x = torch.cat(xs, -1).unsqueeze(1).expand(B, G, -1)
    h = torch.cat([deter.reshape(B, G, D // G), x], -1).reshape(B, -1)
    for l in range(len(hidden_params) // 3):
        W, b, s = hidden_params[3 * l:3 * l + 3]
        h = f(F.rms_norm(blocklinear(h, W) + b, (D,), s, eps))
    parts = (blocklinear(h, gru_weight) + gru_bias).reshape(B, G, 3, D // G)
    reset, cand, update = (parts[:, :, i].reshape(B, D) for i in range(3))
    reset = torch.sigmoid(reset)
    cand = torch.tanh(reset * cand)
    update = torch.sigmoid(update - 1)
    return update * cand + (1 - update) * deter


def _register() -> None:
    name = "dreamer_fast::block_gru_cell"

    @torch.library.register_fake(name)
    def _(deter, stoch, action, in_params, hidden_params, gru_weight, gru_bias, blocks, act,
          eps):
        B, D = deter.shape
        U, L = in_params[0].shape[0], len(hidden_params) // 3
        acc = torch.float32 if deter.dtype in (torch.float16, torch.bfloat16) else deter.dtype
        stats = lambda: deter.new_empty(B, 2, dtype=acc)  # noqa: E731
        saved = [torch.empty_like(action)]
        for _ in range(3):
            saved += [deter.new_empty(B, U), stats()]
        saved.append(deter.new_empty(B, 3 * U))
        for _ in range(L):
            saved += [deter.new_empty(B, D), deter.new_empty(B, D), stats()]
        saved.append(deter.new_empty(B, 3 * D))
        return deter.new_empty(B, D), saved

    @torch.library.register_fake(name + "_backward")
    def _(grad_deter, saved, deter, stoch, action, in_params, hidden_params, gru_weight,
          gru_bias, blocks, act, eps):
        return (torch.empty_like(deter), torch.empty_like(stoch), torch.empty_like(action),
                [torch.empty_like(p) for p in in_params],
                [torch.empty_like(p) for p in hidden_params], torch.empty_like(gru_weight),
                torch.empty_like(gru_bias))

    def setup(ctx, inputs, output):
        deter, stoch, action, in_params, hidden_params, gru_weight, gru_bias, *rest = inputs
        _, saved = output
        ctx.mark_non_differentiable(*saved)
        ctx.rest = rest
        ctx.n_in, ctx.n_hidden, ctx.n_saved = len(in_params), len(hidden_params), len(saved)
        ctx.save_for_backward(*saved, deter, stoch, action, *in_params, *hidden_params,
                              gru_weight, gru_bias)

    def backward(ctx, grad_deter, _grad_saved):
        t = list(ctx.saved_tensors)
        saved, t = t[:ctx.n_saved], t[ctx.n_saved:]
        deter, stoch, action, t = t[0], t[1], t[2], t[3:]
        in_params, t = t[:ctx.n_in], t[ctx.n_in:]
        hidden_params, (gru_weight, gru_bias) = t[:ctx.n_hidden], t[ctx.n_hidden:]
        d = torch.ops.dreamer_fast.block_gru_cell_backward(
            grad_deter, saved, deter, stoch, action, in_params, hidden_params, gru_weight,
            gru_bias, *ctx.rest)
        return (*d, None, None, None)

    torch.library.register_autograd(name, backward, setup_context=setup)


if _extension.has_extension():
    _register()
