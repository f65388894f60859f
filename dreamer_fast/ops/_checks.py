"""Argument validation shared by the fast ops and their ``_ref`` twins.

Both paths run the same checks, so they accept and reject exactly the same inputs
and their error messages name the argument and what was expected.
"""

from __future__ import annotations

from numbers import Real

import torch


def check_float_tensor(op: str, name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{op}: `{name}` must be a floating-point tensor (float32/float64/float16/bfloat16), "
            f"got {x.dtype}"
        )
    return x


def check_axis(op: str, axis: object, ndim: int, ref_name: str) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"{op}: `axis` must be an int, got {type(axis).__name__}")
    if ndim == 0:
        raise ValueError(f"{op}: `{ref_name}` must have a time axis, got a 0-dim tensor")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{op}: `axis`={axis} is out of range for `{ref_name}` with {ndim} dims "
            f"(expected {-ndim} <= axis < {ndim})"
        )
    return axis % ndim


def check_same(op: str, ref_name: str, ref: torch.Tensor, name: str, x: torch.Tensor) -> None:
    """`x` must have `ref`'s shape, dtype and device."""
    if x.shape != ref.shape:
        raise ValueError(
            f"{op}: `{name}` has shape {tuple(x.shape)} but `{ref_name}` has shape "
            f"{tuple(ref.shape)}; they must match"
        )
    check_dtype_device(op, ref_name, ref, name, x)


def check_dtype_device(op: str, ref_name: str, ref: torch.Tensor, name: str,
                       x: torch.Tensor) -> None:
    if x.dtype != ref.dtype:
        raise TypeError(
            f"{op}: `{name}` has dtype {x.dtype} but `{ref_name}` has dtype {ref.dtype}; "
            "they must match"
        )
    if x.device != ref.device:
        raise ValueError(
            f"{op}: `{name}` is on {x.device} but `{ref_name}` is on {ref.device}; "
            "all tensors must be on one device"
        )


def as_sequence(op: str, name: str, x: object, like: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like `like`, or a Python number broadcast to it."""
    if isinstance(x, Real) and not isinstance(x, bool):
        return torch.full_like(like, float(x))
    x = check_float_tensor(op, name, x)
    return x


def check_unit_interval(op: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{op}: `{name}` must be a float in [0, 1], got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{op}: `{name}` must be in [0, 1], got {value}")
    return value
