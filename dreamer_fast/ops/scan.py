"""Reverse-time scans: the λ-return of DreamerV1/V2 and a generic reverse scan.

Fast ops (one native kernel forward, one backward) and their pure-PyTorch
references live side by side and share one argument check, so they have the same
signature, semantics and errors.

``lambda_return(reward, value, pcont, bootstrap, lambda_=0.95, axis=0)``
    ``reward``, ``value``, ``pcont``: same shape ``[..., T, ...]`` with the time axis
    at ``axis``; ``bootstrap``: that shape without the time axis (None = zeros);
    ``pcont`` may also be a Python number. Returns ``R`` shaped like ``reward``::

        next_value[t] = value[t+1]  (t < T-1),   next_value[T-1] = bootstrap
        R[T] = bootstrap
        R[t] = reward[t] + pcont[t] * ((1 - λ) * next_value[t] + λ * R[t+1])

    λ = 1 gives the discounted Monte-Carlo return, λ = 0 the one-step TD target.
    This is the function DreamerV1/V2 (and NM512/dreamerv3-torch's ``lambda_return``)
    use, drop-in.

``reverse_scan(inputs, decay, init, axis=0)``
    ``R[T] = init``;  ``R[t] = inputs[t] + decay[t] * R[t+1]``. DreamerV3's return
    (``inputs = r + γc(1-λ)v'``, ``decay = γcλ``), GAE and discounted sums are all
    this scan. ``decay`` may be a Python number; ``init`` None = zeros.

Both are differentiable in every tensor input; the backward pass is one
forward-time scan. Fast kernels: float32/float64/float16/bfloat16 on CPU and CUDA,
accumulating in float32 (float64 for float64).
"""

from __future__ import annotations

import torch

from dreamer_fast import _extension
from dreamer_fast.ops import _checks

__all__ = ["lambda_return", "lambda_return_ref", "reverse_scan", "reverse_scan_ref"]


# --------------------------------------------------------------------------------------
# Argument handling shared by fast and reference
# --------------------------------------------------------------------------------------

def _time_major(op: str, names: tuple[str, ...], seqs: list[torch.Tensor], init_name: str,
                init: torch.Tensor | None, axis: object) -> tuple[list[torch.Tensor],
                                                                  torch.Tensor, int]:
    """Validate and move the time axis to the front: returns ([T, *batch] tensors,
    init [*batch], normalised axis)."""
    first = seqs[0]
    ax = _checks.check_axis(op, axis, first.dim(), names[0])
    if first.shape[ax] < 1:
        raise ValueError(f"{op}: `{names[0]}` must have at least one time step along axis {ax}, "
                         f"got shape {tuple(first.shape)}")
    for name, x in zip(names[1:], seqs[1:]):
        _checks.check_same(op, names[0], first, name, x)
    batch_shape = first.shape[:ax] + first.shape[ax + 1:]
    if init is None:
        init = first.new_zeros(batch_shape)
    else:
        init = _checks.check_float_tensor(op, init_name, init)
        if init.shape != batch_shape:
            raise ValueError(
                f"{op}: `{init_name}` must have shape {tuple(batch_shape)} (`{names[0]}`'s shape "
                f"{tuple(first.shape)} without the time axis {ax}), got {tuple(init.shape)}"
            )
        _checks.check_dtype_device(op, names[0], first, init_name, init)
    if ax != 0:  # a view; skipped when already time-major
        seqs = [x.movedim(ax, 0) for x in seqs]
    return seqs, init, ax


def _lambda_return_args(reward, value, pcont, bootstrap, lambda_, axis):
    op = "lambda_return"
    reward = _checks.check_float_tensor(op, "reward", reward)
    value = _checks.check_float_tensor(op, "value", value)
    pcont = _checks.as_sequence(op, "pcont", pcont, reward)
    lam = _checks.check_unit_interval(op, "lambda_", lambda_)
    (r, v, p), b, ax = _time_major(op, ("reward", "value", "pcont"), [reward, value, pcont],
                                   "bootstrap", bootstrap, axis)
    return r, v, p, b, lam, ax


def _reverse_scan_args(inputs, decay, init, axis):
    op = "reverse_scan"
    inputs = _checks.check_float_tensor(op, "inputs", inputs)
    decay = _checks.as_sequence(op, "decay", decay, inputs)
    (x, d), r0, ax = _time_major(op, ("inputs", "decay"), [inputs, decay], "init", init, axis)
    return x, d, r0, ax


# --------------------------------------------------------------------------------------
# Fast ops
# --------------------------------------------------------------------------------------

def lambda_return(reward: torch.Tensor, value: torch.Tensor, pcont: torch.Tensor | float,
                  bootstrap: torch.Tensor | None, lambda_: float = 0.95,
                  axis: int = 0) -> torch.Tensor:
    """λ-return with one native reverse-time scan (see the module docstring)."""
    r, v, p, b, lam, ax = _lambda_return_args(reward, value, pcont, bootstrap, lambda_, axis)
    _extension.require_device_kernels("lambda_return", r.device)
    out = torch.ops.dreamer_fast.lambda_return(r, v, p, b, lam)
    return out if ax == 0 else out.movedim(0, ax)


def reverse_scan(inputs: torch.Tensor, decay: torch.Tensor | float,
                 init: torch.Tensor | None, axis: int = 0) -> torch.Tensor:
    """``R[t] = inputs[t] + decay[t] * R[t+1]``, ``R[T] = init``, one native scan."""
    x, d, r0, ax = _reverse_scan_args(inputs, decay, init, axis)
    _extension.require_device_kernels("reverse_scan", x.device)
    out = torch.ops.dreamer_fast.reverse_scan(x, d, r0)
    return out if ax == 0 else out.movedim(0, ax)


# --------------------------------------------------------------------------------------
# References: plain PyTorch loops over time, same signatures
# --------------------------------------------------------------------------------------

def lambda_return_ref(reward: torch.Tensor, value: torch.Tensor, pcont: torch.Tensor | float,
                      bootstrap: torch.Tensor | None, lambda_: float = 0.95,
                      axis: int = 0) -> torch.Tensor:
    """Reference λ-return: a Python loop over time (what Dreamer codebases run)."""
    r, v, p, b, lam, ax = _lambda_return_args(reward, value, pcont, bootstrap, lambda_, axis)
    next_value = torch.cat([v[1:], b.unsqueeze(0)], 0)
    inputs = r + p * next_value * (1.0 - lam)
    returns = []
    last = b
    for t in reversed(range(r.shape[0])):
        last = inputs[t] + p[t] * lam * last
        returns.append(last)
    return torch.stack(returns[::-1], 0).movedim(0, ax)


def reverse_scan_ref(inputs: torch.Tensor, decay: torch.Tensor | float,
                     init: torch.Tensor | None, axis: int = 0) -> torch.Tensor:
    """Reference reverse scan: a Python loop over time."""
    x, d, r0, ax = _reverse_scan_args(inputs, decay, init, axis)
    out = []
    last = r0
    for t in reversed(range(x.shape[0])):
        last = x[t] + d[t] * last
        out.append(last)
    return torch.stack(out[::-1], 0).movedim(0, ax)


# --------------------------------------------------------------------------------------
# torch.library registration: fake (meta) kernels and autograd
# --------------------------------------------------------------------------------------

def _check_native_args(op: str, seqs: dict[str, torch.Tensor], init_name: str,
                       init: torch.Tensor, lambda_: float | None = None) -> None:
    """The checks of csrc/scan_checks.h, for the fake kernels: with a meta (or fake)
    tensor among the inputs the dispatcher runs the fake kernel instead of the C++
    one, and it must reject what the C++ kernel would."""
    (first_name, first), *rest = seqs.items()
    torch._check(first.dim() >= 1 and first.shape[0] >= 1,
                 lambda: f"{op}: `{first_name}` must have a time axis of length >= 1, "
                         f"got shape {tuple(first.shape)}")
    torch._check(first.is_floating_point(),
                 lambda: f"{op}: `{first_name}` must be a floating-point tensor, got {first.dtype}")
    for name, x in [*rest, (init_name, init)]:
        expected = first.shape if name != init_name else first.shape[1:]
        torch._check(x.shape == expected,
                     lambda: f"{op}: `{name}` has shape {tuple(x.shape)}, expected "
                             f"{tuple(expected)}")
        torch._check(x.dtype == first.dtype,
                     lambda: f"{op}: `{name}` has dtype {x.dtype} but `{first_name}` has dtype "
                             f"{first.dtype}")
        torch._check(x.device == first.device,
                     lambda: f"{op}: `{name}` is on {x.device} but `{first_name}` is on "
                             f"{first.device}")
    if lambda_ is not None:
        torch._check(0.0 <= lambda_ <= 1.0,
                     lambda: f"{op}: `lambda_` must be in [0, 1], got {lambda_}")


def _register() -> None:
    def _contiguous_like(x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("dreamer_fast::reverse_scan")
    def _(inputs, decay, init):
        _check_native_args("reverse_scan", {"inputs": inputs, "decay": decay}, "init", init)
        return _contiguous_like(inputs)

    @torch.library.register_fake("dreamer_fast::reverse_scan_backward")
    def _(grad, decay, init, out):
        _check_native_args("reverse_scan_backward", {"grad": grad, "decay": decay, "out": out},
                           "init", init)
        return _contiguous_like(grad), _contiguous_like(grad), _contiguous_like(init)

    @torch.library.register_fake("dreamer_fast::lambda_return")
    def _(reward, value, pcont, bootstrap, lambda_):
        _check_native_args("lambda_return", {"reward": reward, "value": value, "pcont": pcont},
                           "bootstrap", bootstrap, lambda_)
        return _contiguous_like(reward)

    @torch.library.register_fake("dreamer_fast::lambda_return_backward")
    def _(grad, value, pcont, bootstrap, out, lambda_):
        _check_native_args("lambda_return_backward",
                           {"grad": grad, "value": value, "pcont": pcont, "out": out},
                           "bootstrap", bootstrap, lambda_)
        return (_contiguous_like(grad), _contiguous_like(grad), _contiguous_like(grad),
                _contiguous_like(bootstrap))

    def reverse_scan_setup(ctx, inputs, output):
        _, decay, init = inputs
        ctx.save_for_backward(decay, init, output)

    def reverse_scan_backward(ctx, grad):
        decay, init, out = ctx.saved_tensors
        return torch.ops.dreamer_fast.reverse_scan_backward(grad, decay, init, out)

    torch.library.register_autograd("dreamer_fast::reverse_scan", reverse_scan_backward,
                                    setup_context=reverse_scan_setup)

    def lambda_return_setup(ctx, inputs, output):
        _, value, pcont, bootstrap, lambda_ = inputs
        ctx.lambda_ = lambda_
        ctx.save_for_backward(value, pcont, bootstrap, output)

    def lambda_return_backward(ctx, grad):
        value, pcont, bootstrap, out = ctx.saved_tensors
        g_reward, g_value, g_pcont, g_bootstrap = torch.ops.dreamer_fast.lambda_return_backward(
            grad, value, pcont, bootstrap, out, ctx.lambda_)
        return g_reward, g_value, g_pcont, g_bootstrap, None

    torch.library.register_autograd("dreamer_fast::lambda_return", lambda_return_backward,
                                    setup_context=lambda_return_setup)


if _extension.has_extension():
    _register()
