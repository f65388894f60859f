"""The one place that decides between a fused op and its pure-PyTorch reference.

Every module of :mod:`dreamer_fast.nn` and the trainer ask here, with the ``backend``
they were built with and a tensor of the call (its device decides ``'auto'``):

* ``'fused'``: always the fused op (which raises with a rebuild hint when the extension
  or the device's kernels are missing),
* ``'ref'``: always the reference,
* ``'auto'``: the fused op where the extension has kernels for the tensor's device.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

from dreamer_fast import _extension

BACKENDS = ("auto", "fused", "ref")

F = TypeVar("F", bound=Callable)


def check_backend(backend: str) -> str:
    """``backend`` itself, or a ValueError naming the allowed values."""
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")
    return backend


def use_fused(backend: str, like: torch.Tensor) -> bool:
    """Whether ``backend`` runs the fused op for tensors like ``like``."""
    if backend == "ref":
        return False
    if backend == "fused":
        return True
    if not _extension.has_extension():
        return False
    if like.device.type == "cpu":
        return True
    return like.device.type == "cuda" and _extension.has_cuda_kernels()


def choose(backend: str, like: torch.Tensor, fused: F, ref: F) -> F:
    """``fused`` or ``ref`` (same signature) as :func:`use_fused` decides."""
    return fused if use_fused(backend, like) else ref
