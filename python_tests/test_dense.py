"""Tests of dreamer_fast.ops.linear_norm_act (dense layer with fused norm + activation).

The op-contract harness (``op_contract.py``) generates the generic checks from the
contract below: fast vs the float64 reference for every norm x activation (values and
the gradient of every tensor argument; leading dims, no bias, a norm without affine
parameters), low precision and CUDA, non-contiguous and empty inputs, gradcheck,
opcheck of the native forward and backward ops, torch.compile and argument errors of
the public op and of the raw ops.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dreamer_fast.ops import linear_norm_act, linear_norm_act_ref
from dreamer_fast.ops.dense import ACTS as ACT_CODES, NORMS as NORM_CODES
from conftest import Bad, DirectBad, OpContract, contract_tests, make_generator

NORMS = ["none", "layer", "rms"]
ACTS = ["none", "silu", "elu", "tanh", "gelu", "sigmoid"]


@dataclasses.dataclass(frozen=True)
class Case:
    """``input [B, I]`` (reshaped to ``lead + [I]`` when given), ``weight [N, I]``."""
    B: int
    I: int
    N: int
    norm: str = "layer"
    act: str = "silu"
    bias: bool = True
    affine: bool = True  # norm_weight (and norm_bias for 'layer') given
    lead: tuple[int, ...] | None = None


def build(case: Case, dtype, device, gen) -> dict:
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
                               * scale).to(device=device, dtype=dtype)
    x = r(case.B, case.I)
    affine = case.norm != "none" and case.affine
    return dict(input=x if case.lead is None else x.reshape(*case.lead, case.I),
                weight=r(case.N, case.I, scale=case.I ** -0.5),
                bias=r(case.N, scale=0.3) if case.bias else None,
                norm_weight=1 + r(case.N, scale=0.2) if affine else None,
                norm_bias=r(case.N, scale=0.2) if affine and case.norm == "layer" else None,
                norm=case.norm, act=case.act, eps=1e-3)


def native(kw: dict) -> list:
    """The native forward on the flattened input and the backward of its outputs."""
    x = kw["input"].reshape(-1, kw["input"].shape[-1])
    params = (kw["weight"], kw["bias"], kw["norm_weight"], kw["norm_bias"])
    codes = (NORM_CODES[kw["norm"]], ACT_CODES[kw["act"]])
    out, z, stats = torch.ops.dreamer_fast.linear_norm_act(
        x.detach(), *(p.detach() if p is not None else None for p in params), *codes, kw["eps"])
    grad = torch.randn(out.shape, generator=make_generator("g", out.shape)).to(out.dtype)
    detached = [t.detach() if t is not None else None for t in (x, *params)]
    return [(torch.ops.dreamer_fast.linear_norm_act.default, (x, *params, *codes, kw["eps"])),
            (torch.ops.dreamer_fast.linear_norm_act_backward.default,
             (grad, z, stats, *detached, *codes))]


def _set(**changes):
    def mutate(kw):
        for k, v in changes.items():
            kw[k] = v(kw[k]) if callable(v) else v
    return mutate


BAD = tuple(Bad(id, mutate, exc, arg) for id, mutate, exc, arg in [
    ("weight-cols", _set(weight=torch.randn(6, 4)), ValueError, "weight"),
    ("bias-shape", _set(bias=torch.randn(5)), ValueError, "bias"),
    ("norm-weight-shape", _set(norm_weight=torch.ones(5), norm="layer"), ValueError,
     "norm_weight"),
    ("rms-with-bias", _set(norm_weight=torch.ones(6), norm_bias=torch.zeros(6), norm="rms"),
     ValueError, "norm_bias"),
    ("none-with-weight", _set(norm_weight=torch.ones(6)), ValueError, "norm_weight"),
    ("unknown-norm", _set(norm="batch"), ValueError, "norm"),
    ("unknown-act", _set(act="relu6"), ValueError, "act"),
    ("int-input", _set(input=torch.Tensor.long), TypeError, "input"),
    ("dtype-mix", _set(weight=torch.Tensor.double), TypeError, "weight"),
    ("device-mix", _set(bias=lambda t: t.to("meta")), ValueError, "bias"),
    ("eps", _set(norm="layer", eps=0.0), ValueError, "eps"),
])


def _raw_backward(bad: str):
    """The raw backward reads `grad_out`, `z` and `stats` through typed pointers (on
    CUDA, untyped): a float32 stand-in for one of them in a float64 layer (right shape,
    wrong dtype) is an error naming it, never reinterpreted."""
    def make_args():
        kw = build(Case(4, 5, 6), torch.float64, "cpu", make_generator("dense-raw-backward"))
        params = (kw["input"], kw["weight"], kw["bias"], kw["norm_weight"], kw["norm_bias"])
        out, z, stats = torch.ops.dreamer_fast.linear_norm_act(*params, 1, 1, 1e-3)
        given = {"grad_out": torch.randn_like(out), "z": z, "stats": stats}
        given[bad] = given[bad].float()
        return (given["grad_out"], given["z"], given["stats"], *params, 1, 1)
    return DirectBad(f"backward-{bad}-dtype", "linear_norm_act_backward", make_args, bad)


_x, _w, _m = torch.randn(4, 5), torch.randn(6, 5), dict(device="meta")
DIRECT_BAD = (
    DirectBad("weight-cols", "linear_norm_act",
              lambda: (_x, torch.randn(6, 4), None, None, None, 0, 0, 1e-3), "weight"),
    DirectBad("all-meta-bias", "linear_norm_act",
              lambda: (_x.to("meta"), _w.to("meta"), torch.zeros(5, **_m), None, None, 0, 0,
                       1e-3), "bias"),
    *(_raw_backward(bad) for bad in ("grad_out", "z", "stats")),
)

LINEAR_NORM_ACT = OpContract(
    name="linear_norm_act", fast=linear_norm_act, ref=linear_norm_act_ref, build=build,
    differentiable=("input", "weight", "bias", "norm_weight", "norm_bias"), native=native,
    bad=BAD, direct_bad=DIRECT_BAD, bad_case=Case(4, 5, 6, "none", "none"),
    noncontig_exact=False,  # a transposed weight is another GEMM layout: last-bit changes
)

_SIZES = [(1, 7, 5), (37, 45, 200), (256, 30, 96)]
# 160 rows of 1024: several CPU parallel_for tasks (>= 64k elements each,
# csrc/common/parallel_grain.h) forward and backward.
_MISC = {"parallel-160x45x1024-layer": Case(160, 45, 1024, "layer", "silu"),
         "parallel-160x45x1024-rms": Case(160, 45, 1024, "rms", "gelu"),
         "lead-2x3-no-bias": Case(6, 9, 12, "layer", "silu", bias=False, lead=(2, 3)),
         "rms-tanh-no-bias": Case(6, 9, 12, "rms", "tanh", bias=False),
         "layer-no-affine": Case(6, 9, 12, "layer", "elu", affine=False),
         "rms-no-affine": Case(6, 9, 12, "rms", "gelu", bias=False, affine=False)}

globals().update(contract_tests(
    LINEAR_NORM_ACT,
    grid={**{f"{B}x{I}x{N}-{norm}-{act}": Case(B, I, N, norm, act) for B, I, N in _SIZES
             for norm in NORMS for act in ACTS}, **_MISC},
    small_grid={f"{norm}-{act}": Case(64, 45, 1024, norm, act)
                for norm, act in [("none", "none"), ("layer", "silu"), ("rms", "silu"),
                                  ("layer", "elu"), ("rms", "gelu")]},
    noncontig={"layer-silu": Case(6, 9, 12), "rms-tanh-lead": Case(6, 9, 12, "rms", "tanh",
                                                                  lead=(2, 3))},
    empty={"B0": Case(0, 5, 6), "lead-0x3": Case(0, 5, 6, "rms", "gelu", lead=(0, 3))},
    gradcheck={norm: Case(3, 4, 5, norm, "silu") for norm in NORMS},
    opcheck={norm: (Case(3, 4, 5, norm, "silu"), torch.float64, "all") for norm in NORMS}
    | {"bf16-layer-no-bias-none": (Case(3, 4, 5, bias=False), torch.bfloat16, "none")},
    compile={"rms-lead": Case(6, 5, 4, "rms", "gelu", lead=(2, 3))},
))


# ---- the backward computes only what the graph needs -----------------------------------


@pytest.mark.parametrize("norm", ["layer", "none"])
@pytest.mark.parametrize("need_input, need_params", [(True, False), (False, True),
                                                      (True, True)])
def test_backward_skips_the_gradients_nobody_needs(norm, need_input, need_params):
    """A detached input gets no dx, constant parameters get no dW/db (a frozen head the
    gradient only passes through); what is computed equals the float64 reference."""
    kw = build(Case(7, 5, 6, norm, "silu"), torch.float64, "cpu",
               make_generator(f"dense-need-{norm}"))
    names = ["input", "weight", "bias", "norm_weight", "norm_bias"]
    for name in names:
        t = kw[name]
        if t is not None:
            kw[name] = t.detach().requires_grad_(need_input if name == "input"
                                                 else need_params)
    wanted = [kw[n] for n in names if kw[n] is not None and kw[n].requires_grad]
    grad = torch.randn(7, 6, dtype=torch.float64, generator=make_generator("dense-need-g"))
    got = torch.autograd.grad(linear_norm_act(**kw), wanted, grad)
    want = torch.autograd.grad(linear_norm_act_ref(**kw), wanted, grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)

    # the native backward leaves the skipped parts empty
    x = kw["input"].detach()
    params = [None if kw[n] is None else kw[n].detach() for n in names[1:]]
    codes = (NORM_CODES[norm], ACT_CODES["silu"])
    _, z, stats = torch.ops.dreamer_fast.linear_norm_act(x, *params, *codes, 1e-3)
    args = (grad, z, stats, x, *params, *codes, need_input, need_params)
    dx, dw, db, dnw, dnb = torch.ops.dreamer_fast.linear_norm_act_backward(*args)
    assert (dx.numel() > 0) == need_input
    assert (dw.numel() > 0) == need_params
    if not need_params:
        assert db.numel() == dnw.numel() == dnb.numel() == 0
    torch.library.opcheck(torch.ops.dreamer_fast.linear_norm_act_backward.default, args)
