"""Benchmark cases of the λ-return: fast op vs eager reference vs torch.compile(reference).

Shapes are time-major ``[T, B]``, the layout of Dreamer's imagined trajectories
(T = horizon, B = batch x sequence start states).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from dreamer_fast.bench.timing import Prepare
from dreamer_fast.ops import lambda_return, lambda_return_ref

MODES = ("forward", "backward", "forward+backward")
FULL_SIZES = ((15, 1024), (15, 4096), (15, 16384), (64, 1024))
QUICK_SIZES = ((15, 4096),)
LAMBDA = 0.95


@dataclass
class ScanInputs:
    reward: torch.Tensor
    value: torch.Tensor
    pcont: torch.Tensor
    bootstrap: torch.Tensor
    grad_out: torch.Tensor

    @classmethod
    def make(cls, T: int, B: int, device: torch.device, dtype: torch.dtype) -> "ScanInputs":
        g = torch.Generator(device="cpu").manual_seed(T * 100003 + B)

        def rnd(*shape):
            return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

        pcont = (0.99 * (torch.rand(T, B, generator=g) > 0.02)).to(device=device, dtype=dtype)
        return cls(rnd(T, B), rnd(T, B), pcont, rnd(B), rnd(T, B))


def make_candidates(fn: Callable, inputs: ScanInputs, mode: str) -> Prepare:
    """Wrap a λ-return implementation ``fn`` into the prepare/run protocol for ``mode``."""
    tensors = (inputs.reward, inputs.value, inputs.pcont, inputs.bootstrap)

    if mode == "forward":
        def prepare():
            def run():
                with torch.no_grad():
                    return fn(*tensors, LAMBDA)
            return run
        return prepare

    leaves = [t.detach().requires_grad_(True) for t in tensors]

    if mode == "backward":
        def prepare():
            out = fn(*leaves, LAMBDA)
            return lambda: torch.autograd.grad(out, leaves, inputs.grad_out)
        return prepare

    if mode == "forward+backward":
        def prepare():
            return lambda: torch.autograd.grad(fn(*leaves, LAMBDA), leaves, inputs.grad_out)
        return prepare

    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def implementations(with_compile: bool) -> dict[str, Callable]:
    impls: dict[str, Callable] = {"fast": lambda_return, "eager": lambda_return_ref}
    if with_compile:
        impls["compiled"] = torch.compile(lambda_return_ref, dynamic=False)
    return impls
