"""The recurrent cells of the RSSM: fused native ops and their PyTorch references.

``gru_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None)``
    Exactly ``torch.nn.GRUCell`` (DreamerV1, TorchRL, pydreamer), same weight layout
    (``weight_ih [3H, I]``, ``weight_hh [3H, H]``, gate order r, z, n)::

        gi = x W_ih^T + b_ih,  gh = h W_hh^T + b_hh
        r = σ(gi_r + gh_r),  z = σ(gi_z + gh_z),  n = tanh(gi_n + r ⊙ gh_n)
        h' = (1 − z) ⊙ n + z ⊙ h

``ln_gru_cell(input, hx, weight, norm_weight, norm_bias, update_bias=-1.0, eps=1e-3, state_first=False)``
    The DreamerV2 / NM512 dreamerv3-torch / sheeprl cell (``weight [3H, I + H]``, no
    linear bias)::

        parts = LayerNorm(cat([x, h], -1) @ weight^T; norm_weight, norm_bias, eps)
        reset, cand, update = parts.chunk(3, -1)
        r = σ(reset),  c = tanh(r ⊙ cand),  u = σ(update + update_bias)
        h' = u ⊙ c + (1 − u) ⊙ h

    ``norm_weight = norm_bias = None``: no LayerNorm, ``parts = cat([x, h], -1) @
    weight^T`` (dreamerv3-torch's ``GRUCell(norm=False)``; both or neither must be
    given). ``state_first=True``: the weight's columns take ``cat([h, x], -1)``
    (sheeprl's ``LayerNormGRUCell``, whose RSSM passes ``update_bias=-1``).

``block_gru_cell(deter, stoch, action, in_params, hidden_params, gru_weight, gru_bias,
blocks, act='silu', eps=1e-4)``
    The DreamerV3 block GRU core (danijar/dreamerv3 ``RSSM._core``, NM512/r2dreamer
    ``Deter``), with B batch, D deter, G = ``blocks``, Dg = D / G, U hidden, S the
    flattened stoch, A actions::

        a  = action / max(1, |action|)               (divisor treated as a constant)
        x0 = act(rms_norm(deter @ W0.T + b0) * s0)    [B, U]
        x1 = act(rms_norm(stoch @ W1.T + b1) * s1)    [B, U]
        x2 = act(rms_norm(a     @ W2.T + b2) * s2)    [B, U]
        x  = cat([x0, x1, x2], -1)                    [B, 3U], broadcast to every block
        h  = cat([deter.view(B, G, Dg), x.expand(B, G, 3U)], -1)      [B, G, Dg + 3U]
        for each hidden layer l:  h = act(rms_norm(blocklinear(h, Wl) + bl) * sl)  [B, D]
        parts = blocklinear(h, Wg) + bg             [B, 3D]; block g = (reset, cand, update)
        r = σ(reset), c = tanh(r ⊙ cand), u = σ(update − 1)
        deter' = u ⊙ c + (1 − u) ⊙ deter

    where ``blocklinear(h, W)[:, g] = h[:, g] @ W[g]`` with ``W [G, in/G, out/G]`` (the
    einsum ``'...gi,gio->...go'``) and the RMSNorms run over all U (or D) units.
    Parameters: ``in_params = [W0 [U, D], b0 [U], s0 [U], W1 [U, S], b1, s1, W2 [U, A],
    b2, s2]``; ``hidden_params = [W [G, Dg + 3U, Dg], b [D], s [D]]`` for the first
    hidden layer, then ``[W [G, Dg, Dg], b [D], s [D]]`` per further layer;
    ``gru_weight [G, Dg, 3Dg]``, ``gru_bias [3D]`` (``dreamer_fast.nn.BlockGRUCell``
    owns them). ``deter``, ``stoch``, ``action`` are 2-D. The fast op computes the
    x-part of the first hidden layer as one ``[B, 3U] x [3U, D]`` GEMM instead of the
    broadcast copy.

For the two GRUs ``input`` is ``[..., I]`` and ``hx`` ``[..., H]`` with the same leading
(batch) dims, or ``hx=None`` for zeros. The fast ops run the GEMMs through
``csrc/gemm.h`` (cuBLAS on CUDA, oneDNN for float32 on the CPU) and everything else in
fused kernels, one call forward and one backward. Differentiable in every tensor
argument.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dreamer_fast import _extension
from dreamer_fast.ops import _checks
from dreamer_fast.ops.dense import ACTS, _TORCH_ACTS

__all__ = ["gru_cell", "gru_cell_ref", "ln_gru_cell", "ln_gru_cell_ref", "block_gru_cell",
           "block_gru_cell_ref"]


# --------------------------------------------------------------------------------------
# Argument checks shared by fast and reference
# --------------------------------------------------------------------------------------

def _check_state(op: str, input, hx) -> tuple[torch.Tensor, torch.Tensor | None]:
    input = _checks.check_float_tensor(op, "input", input)
    if input.dim() < 1:
        raise ValueError(f"{op}: `input` must be at least 1-D [..., I], got a 0-dim tensor")
    if hx is not None:
        hx = _checks.check_float_tensor(op, "hx", hx)
        _checks.check_dtype_device(op, "input", input, "hx", hx)
        if hx.dim() != input.dim() or hx.shape[:-1] != input.shape[:-1]:
            raise ValueError(
                f"{op}: `hx` must have the batch shape of `input` {tuple(input.shape[:-1])} "
                f"plus a hidden size, got {tuple(hx.shape)}")
    return input, hx


def _check_param(op: str, name: str, x, input: torch.Tensor, shape: tuple[int, ...],
                 what: str) -> torch.Tensor:
    x = _checks.check_float_tensor(op, name, x)
    if tuple(x.shape) != shape:
        raise ValueError(f"{op}: `{name}` must have shape {shape} ({what}), "
                         f"got {tuple(x.shape)}")
    _checks.check_dtype_device(op, "input", input, name, x)
    return x


def _gru_args(input, hx, weight_ih, weight_hh, bias_ih, bias_hh):
    op = "gru_cell"
    input, hx = _check_state(op, input, hx)
    weight_hh = _checks.check_float_tensor(op, "weight_hh", weight_hh)
    if weight_hh.dim() != 2 or weight_hh.shape[0] != 3 * weight_hh.shape[1]:
        raise ValueError(f"{op}: `weight_hh` must have shape [3H, H], got {tuple(weight_hh.shape)}")
    H, I = weight_hh.shape[1], input.shape[-1]
    _check_param(op, "weight_hh", weight_hh, input, (3 * H, H), "3H x H")
    _check_param(op, "weight_ih", weight_ih, input, (3 * H, I),
                 f"3H x I with H={H} from weight_hh and I={I} from input")
    if bias_ih is not None:
        _check_param(op, "bias_ih", bias_ih, input, (3 * H,), f"3H with H={H}")
    if bias_hh is not None:
        _check_param(op, "bias_hh", bias_hh, input, (3 * H,), f"3H with H={H}")
    if hx is None:
        hx = input.new_zeros(*input.shape[:-1], H)
    elif hx.shape[-1] != H:
        raise ValueError(f"{op}: `hx` has hidden size {hx.shape[-1]} but `weight_hh` is for "
                         f"H={H}")
    return input, hx


def _ln_gru_args(input, hx, weight, norm_weight, norm_bias, update_bias, eps, state_first):
    op = "ln_gru_cell"
    input, hx = _check_state(op, input, hx)
    weight = _checks.check_float_tensor(op, "weight", weight)
    if weight.dim() != 2 or weight.shape[0] % 3 != 0:
        raise ValueError(f"{op}: `weight` must have shape [3H, I + H], got {tuple(weight.shape)}")
    H, I = weight.shape[0] // 3, input.shape[-1]
    _check_param(op, "weight", weight, input, (3 * H, I + H),
                 f"3H x (I + H) with H={H} from weight.shape[0] and I={I} from input")
    if (norm_weight is None) != (norm_bias is None):
        raise ValueError(f"{op}: `norm_weight` and `norm_bias` must both be given (the "
                         "LayerNorm) or both be None (no norm)")
    if norm_weight is not None:
        _check_param(op, "norm_weight", norm_weight, input, (3 * H,), f"3H with H={H}")
        _check_param(op, "norm_bias", norm_bias, input, (3 * H,), f"3H with H={H}")
    if not isinstance(state_first, bool):
        raise TypeError(f"{op}: `state_first` must be a bool, got {type(state_first).__name__}")
    if isinstance(update_bias, bool) or not isinstance(update_bias, (int, float)):
        raise TypeError(f"{op}: `update_bias` must be a float, got {type(update_bias).__name__}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{op}: `eps` must be a float > 0, got {eps!r}")
    if hx is None:
        hx = input.new_zeros(*input.shape[:-1], H)
    elif hx.shape[-1] != H:
        raise ValueError(f"{op}: `hx` has hidden size {hx.shape[-1]} but `weight` is for H={H}")
    return input, hx, float(update_bias), float(eps)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


# --------------------------------------------------------------------------------------
# Fast ops
# --------------------------------------------------------------------------------------

def gru_cell(input: torch.Tensor, hx: torch.Tensor | None, weight_ih: torch.Tensor,
             weight_hh: torch.Tensor, bias_ih: torch.Tensor | None = None,
             bias_hh: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.nn.GRUCell`` math, fused (see the module docstring). Returns ``[..., H]``."""
    input, hx = _gru_args(input, hx, weight_ih, weight_hh, bias_ih, bias_hh)
    _extension.require_device_kernels("gru_cell", input.device)
    hy, _ = torch.ops.dreamer_fast.gru_cell(_flat(input), _flat(hx), weight_ih, weight_hh,
                                            bias_ih, bias_hh)
    return hy.reshape(hx.shape)


def ln_gru_cell(input: torch.Tensor, hx: torch.Tensor | None, weight: torch.Tensor,
                norm_weight: torch.Tensor | None, norm_bias: torch.Tensor | None,
                update_bias: float = -1.0, eps: float = 1e-3,
                state_first: bool = False) -> torch.Tensor:
    """The LayerNorm GRU of DreamerV2, fused (see the module docstring)."""
    input, hx, update_bias, eps = _ln_gru_args(input, hx, weight, norm_weight, norm_bias,
                                               update_bias, eps, state_first)
    _extension.require_device_kernels("ln_gru_cell", input.device)
    hy, _, _ = torch.ops.dreamer_fast.ln_gru_cell(_flat(input), _flat(hx), weight, norm_weight,
                                                  norm_bias, update_bias, eps, state_first)
    return hy.reshape(hx.shape)


# --------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------

def gru_cell_ref(input: torch.Tensor, hx: torch.Tensor | None, weight_ih: torch.Tensor,
                 weight_hh: torch.Tensor, bias_ih: torch.Tensor | None = None,
                 bias_hh: torch.Tensor | None = None) -> torch.Tensor:
    """Reference ``torch.nn.GRUCell`` math in plain PyTorch ops."""
    input, hx = _gru_args(input, hx, weight_ih, weight_hh, bias_ih, bias_hh)
    i_r, i_z, i_n = F.linear(input, weight_ih, bias_ih).chunk(3, -1)
    h_r, h_z, h_n = F.linear(hx, weight_hh, bias_hh).chunk(3, -1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * hx


def ln_gru_cell_ref(input: torch.Tensor, hx: torch.Tensor | None, weight: torch.Tensor,
                    norm_weight: torch.Tensor | None, norm_bias: torch.Tensor | None,
                    update_bias: float = -1.0, eps: float = 1e-3,
                    state_first: bool = False) -> torch.Tensor:
    """Reference LayerNorm GRU in plain PyTorch ops."""
    input, hx, update_bias, eps = _ln_gru_args(input, hx, weight, norm_weight, norm_bias,
                                               update_bias, eps, state_first)
    parts = F.linear(torch.cat([hx, input] if state_first else [input, hx], -1), weight)
    if norm_weight is not None:
        parts = F.layer_norm(parts, (parts.shape[-1],), norm_weight, norm_bias, eps)
    reset, cand, update = parts.chunk(3, -1)
    reset = torch.sigmoid(reset)
    cand = torch.tanh(reset * cand)
    update = torch.sigmoid(update + update_bias)
    return update * cand + (1 - update) * hx


# --------------------------------------------------------------------------------------
# torch.library registration: fake kernels (with the C++ checks) and autograd
# --------------------------------------------------------------------------------------

def _fake_check(op: str, ok, message: str) -> None:
    torch._check(ok, lambda: f"{op}: {message}")


def _fake_check_like(op: str, name: str, x: torch.Tensor, like: torch.Tensor,
                     shape: tuple) -> None:
    _fake_check(op, tuple(x.shape) == tuple(shape),
                f"`{name}` must have shape {tuple(shape)}, got {tuple(x.shape)}")
    _fake_check(op, x.dtype == like.dtype, f"`{name}` has dtype {x.dtype}, expected {like.dtype}")
    _fake_check(op, x.device == like.device,
                f"`{name}` is on {x.device}, expected {like.device}")


def _fake_check_state(op: str, input: torch.Tensor, hx: torch.Tensor) -> tuple:
    _fake_check(op, input.dim() == 2, f"`input` must be 2-D [B, I], got {tuple(input.shape)}")
    _fake_check(op, input.is_floating_point(), f"`input` must be floating-point, got {input.dtype}")
    _fake_check(op, hx.dim() == 2, f"`hx` must be 2-D [B, H], got {tuple(hx.shape)}")
    B, I, H = input.shape[0], input.shape[1], hx.shape[1]
    _fake_check_like(op, "hx", hx, input, (B, H))
    return B, I, H


def _register() -> None:
    lib = "dreamer_fast::"
    acc_dtype = {torch.float16: torch.float32, torch.bfloat16: torch.float32}

    @torch.library.register_fake(lib + "gru_cell")
    def _(input, hx, weight_ih, weight_hh, bias_ih, bias_hh):
        op = "gru_cell"
        B, I, H = _fake_check_state(op, input, hx)
        _fake_check_like(op, "weight_ih", weight_ih, input, (3 * H, I))
        _fake_check_like(op, "weight_hh", weight_hh, input, (3 * H, H))
        for name, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
            if b is not None:
                _fake_check_like(op, name, b, input, (3 * H,))
        return input.new_empty(B, H), input.new_empty(B, 4 * H)

    @torch.library.register_fake(lib + "gru_cell_backward")
    def _(grad_hy, workspace, input, hx, weight_ih, weight_hh):
        op = "gru_cell_backward"
        B, I, H = _fake_check_state(op, input, hx)
        _fake_check_like(op, "grad_hy", grad_hy, input, (B, H))
        _fake_check_like(op, "workspace", workspace, input, (B, 4 * H))
        _fake_check_like(op, "weight_ih", weight_ih, input, (3 * H, I))
        _fake_check_like(op, "weight_hh", weight_hh, input, (3 * H, H))
        return (input.new_empty(B, I), input.new_empty(B, H), input.new_empty(3 * H, I),
                input.new_empty(3 * H, H), input.new_empty(3 * H), input.new_empty(3 * H))

    def _fake_ln_checks(op, input, hx, weight, norm_weight, norm_bias):
        """Returns B, I, H and whether the cell has its LayerNorm."""
        B, I, H = _fake_check_state(op, input, hx)
        _fake_check_like(op, "weight", weight, input, (3 * H, I + H))
        norm = norm_weight is not None
        _fake_check(op, norm == (norm_bias is not None),
                    "`norm_weight` and `norm_bias` must both be given (the LayerNorm) or both "
                    "be None (no norm)")
        if norm:
            _fake_check_like(op, "norm_weight", norm_weight, input, (3 * H,))
            _fake_check_like(op, "norm_bias", norm_bias, input, (3 * H,))
        return B, I, H, norm

    @torch.library.register_fake(lib + "ln_gru_cell")
    def _(input, hx, weight, norm_weight, norm_bias, update_bias, eps, state_first=False):
        op = "ln_gru_cell"
        B, I, H, norm = _fake_ln_checks(op, input, hx, weight, norm_weight, norm_bias)
        _fake_check(op, eps > 0, f"`eps` must be > 0, got {eps}")
        stats = input.new_empty(B, 2 if norm else 0,
                                dtype=acc_dtype.get(input.dtype, input.dtype))
        return input.new_empty(B, H), input.new_empty(B, 3 * H), stats

    @torch.library.register_fake(lib + "ln_gru_cell_backward")
    def _(grad_hy, parts, stats, input, hx, weight, norm_weight, norm_bias, update_bias,
          state_first=False):
        op = "ln_gru_cell_backward"
        B, I, H, norm = _fake_ln_checks(op, input, hx, weight, norm_weight, norm_bias)
        _fake_check_like(op, "grad_hy", grad_hy, input, (B, H))
        _fake_check_like(op, "parts", parts, input, (B, 3 * H))
        n_stats = 2 if norm else 0
        _fake_check(op, tuple(stats.shape) == (B, n_stats), f"`stats` must be [{B}, {n_stats}]")
        n_norm = 3 * H if norm else 0  # without the norm: empty [0] placeholders
        return (input.new_empty(B, I), input.new_empty(B, H), input.new_empty(3 * H, I + H),
                input.new_empty(n_norm), input.new_empty(n_norm))

    def gru_setup(ctx, inputs, output):
        input, hx, weight_ih, weight_hh, bias_ih, bias_hh = inputs
        _, workspace = output
        ctx.mark_non_differentiable(workspace)
        ctx.has_bias = (bias_ih is not None, bias_hh is not None)
        ctx.save_for_backward(workspace, input, hx, weight_ih, weight_hh)

    def gru_backward(ctx, grad_hy, _grad_workspace):
        workspace, input, hx, weight_ih, weight_hh = ctx.saved_tensors
        dx, dh, dw_ih, dw_hh, db_ih, db_hh = torch.ops.dreamer_fast.gru_cell_backward(
            grad_hy, workspace, input, hx, weight_ih, weight_hh)
        return (dx, dh, dw_ih, dw_hh, db_ih if ctx.has_bias[0] else None,
                db_hh if ctx.has_bias[1] else None)

    torch.library.register_autograd(lib + "gru_cell", gru_backward, setup_context=gru_setup)

    def ln_gru_setup(ctx, inputs, output):
        input, hx, weight, norm_weight, norm_bias, update_bias, _eps, state_first = inputs
        _, parts, stats = output
        ctx.mark_non_differentiable(parts, stats)
        ctx.update_bias, ctx.state_first = update_bias, state_first
        ctx.norm = norm_weight is not None
        ctx.save_for_backward(parts, stats, input, hx, weight, norm_weight, norm_bias)

    def ln_gru_backward(ctx, grad_hy, _grad_parts, _grad_stats):
        parts, stats, input, hx, weight, norm_weight, norm_bias = ctx.saved_tensors
        dx, dh, dweight, dgamma, dbeta = torch.ops.dreamer_fast.ln_gru_cell_backward(
            grad_hy, parts, stats, input, hx, weight, norm_weight, norm_bias, ctx.update_bias,
            ctx.state_first)
        if not ctx.norm:
            dgamma = dbeta = None
        return dx, dh, dweight, dgamma, dbeta, None, None, None

    torch.library.register_autograd(lib + "ln_gru_cell", ln_gru_backward,
                                    setup_context=ln_gru_setup)


# --------------------------------------------------------------------------------------
# The DreamerV3 block GRU core
# --------------------------------------------------------------------------------------

_BLOCK = "block_gru_cell"


def _block_gru_args(deter, stoch, action, in_params, hidden_params, gru_weight, gru_bias,
                    blocks, act, eps):
    deter = _checks.check_float_tensor(_BLOCK, "deter", deter)
    if deter.dim() != 2:
        raise ValueError(f"{_BLOCK}: `deter` must be 2-D [B, D], got {tuple(deter.shape)}")
    B, D = deter.shape
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1 or D % blocks:
        raise ValueError(f"{_BLOCK}: `blocks`={blocks!r} must be a positive int dividing the "
                         f"deter size {D}")
    for name, t in (("stoch", stoch), ("action", action)):
        t = _checks.check_float_tensor(_BLOCK, name, t)
        if t.dim() != 2 or t.shape[0] != B:
            raise ValueError(f"{_BLOCK}: `{name}` must be 2-D [{B}, *] (batch of `deter`), "
                             f"got {tuple(t.shape)}")
        _checks.check_dtype_device(_BLOCK, "deter", deter, name, t)
    if act not in ACTS:
        raise ValueError(f"{_BLOCK}: `act` must be one of {list(ACTS)}, got {act!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{_BLOCK}: `eps` must be a float > 0, got {eps!r}")
    in_params, hidden_params = list(in_params), list(hidden_params)
    if len(in_params) != 9:
        raise ValueError(f"{_BLOCK}: `in_params` must hold 9 tensors (W, b, scale for deter, "
                         f"stoch and action), got {len(in_params)}")
    if not hidden_params or len(hidden_params) % 3:
        raise ValueError(f"{_BLOCK}: `hidden_params` must hold 3 tensors (W, b, scale) per "
                         f"hidden layer, at least one layer, got {len(hidden_params)}")
    W0 = _checks.check_float_tensor(_BLOCK, "in_params[0]", in_params[0])
    if W0.dim() != 2:
        raise ValueError(f"{_BLOCK}: `in_params[0]` must be [U, D], got {tuple(W0.shape)}")
    U, G = W0.shape[0], blocks
    Dg = D // G
    expected = []
    for i, fan_in in enumerate((D, stoch.shape[1], action.shape[1])):
        expected += [(f"in_params[{3 * i}]", (U, fan_in)), (f"in_params[{3 * i + 1}]", (U,)),
                     (f"in_params[{3 * i + 2}]", (U,))]
    for t, (pname, shape) in zip(in_params, expected):
        _block_check_shape(pname, t, deter, shape)
    for l in range(len(hidden_params) // 3):
        in_g = Dg + 3 * U if l == 0 else Dg
        for j, shape in enumerate(((G, in_g, Dg), (D,), (D,))):
            _block_check_shape(f"hidden_params[{3 * l + j}]", hidden_params[3 * l + j], deter,
                               shape)
    _block_check_shape("gru_weight", gru_weight, deter, (G, Dg, 3 * Dg))
    _block_check_shape("gru_bias", gru_bias, deter, (3 * D,))
    return in_params, hidden_params, float(eps)


def _block_check_shape(name, t, like, shape):
    t = _checks.check_float_tensor(_BLOCK, name, t)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{_BLOCK}: `{name}` must have shape {tuple(shape)}, got "
                         f"{tuple(t.shape)}")
    _checks.check_dtype_device(_BLOCK, "deter", like, name, t)


def block_gru_cell(deter: torch.Tensor, stoch: torch.Tensor, action: torch.Tensor,
                   in_params: list[torch.Tensor], hidden_params: list[torch.Tensor],
                   gru_weight: torch.Tensor, gru_bias: torch.Tensor, blocks: int,
                   act: str = "silu", eps: float = 1e-4) -> torch.Tensor:
    """One fused DreamerV3 block-GRU step (see the module docstring). Returns ``[B, D]``."""
    in_params, hidden_params, eps = _block_gru_args(deter, stoch, action, in_params,
                                                    hidden_params, gru_weight, gru_bias, blocks,
                                                    act, eps)
    _extension.require_device_kernels(_BLOCK, deter.device)
    out, _ = torch.ops.dreamer_fast.block_gru_cell(deter, stoch, action, in_params,
                                                   hidden_params, gru_weight, gru_bias, blocks,
                                                   ACTS[act], eps)
    return out


def block_gru_cell_ref(deter: torch.Tensor, stoch: torch.Tensor, action: torch.Tensor,
                       in_params: list[torch.Tensor], hidden_params: list[torch.Tensor],
                       gru_weight: torch.Tensor, gru_bias: torch.Tensor, blocks: int,
                       act: str = "silu", eps: float = 1e-4) -> torch.Tensor:
    """Reference: the equations above in plain PyTorch, with the explicit broadcast."""
    in_params, hidden_params, eps = _block_gru_args(deter, stoch, action, in_params,
                                                    hidden_params, gru_weight, gru_bias, blocks,
                                                    act, eps)
    f = _TORCH_ACTS[act]
    B, D = deter.shape
    G = blocks

    def layer(x, W, b, s):
        z = F.linear(x, W, b)
        return f(F.rms_norm(z, (z.shape[-1],), s, eps))

    def blocklinear(h, W):
        # unflatten / flatten instead of reshape(B, ...,  -1): defined for B = 0 too
        return torch.einsum("bgi,gio->bgo", h.unflatten(1, (G, -1)), W).flatten(1)

    a = action / action.abs().clamp(min=1.0).detach()
    xs = [layer(inp, *in_params[3 * i:3 * i + 3]) for i, inp in enumerate((deter, stoch, a))]
    x = torch.cat(xs, -1).unsqueeze(1).expand(B, G, -1)
    h = torch.cat([deter.reshape(B, G, D // G), x], -1).flatten(1)
    for l in range(len(hidden_params) // 3):
        W, b, s = hidden_params[3 * l:3 * l + 3]
        h = f(F.rms_norm(blocklinear(h, W) + b, (D,), s, eps))
    parts = (blocklinear(h, gru_weight) + gru_bias).reshape(B, G, 3, D // G)
    reset, cand, update = (parts[:, :, i].reshape(B, D) for i in range(3))
    reset = torch.sigmoid(reset)
    cand = torch.tanh(reset * cand)
    update = torch.sigmoid(update - 1)
    return update * cand + (1 - update) * deter


def _register_block_gru() -> None:
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
    _register_block_gru()
