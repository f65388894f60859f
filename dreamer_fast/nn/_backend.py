"""Choosing between the fused ops and the pure-PyTorch references."""

from __future__ import annotations

import torch

from dreamer_fast import _extension

BACKENDS = ("auto", "fused", "ref")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")
    return backend


def use_fused(backend: str, like: torch.Tensor) -> bool:
    """Whether to run the fused op for tensors like ``like``.

    'fused' always does (and raises with a rebuild hint if the extension or the device's
    kernels are missing), 'ref' never does, 'auto' does when kernels for the device exist.
    """
    if backend == "ref":
        return False
    if backend == "fused":
        return True
    if not _extension.has_extension():
        return False
    if like.device.type == "cpu":
        return True
    return like.device.type == "cuda" and _extension.has_cuda_kernels()
