"""Tests of dreamer_fast.ops.linear_norm_act (dense layer with fused norm + activation)."""

from __future__ import annotations

import pytest
import torch

from dreamer_fast.ops import linear_norm_act, linear_norm_act_ref
from conftest import DEVICES, assert_close_to_ref, make_generator, requires_cuda

NORMS = ["none", "layer", "rms"]
ACTS = ["none", "silu", "elu", "tanh", "gelu", "sigmoid"]


def _tensors(B, I, N, norm, gen, bias=True):
    """float64 (input, weight, bias, norm_weight, norm_bias) for `norm`."""
    r = lambda *s, scale=1.0: torch.randn(*s, generator=gen, dtype=torch.float64) * scale  # noqa: E731
    return [r(B, I), r(N, I, scale=I ** -0.5), r(N, scale=0.3) if bias else None,
            1 + r(N, scale=0.2) if norm != "none" else None,
            r(N, scale=0.2) if norm == "layer" else None]


def _compare(args64, norm, act, device, dtype, gen):
    kw = dict(norm=norm, act=act, eps=1e-3)
    leaves64 = [a.requires_grad_() if a is not None else None for a in args64]
    ref = linear_norm_act_ref(*leaves64, **kw)
    gout = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    present = [a for a in leaves64 if a is not None]
    grads64 = torch.autograd.grad(ref, present, gout)
    args = [a.detach().to(device=device, dtype=dtype).requires_grad_() if a is not None else None
            for a in args64]
    out = linear_norm_act(*args, **kw)
    grads = torch.autograd.grad(out, [a for a in args if a is not None], gout.to(out))
    assert_close_to_ref(out, ref, dtype, f"out {norm}/{act}")
    for i, (g, g64) in enumerate(zip(grads, grads64)):
        assert_close_to_ref(g, g64, dtype, f"grad {i} {norm}/{act}")


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("B,I,N", [(1, 7, 5), (37, 45, 200), (256, 30, 96)])
def test_matches_ref_cpu(B, I, N, dtype, norm, act):
    gen = make_generator("dense", B, I, N, norm, act)
    _compare(_tensors(B, I, N, norm, gen), norm, act, "cpu", dtype, gen)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("norm,act", [("none", "none"), ("layer", "silu"), ("rms", "silu"),
                                      ("layer", "elu"), ("rms", "gelu")])
def test_matches_ref_cuda(norm, act, dtype):
    gen = make_generator("dense-cuda", norm, act)
    _compare(_tensors(64, 45, 1024, norm, gen), norm, act, "cuda", dtype, gen)


@pytest.mark.parametrize("device", DEVICES)
def test_without_bias_leading_dims_and_noncontiguous(device):
    gen = make_generator("dense-misc")
    x, W, _, nw, nb = [t.to(device) if t is not None else None
                       for t in _tensors(6, 9, 12, "layer", gen)]
    x3 = x.reshape(2, 3, 9)
    torch.testing.assert_close(linear_norm_act(x3, W, None, nw, nb, norm="layer", act="silu"),
                               linear_norm_act_ref(x3, W, None, nw, nb, norm="layer", act="silu"))
    xt = x.T.contiguous().T
    Wt = W.T.contiguous().T
    torch.testing.assert_close(linear_norm_act(xt, Wt, None, nw, None, norm="rms", act="tanh"),
                               linear_norm_act_ref(x, W, None, nw, None, norm="rms", act="tanh"))
    # a norm without affine parameters
    torch.testing.assert_close(linear_norm_act(x, W, norm="layer", act="elu"),
                               linear_norm_act_ref(x, W, norm="layer", act="elu"))


def test_gradcheck_and_opcheck():
    gen = make_generator("dense-check")
    for norm in NORMS:
        args = [a.requires_grad_() if a is not None else None
                for a in _tensors(3, 4, 5, norm, gen)]
        assert torch.autograd.gradcheck(
            lambda *a: linear_norm_act(*a, norm=norm, act="silu"), tuple(args))
        codes = (dict(none=0, layer=1, rms=2)[norm], 1, 1e-3)
        torch.library.opcheck(torch.ops.dreamer_fast.linear_norm_act.default, (*args, *codes))
        out, z, stats = torch.ops.dreamer_fast.linear_norm_act(*args, *codes)
        torch.library.opcheck(torch.ops.dreamer_fast.linear_norm_act_backward.default,
                              (torch.randn_like(out), z, stats, *[
                                  a.detach() if a is not None else None for a in args],
                               *codes[:2]))


@pytest.mark.compile
def test_torch_compile_fullgraph():
    gen = make_generator("dense-compile")
    args = [a.float().requires_grad_() for a in _tensors(8, 5, 6, "layer", gen)]

    def f(*a):
        return linear_norm_act(*a, norm="layer", act="silu").square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss, ref = compiled(*args), f(*args)
    torch.testing.assert_close(loss, ref)
    for g, e in zip(torch.autograd.grad(loss, args), torch.autograd.grad(ref, args)):
        torch.testing.assert_close(g, e)


def _bad_cases():
    x, W, b, g = torch.randn(4, 5), torch.randn(6, 5), torch.randn(6), torch.ones(6)
    return {
        "weight-cols": ((x, torch.randn(6, 4)), {}, ValueError, "weight"),
        "bias-shape": ((x, W, torch.randn(5)), {}, ValueError, "bias"),
        "norm-weight-shape": ((x, W, b, torch.ones(5)), {"norm": "layer"}, ValueError,
                              "norm_weight"),
        "rms-with-bias": ((x, W, b, g, torch.zeros(6)), {"norm": "rms"}, ValueError, "norm_bias"),
        "none-with-weight": ((x, W, b, g), {}, ValueError, "norm_weight"),
        "unknown-norm": ((x, W), {"norm": "batch"}, ValueError, "norm"),
        "unknown-act": ((x, W), {"act": "relu6"}, ValueError, "act"),
        "int-input": ((x.long(), W), {}, TypeError, "input"),
        "dtype-mix": ((x, W.double()), {}, TypeError, "weight"),
        "device-mix": ((x, W, b.to("meta")), {}, ValueError, "bias"),
        "eps": ((x, W), {"norm": "layer", "eps": 0.0}, ValueError, "eps"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
@pytest.mark.parametrize("fn", [linear_norm_act, linear_norm_act_ref], ids=["fast", "ref"])
def test_bad_input(fn, case):
    args, kw, exc, name = _bad_cases()[case]
    with pytest.raises(exc, match=f"`{name}`"):
        fn(*args, **kw)


@pytest.mark.parametrize("bad", ["grad_out", "z", "stats"])
def test_raw_backward_rejects_wrong_dtypes_by_name(bad):
    """The raw backward op reads `grad_out`, `z` and `stats` through typed pointers (on
    CUDA, untyped): a wrong dtype is an error naming the argument, never reinterpreted."""
    gen = make_generator("dense-raw-backward")
    x, W, b, g, beta = _tensors(4, 5, 6, "layer", gen)
    codes = (1, 1)  # layer norm, silu
    out, z, stats = torch.ops.dreamer_fast.linear_norm_act(x, W, b, g, beta, *codes, 1e-3)
    given = {"grad_out": torch.randn_like(out), "z": z, "stats": stats}
    # float64 layer: a float32 stand-in has the right shape and the wrong dtype
    given[bad] = given[bad].float()
    with pytest.raises(RuntimeError, match=f"`{bad}` must be"):
        torch.ops.dreamer_fast.linear_norm_act_backward(
            given["grad_out"], given["z"], given["stats"], x, W, b, g, beta, *codes)
