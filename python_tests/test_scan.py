"""Tests of the reverse-time scans: ``lambda_return`` and ``reverse_scan``.

Fast ops (native kernels via ``torch.ops.dreamer_fast.*``) are compared against the
pure-PyTorch ``*_ref`` loops run in float64 on the same input values, for values and
every gradient, plus closed forms, gradcheck, opcheck, torch.compile, NaN
propagation, argument errors, CUDA (skipped without a device) and the
missing-extension path.

None of these tests skip when the extension is missing: the fast ops then raise the
rebuild hint and the tests fail, which is what a broken build should do.
"""

from __future__ import annotations

import math
import types

import pytest
import torch

import dreamer_fast
from dreamer_fast import _extension
from dreamer_fast.ops import lambda_return, lambda_return_ref, reverse_scan, reverse_scan_ref

from conftest import (
    assert_both_raise,
    DEVICES,
    HAS_CUDA_KERNELS,
    assert_close_to_ref,
    make_generator,
    rand_pcont,
    randn,
    requires_cuda,
    time_shape,
)

T_VALUES = [1, 2, 15, 16, 64, 65]
BATCHES = [(1,), (37,), (3, 5)]
AXES = [0, 1, -1]
LAMBDAS = [0.0, 0.95, 1.0]

# Smaller grid for the low-precision dtypes and for CUDA.
T_SMALL = [1, 16, 65]
BATCHES_SMALL = [(37,), (3, 5)]
AXES_SMALL = [0, -1]


def _dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _batch_id(batch: tuple[int, ...]) -> str:
    return "b" + "x".join(map(str, batch))


def _device_dtype(device: str, dtype: torch.dtype):
    marks = [requires_cuda, pytest.mark.cuda] if device == "cuda" else []
    return pytest.param(device, dtype, marks=marks, id=f"{device}-{_dtype_id(dtype)}")


#: CPU low precision (float32/float64 are in the full grid) and every dtype on CUDA.
DEVICE_DTYPES_SMALL = [
    _device_dtype("cpu", torch.bfloat16),
    _device_dtype("cpu", torch.float16),
    _device_dtype("cuda", torch.float32),
    _device_dtype("cuda", torch.float64),
    _device_dtype("cuda", torch.bfloat16),
    _device_dtype("cuda", torch.float16),
]

FULL_DTYPES = [pytest.param(d, id=_dtype_id(d)) for d in (torch.float64, torch.float32)]


# --------------------------------------------------------------------------------------
# Input builders and the fast-vs-reference check
# --------------------------------------------------------------------------------------

def lambda_return_inputs(T, batch, axis, gen, *, p_terminal=0.05):
    """float64 (reward, value, pcont, bootstrap) with the time axis at ``axis``."""
    shape = time_shape(T, batch, axis)
    reward = randn(shape, gen)
    value = randn(shape, gen, scale=3.0)
    pcont = rand_pcont(shape, gen, p_terminal=p_terminal)
    bootstrap = randn(batch, gen, scale=3.0)
    return reward, value, pcont, bootstrap


def reverse_scan_inputs(T, batch, axis, gen, *, p_terminal=0.05):
    """float64 (inputs, decay, init) with the time axis at ``axis``."""
    shape = time_shape(T, batch, axis)
    inputs = randn(shape, gen)
    decay = rand_pcont(shape, gen, discount=0.97, p_terminal=p_terminal)
    init = randn(batch, gen, scale=3.0)
    return inputs, decay, init


def _run(fn, args64, dtype, device, gout64, **kwargs):
    """Run ``fn`` on leaves holding ``args64`` cast to dtype/device, backprop gout."""
    leaves = [a.to(device=device, dtype=dtype).requires_grad_() for a in args64]
    out = fn(*leaves, **kwargs)
    out.backward(gout64.to(device=device, dtype=dtype))
    return out.detach(), [leaf.grad for leaf in leaves]


def check_fast_vs_ref(fast_fn, ref_fn, args64, names, dtype, device, gen, **kwargs):
    """Fast op in ``dtype`` on ``device`` vs reference in float64 on CPU, on the same
    input values (rounded to ``dtype`` first), values and every gradient."""
    args_q = [a.to(dtype).to(torch.float64) for a in args64]
    gout = randn(args64[0].shape, gen).to(dtype).to(torch.float64)
    out, grads = _run(fast_fn, args_q, dtype, device, gout, **kwargs)
    ref, ref_grads = _run(ref_fn, args_q, torch.float64, "cpu", gout, **kwargs)
    assert out.device.type == device
    assert torch.isfinite(ref).all()
    assert_close_to_ref(out, ref, dtype, "output")
    for name, g, rg in zip(names, grads, ref_grads):
        assert g is not None, f"no gradient for {name}"
        assert g.shape == rg.shape
        assert_close_to_ref(g, rg, dtype, f"d/d {name}")


LR_NAMES = ("reward", "value", "pcont", "bootstrap")
RS_NAMES = ("inputs", "decay", "init")


# --------------------------------------------------------------------------------------
# Extension status
# --------------------------------------------------------------------------------------

def test_extension_is_built():
    assert dreamer_fast.has_extension(), (
        f"dreamer_fast._C failed to import: {dreamer_fast.extension_error()!r}")
    assert dreamer_fast.extension_error() is None
    for name in ("lambda_return", "lambda_return_backward", "reverse_scan",
                 "reverse_scan_backward"):
        assert hasattr(torch.ops.dreamer_fast, name)


def test_has_cuda_kernels_is_consistent():
    assert isinstance(dreamer_fast.has_cuda_kernels(), bool)
    if dreamer_fast.has_cuda_kernels():
        assert torch.cuda.is_available()
        assert _extension._C.cuda_kernels_built


# --------------------------------------------------------------------------------------
# Fast vs reference: full grid (CPU, float64 and float32)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("lam", LAMBDAS, ids=lambda v: f"lam{v}")
@pytest.mark.parametrize("axis", AXES, ids=lambda v: f"ax{v}")
@pytest.mark.parametrize("batch", BATCHES, ids=_batch_id)
@pytest.mark.parametrize("T", T_VALUES, ids=lambda v: f"T{v}")
def test_lambda_return_matches_ref(T, batch, axis, lam, dtype, gen):
    args = lambda_return_inputs(T, batch, axis, gen)
    check_fast_vs_ref(lambda_return, lambda_return_ref, args, LR_NAMES, dtype, "cpu", gen,
                      lambda_=lam, axis=axis)


@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("axis", AXES, ids=lambda v: f"ax{v}")
@pytest.mark.parametrize("batch", BATCHES, ids=_batch_id)
@pytest.mark.parametrize("T", T_VALUES, ids=lambda v: f"T{v}")
def test_reverse_scan_matches_ref(T, batch, axis, dtype, gen):
    args = reverse_scan_inputs(T, batch, axis, gen)
    check_fast_vs_ref(reverse_scan, reverse_scan_ref, args, RS_NAMES, dtype, "cpu", gen,
                      axis=axis)


# --------------------------------------------------------------------------------------
# Fast vs reference: low precision on CPU, every dtype on CUDA (smaller grid)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0], ids=lambda v: f"lam{v}")
@pytest.mark.parametrize("axis", AXES_SMALL, ids=lambda v: f"ax{v}")
@pytest.mark.parametrize("batch", BATCHES_SMALL, ids=_batch_id)
@pytest.mark.parametrize("T", T_SMALL, ids=lambda v: f"T{v}")
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES_SMALL)
def test_lambda_return_matches_ref_small_grid(device, dtype, T, batch, axis, lam, gen):
    args = lambda_return_inputs(T, batch, axis, gen)
    check_fast_vs_ref(lambda_return, lambda_return_ref, args, LR_NAMES, dtype, device, gen,
                      lambda_=lam, axis=axis)


@pytest.mark.parametrize("axis", AXES_SMALL, ids=lambda v: f"ax{v}")
@pytest.mark.parametrize("batch", BATCHES_SMALL, ids=_batch_id)
@pytest.mark.parametrize("T", T_SMALL, ids=lambda v: f"T{v}")
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES_SMALL)
def test_reverse_scan_matches_ref_small_grid(device, dtype, T, batch, axis, gen):
    args = reverse_scan_inputs(T, batch, axis, gen)
    check_fast_vs_ref(reverse_scan, reverse_scan_ref, args, RS_NAMES, dtype, device, gen,
                      axis=axis)


# Wide batches: several 64-column CPU tiles, a ragged last tile, and enough work for
# at::parallel_for to split the tiles across threads.
@pytest.mark.parametrize("T,batch", [(3, (130,)), (65, (1300,)), (16, (7, 150))],
                         ids=["T3-b130", "T65-b1300", "T16-b7x150"])
@pytest.mark.parametrize("device", DEVICES)
def test_wide_batch_matches_ref(device, T, batch, gen):
    for dtype in (torch.float32, torch.float64):
        args = lambda_return_inputs(T, batch, 0, gen)
        check_fast_vs_ref(lambda_return, lambda_return_ref, args, LR_NAMES, dtype, device,
                          gen, lambda_=0.95, axis=0)
        args = reverse_scan_inputs(T, batch, -1, gen)
        check_fast_vs_ref(reverse_scan, reverse_scan_ref, args, RS_NAMES, dtype, device, gen,
                          axis=-1)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    """T >= 1 but no batch elements: an empty result, like the reference."""
    r = torch.zeros(4, 0, device=device)
    b = torch.zeros(0, device=device)
    out = lambda_return(r, r, r, b, 0.9)
    assert out.shape == (4, 0) and out.device.type == device
    assert lambda_return_ref(r, r, r, b, 0.9).shape == (4, 0)
    out = reverse_scan(r, r, b)
    assert out.shape == (4, 0) and out.device.type == device


# --------------------------------------------------------------------------------------
# Non-contiguous inputs
# --------------------------------------------------------------------------------------

def _noncontiguous(x: torch.Tensor, layout: str):
    """(leaf, view_fn): ``view_fn(leaf)`` equals ``x`` but is a non-contiguous view
    (``leaf`` requires grad; ``view_fn(leaf.grad)`` is the gradient of the view)."""
    if layout == "transposed" and x.dim() >= 2:
        base = x.movedim(0, -1).contiguous()
        view_fn = lambda b: b.movedim(-1, 0)  # noqa: E731
    else:  # every dim sliced with step 2
        base = x.new_full(tuple(2 * s for s in x.shape), float("nan"))
        sl = (slice(None, None, 2),) * x.dim()
        base[sl] = x
        view_fn = lambda b: b[sl]  # noqa: E731
    base = base.detach().requires_grad_()
    view = view_fn(base)
    assert torch.equal(view, x)
    assert not view.is_contiguous() or x.numel() <= 1
    return base, view_fn


def _check_noncontiguous(fn, args, layout, gout, **kwargs):
    leaves_c = [a.clone().requires_grad_() for a in args]
    out_c = fn(*leaves_c, **kwargs)
    out_c.backward(gout)
    pairs = [_noncontiguous(a, layout) for a in args]
    out_n = fn(*[view_fn(base) for base, view_fn in pairs], **kwargs)
    out_n.backward(gout)
    # Same arithmetic per element after the kernel's .contiguous(): bitwise equal.
    torch.testing.assert_close(out_n, out_c, rtol=0, atol=0)
    for (base, view_fn), leaf in zip(pairs, leaves_c):
        torch.testing.assert_close(view_fn(base.grad), leaf.grad, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["transposed", "step2"])
@pytest.mark.parametrize("axis", [0, 1], ids=lambda v: f"ax{v}")
@pytest.mark.parametrize("device", DEVICES)
def test_lambda_return_noncontiguous(device, axis, layout, gen):
    args = [a.to(device) for a in lambda_return_inputs(9, (4, 70), axis, gen)]
    gout = randn(args[0].shape, gen).to(device)
    _check_noncontiguous(lambda_return, args, layout, gout, lambda_=0.9, axis=axis)


@pytest.mark.parametrize("layout", ["transposed", "step2"])
@pytest.mark.parametrize("axis", [0, 1], ids=lambda v: f"ax{v}")
@pytest.mark.parametrize("device", DEVICES)
def test_reverse_scan_noncontiguous(device, axis, layout, gen):
    args = [a.to(device) for a in reverse_scan_inputs(9, (4, 70), axis, gen)]
    gout = randn(args[0].shape, gen).to(device)
    _check_noncontiguous(reverse_scan, args, layout, gout, axis=axis)


@pytest.mark.parametrize("device", DEVICES)
def test_expanded_pcont_and_decay(device, gen):
    """A stride-0 (expanded) pcont / decay, as a broadcast discount would be."""
    r, v, _, b = (a.to(device) for a in lambda_return_inputs(12, (5,), 0, gen))
    p_exp = torch.full((1, 5), 0.97, dtype=torch.float64, device=device).expand(12, 5)
    p_full = p_exp.contiguous()
    torch.testing.assert_close(lambda_return(r, v, p_exp, b, 0.9),
                               lambda_return(r, v, p_full, b, 0.9), rtol=0, atol=0)
    torch.testing.assert_close(reverse_scan(r, p_exp, b), reverse_scan(r, p_full, b),
                               rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# Python-number pcont / decay, None bootstrap / init, defaults
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("pcont", [0.97, 1, 0.0], ids=["float", "int", "zero"])
@pytest.mark.parametrize("axis", [0, -1], ids=lambda v: f"ax{v}")
@pytest.mark.parametrize("device", DEVICES)
def test_lambda_return_number_pcont_and_none_bootstrap(device, axis, pcont, gen):
    batch = (3, 5)
    r, v, _, _ = (a.to(device) for a in lambda_return_inputs(7, batch, axis, gen))
    r.requires_grad_()
    v.requires_grad_()
    p_t = torch.full_like(r, float(pcont))
    zeros = torch.zeros(batch, dtype=r.dtype, device=device)
    for fn in (lambda_return, lambda_return_ref):
        out = fn(r, v, pcont, None, 0.8, axis)
        expected = lambda_return_ref(r, v, p_t, zeros, 0.8, axis)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        gr, gv = torch.autograd.grad(out.sum(), (r, v))
        er, ev = torch.autograd.grad(expected.sum(), (r, v))
        torch.testing.assert_close(gr, er, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gv, ev, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("decay", [0.9, 1], ids=["float", "int"])
@pytest.mark.parametrize("device", DEVICES)
def test_reverse_scan_number_decay_and_none_init(device, decay, gen):
    x, _, _ = (a.to(device) for a in reverse_scan_inputs(7, (6,), 1, gen))
    x.requires_grad_()
    d_t = torch.full_like(x, float(decay))
    zeros = torch.zeros(6, dtype=x.dtype, device=device)
    for fn in (reverse_scan, reverse_scan_ref):
        out = fn(x, decay, None, axis=1)
        expected = reverse_scan_ref(x, d_t, zeros, axis=1)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        (g,) = torch.autograd.grad(out.sum(), (x,))
        (e,) = torch.autograd.grad(expected.sum(), (x,))
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_lambda_return_defaults(gen):
    r, v, p, b = lambda_return_inputs(6, (4,), 0, gen)
    torch.testing.assert_close(lambda_return(r, v, p, b),
                               lambda_return(r, v, p, b, lambda_=0.95, axis=0), rtol=0, atol=0)
    torch.testing.assert_close(lambda_return(r, v, p, b), lambda_return_ref(r, v, p, b))


# --------------------------------------------------------------------------------------
# Closed forms and a hand-computed example
# --------------------------------------------------------------------------------------

def _discounted_sum(x, decay, init):
    """Closed form of R[t] = x[t] + decay[t] R[t+1], R[T] = init, time-major, float64:
    R[t] = sum_{k>=t} (prod_{t<=j<k} decay[j]) x[k] + (prod_{t<=j<T} decay[j]) init."""
    T = x.shape[0]
    out = torch.empty_like(x)
    for t in range(T):
        acc = torch.zeros_like(init)
        disc = torch.ones_like(init)
        for k in range(t, T):
            acc = acc + disc * x[k]
            disc = disc * decay[k]
        out[t] = acc + disc * init
    return out


@pytest.mark.parametrize("fn", [lambda_return, lambda_return_ref], ids=["fast", "ref"])
def test_lambda_one_is_discounted_monte_carlo_return(fn, gen):
    r, v, p, b = lambda_return_inputs(11, (6,), 0, gen)
    out = fn(r, v, p, b, 1.0)
    torch.testing.assert_close(out, _discounted_sum(r, p, b), rtol=1e-12, atol=1e-12)
    # value is irrelevant when λ = 1
    torch.testing.assert_close(fn(r, v * 7 + 1, p, b, 1.0), out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn", [lambda_return, lambda_return_ref], ids=["fast", "ref"])
def test_lambda_zero_is_one_step_td_target(fn, gen):
    r, v, p, b = lambda_return_inputs(11, (6,), 0, gen)
    next_value = torch.cat([v[1:], b[None]], 0)
    out = fn(r, v, p, b, 0.0)
    torch.testing.assert_close(out, r + p * next_value, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.95, 1.0])
@pytest.mark.parametrize("fn", [lambda_return, lambda_return_ref], ids=["fast", "ref"])
def test_lambda_return_is_a_reverse_scan(fn, lam, gen):
    """DreamerV3's form: inputs = r + p(1-λ)v', decay = pλ, init = bootstrap."""
    r, v, p, b = lambda_return_inputs(13, (3, 4), 0, gen)
    next_value = torch.cat([v[1:], b[None]], 0)
    expected = reverse_scan(r + p * (1 - lam) * next_value, p * lam, b)
    torch.testing.assert_close(fn(r, v, p, b, lam), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn", [reverse_scan, reverse_scan_ref], ids=["fast", "ref"])
def test_reverse_scan_closed_form(fn, gen):
    x, d, init = reverse_scan_inputs(11, (2, 3), 0, gen)
    torch.testing.assert_close(fn(x, d, init), _discounted_sum(x, d, init),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=_dtype_id)
@pytest.mark.parametrize("fn", [lambda_return, lambda_return_ref], ids=["fast", "ref"])
@pytest.mark.parametrize("device", DEVICES)
def test_lambda_return_hand_computed(device, fn, dtype):
    # T = 3, λ = 0.5, pcont = 0.5, next_value = [20, 30, 40]:
    #   R[2] = 3 + 0.5 (0.5*40 + 0.5*40)    = 23
    #   R[1] = 2 + 0.5 (0.5*30 + 0.5*23)    = 15.25
    #   R[0] = 1 + 0.5 (0.5*20 + 0.5*15.25) = 9.8125
    # Backward with upstream ones, G[t] = 1 + λ p[t-1] G[t-1]: G = [1, 1.25, 1.3125]
    #   d value = [0, (1-λ) p G0, (1-λ) p G1] = [0, 0.25, 0.3125]
    #   d pcont = G * ((1-λ) next_value + λ R[t+1]) = [17.625, 33.125, 52.5]
    #   d bootstrap = p[2] G[2] = 0.65625
    kw = dict(dtype=dtype, device=device)
    r = torch.tensor([1.0, 2.0, 3.0], **kw).requires_grad_()
    v = torch.tensor([10.0, 20.0, 30.0], **kw).requires_grad_()
    p = torch.tensor([0.5, 0.5, 0.5], **kw).requires_grad_()
    b = torch.tensor(40.0, **kw).requires_grad_()
    out = fn(r[:, None], v[:, None], p[:, None], b[None], 0.5)[:, 0]
    out.backward(torch.ones_like(out))
    # All inputs are exact in every dtype; the results are too except 33.125 in bf16
    # (9 significant bits), which the bf16 tolerance covers.
    exp = {
        "R": [9.8125, 15.25, 23.0],
        "reward": [1.0, 1.25, 1.3125],
        "value": [0.0, 0.25, 0.3125],
        "pcont": [17.625, 33.125, 52.5],
        "bootstrap": 0.65625,
    }
    got = {"R": out, "reward": r.grad, "value": v.grad, "pcont": p.grad, "bootstrap": b.grad}
    for name, e in exp.items():
        e = torch.tensor(e, dtype=torch.float64)
        assert_close_to_ref(got[name], e, dtype, name)


@pytest.mark.parametrize("fn", [reverse_scan, reverse_scan_ref], ids=["fast", "ref"])
@pytest.mark.parametrize("device", DEVICES)
def test_reverse_scan_hand_computed(device, fn):
    # R[2] = 3 + 0.5*8 = 7;  R[1] = 2 + 0.25*7 = 3.75;  R[0] = 1 + 0.5*3.75 = 2.875
    # G = [1, 1 + 0.5*1, 1 + 0.25*1.5] = [1, 1.5, 1.375]
    # d decay = G * R[t+1] = [3.75, 10.5, 11];  d init = decay[2] G[2] = 0.6875
    kw = dict(dtype=torch.float32, device=device)
    x = torch.tensor([[1.0], [2.0], [3.0]], **kw).requires_grad_()
    d = torch.tensor([[0.5], [0.25], [0.5]], **kw).requires_grad_()
    init = torch.tensor([8.0], **kw).requires_grad_()
    out = fn(x, d, init)
    out.sum().backward()
    cpu = lambda t: t.detach().cpu().flatten().tolist()  # noqa: E731
    assert cpu(out) == [2.875, 3.75, 7.0]
    assert cpu(x.grad) == [1.0, 1.5, 1.375]
    assert cpu(d.grad) == [3.75, 10.5, 11.0]
    assert cpu(init.grad) == [0.6875]


# --------------------------------------------------------------------------------------
# gradcheck (float64)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("lam", [0.0, 0.6, 1.0], ids=lambda v: f"lam{v}")
@pytest.mark.parametrize("T,batch,axis", [(1, (3,), 0), (5, (3,), 0), (4, (2, 3), 1),
                                          (6, (2,), -1)])
def test_lambda_return_gradcheck(T, batch, axis, lam, gen):
    args = [a.requires_grad_() for a in lambda_return_inputs(T, batch, axis, gen)]
    assert torch.autograd.gradcheck(
        lambda r, v, p, b: lambda_return(r, v, p, b, lam, axis), args)


@pytest.mark.parametrize("T,batch,axis", [(1, (3,), 0), (5, (3,), 0), (4, (2, 3), 1),
                                          (6, (2,), -1)])
def test_reverse_scan_gradcheck(T, batch, axis, gen):
    args = [a.requires_grad_() for a in reverse_scan_inputs(T, batch, axis, gen)]
    assert torch.autograd.gradcheck(lambda x, d, i: reverse_scan(x, d, i, axis), args)


def test_gradcheck_number_pcont_none_bootstrap(gen):
    r, v, _, _ = (a.requires_grad_() for a in lambda_return_inputs(5, (3,), 0, gen))
    assert torch.autograd.gradcheck(lambda r, v: lambda_return(r, v, 0.9, None, 0.7), (r, v))
    assert torch.autograd.gradcheck(lambda x: reverse_scan(x, 0.9, None), (r,))


# --------------------------------------------------------------------------------------
# torch.library.opcheck
# --------------------------------------------------------------------------------------

def _lr_samples():
    g = make_generator("opcheck-lr")
    samples = []
    for T, batch, dtype, lam, grad_mask in [
        (5, (3,), torch.float32, 0.95, (False,) * 4),
        (5, (3,), torch.float32, 0.95, (True,) * 4),
        (1, (2, 3), torch.float64, 0.0, (True, False, True, False)),
        (7, (4,), torch.float64, 1.0, (False, True, False, True)),
        (3, (2,), torch.bfloat16, 0.5, (True,) * 4),
    ]:
        r, v, p, b = lambda_return_inputs(T, batch, 0, g)
        args = [a.to(dtype).requires_grad_(m) for a, m in zip((r, v, p, b), grad_mask)]
        samples.append((*args, lam))
    return samples


def _rs_samples():
    g = make_generator("opcheck-rs")
    samples = []
    for T, batch, dtype, grad_mask in [
        (5, (3,), torch.float32, (False,) * 3),
        (5, (3,), torch.float32, (True,) * 3),
        (1, (2, 3), torch.float64, (True, False, True)),
        (6, (4,), torch.float16, (False, True, True)),
    ]:
        args = reverse_scan_inputs(T, batch, 0, g)
        samples.append(tuple(a.to(dtype).requires_grad_(m) for a, m in zip(args, grad_mask)))
    return samples


def test_opcheck_lambda_return():
    for sample in _lr_samples():
        torch.library.opcheck(torch.ops.dreamer_fast.lambda_return.default, sample)


def test_opcheck_reverse_scan():
    for sample in _rs_samples():
        torch.library.opcheck(torch.ops.dreamer_fast.reverse_scan.default, sample)


def test_opcheck_lambda_return_backward():
    for r, v, p, b, lam in _lr_samples():
        r, v, p, b = (a.detach() for a in (r, v, p, b))
        out = torch.ops.dreamer_fast.lambda_return(r, v, p, b, lam)
        grad = torch.randn(r.shape, generator=make_generator("g", r.shape)).to(r.dtype)
        torch.library.opcheck(torch.ops.dreamer_fast.lambda_return_backward.default,
                              (grad, v, p, b, out, lam))


def test_opcheck_reverse_scan_backward():
    for x, d, init in _rs_samples():
        x, d, init = (a.detach() for a in (x, d, init))
        out = torch.ops.dreamer_fast.reverse_scan(x, d, init)
        grad = torch.randn(x.shape, generator=make_generator("g", x.shape)).to(x.dtype)
        torch.library.opcheck(torch.ops.dreamer_fast.reverse_scan_backward.default,
                              (grad, d, init, out))


@pytest.mark.parametrize("device", DEVICES)
def test_direct_ops_match_public_ops(device, gen):
    r, v, p, b = (a.to(device) for a in lambda_return_inputs(8, (3, 2), 0, gen))
    torch.testing.assert_close(torch.ops.dreamer_fast.lambda_return(r, v, p, b, 0.9),
                               lambda_return(r, v, p, b, 0.9), rtol=0, atol=0)
    torch.testing.assert_close(torch.ops.dreamer_fast.reverse_scan(r, p, b),
                               reverse_scan(r, p, b), rtol=0, atol=0)


def test_meta_tensors_use_fake_kernels():
    r = torch.empty(3, 6, 4, device="meta")
    b = torch.empty(3, 4, device="meta")
    out = lambda_return(r, r, r, b, 0.9, axis=1)
    assert out.device.type == "meta" and out.shape == (3, 6, 4)
    out = reverse_scan(r, 0.9, None, axis=-1)
    assert out.device.type == "meta" and out.shape == (3, 6, 4)


# --------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------

# Importing inductor/aot_autograd touches torch.jit.script_method (deprecated in torch 2.13).
_IGNORE_JIT_DEPRECATION = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.mark.compile
@_IGNORE_JIT_DEPRECATION
def test_compile_lambda_return_inductor(gen):
    """fullgraph compile (inductor) of the public op plus surrounding ops, fwd + bwd."""
    torch._dynamo.reset()

    def f(reward, value, pcont, bootstrap):
        ret = lambda_return(reward * 2.0, value, pcont, bootstrap, 0.95, axis=1)
        return (ret - value).square().mean()

    args = lambda_return_inputs(16, (8,), 1, gen)
    args = [a.float() for a in args]
    leaves_e = [a.clone().requires_grad_() for a in args]
    leaves_c = [a.clone().requires_grad_() for a in args]
    loss_e = f(*leaves_e)
    loss_e.backward()
    loss_c = torch.compile(f, fullgraph=True)(*leaves_c)
    loss_c.backward()
    torch.testing.assert_close(loss_c, loss_e)
    for c, e in zip(leaves_c, leaves_e):
        torch.testing.assert_close(c.grad, e.grad)


@pytest.mark.compile
@_IGNORE_JIT_DEPRECATION
def test_compile_reverse_scan_aot_eager(gen):
    """fullgraph compile (aot_eager) with a Python-number decay and init=None."""
    torch._dynamo.reset()

    def f(x, pcont, value):
        ret = reverse_scan(x, 0.97, None, axis=-1)
        ret2 = lambda_return(x, value, pcont, None, 0.9, axis=-1)
        return ret, ret2

    x, p, _ = reverse_scan_inputs(10, (3, 5), -1, gen)
    v = randn(x.shape, gen)
    leaves_e = [a.clone().requires_grad_() for a in (x, p, v)]
    leaves_c = [a.clone().requires_grad_() for a in (x, p, v)]
    gout = randn(x.shape, gen)
    outs_e = f(*leaves_e)
    torch.autograd.backward(outs_e, (gout, gout))
    outs_c = torch.compile(f, fullgraph=True, backend="aot_eager")(*leaves_c)
    torch.autograd.backward(outs_c, (gout, gout))
    for c, e in zip(outs_c, outs_e):
        torch.testing.assert_close(c, e)
    for c, e in zip(leaves_c, leaves_e):
        torch.testing.assert_close(c.grad, e.grad)


# --------------------------------------------------------------------------------------
# NaN propagation
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0], ids=lambda v: f"lam{v}")
@pytest.mark.parametrize("fn", [lambda_return, lambda_return_ref], ids=["fast", "ref"])
@pytest.mark.parametrize("device", DEVICES)
def test_lambda_return_nan_propagates(device, fn, lam, gen):
    T, t_nan = 9, 4
    r, v, p, b = (a.to(device) for a in lambda_return_inputs(T, (5,), 0, gen, p_terminal=0.0))
    r[t_nan, 2] = float("nan")
    out = fn(r, v, p, b, lam).cpu()
    assert torch.isnan(out[: t_nan + 1, 2]).all(), out[:, 2]
    assert torch.isfinite(out[t_nan + 1:, 2]).all(), out[:, 2]
    assert torch.isfinite(out[:, [0, 1, 3, 4]]).all()
    # NaN in value[t] reaches R[0 .. t-1] through next_value[t-1] (also for λ = 1,
    # since 0 * NaN is NaN), and not R[t ..].
    r[t_nan, 2] = 0.0
    v[t_nan, 2] = float("nan")
    out = fn(r, v, p, b, lam).cpu()
    assert torch.isnan(out[:t_nan, 2]).all(), out[:, 2]
    assert torch.isfinite(out[t_nan:, 2]).all(), out[:, 2]


@pytest.mark.parametrize("fn", [reverse_scan, reverse_scan_ref], ids=["fast", "ref"])
@pytest.mark.parametrize("device", DEVICES)
def test_reverse_scan_nan_propagates(device, fn, gen):
    T, t_nan = 9, 4
    x, d, init = (a.to(device) for a in reverse_scan_inputs(T, (5,), 0, gen, p_terminal=0.0))
    x[t_nan, 2] = float("nan")
    out = fn(x, d, init).cpu()
    assert torch.isnan(out[: t_nan + 1, 2]).all(), out[:, 2]
    assert torch.isfinite(out[t_nan + 1:, 2]).all(), out[:, 2]
    assert torch.isfinite(out[:, [0, 1, 3, 4]]).all()


# --------------------------------------------------------------------------------------
# Argument errors (fast and ref raise the same type, naming the argument)
# --------------------------------------------------------------------------------------

def _lr_good():
    r, v, p, b = lambda_return_inputs(4, (3,), 0, make_generator("lr-good"))
    r, v, p, b = (a.float() for a in (r, v, p, b))
    return dict(reward=r, value=v, pcont=p, bootstrap=b, lambda_=0.95, axis=0)


def _rs_good():
    x, d, i = (a.float() for a in reverse_scan_inputs(4, (3,), 0, make_generator("rs-good")))
    return dict(inputs=x, decay=d, init=i, axis=0)


def _zero_length(kw, names, init_name):
    for n in names:
        kw[n] = torch.zeros(0, 3)
    kw[init_name] = torch.zeros(3)


def _zero_dim(kw, names, init_name):
    for n in names:
        kw[n] = torch.tensor(1.0)
    kw[init_name] = None


LR_SEQ = ("reward", "value", "pcont")
RS_SEQ = ("inputs", "decay")

LR_BAD = {
    "value-shape": (lambda kw: kw.update(value=torch.zeros(5, 3)), ValueError, "`value`"),
    "pcont-shape": (lambda kw: kw.update(pcont=torch.zeros(4, 2)), ValueError, "`pcont`"),
    "bootstrap-shape": (lambda kw: kw.update(bootstrap=torch.zeros(4)), ValueError,
                        "`bootstrap`"),
    "bootstrap-with-time": (lambda kw: kw.update(bootstrap=torch.zeros(4, 3)), ValueError,
                            "`bootstrap`"),
    "axis-too-big": (lambda kw: kw.update(axis=2), ValueError, "`axis`"),
    "axis-too-small": (lambda kw: kw.update(axis=-3), ValueError, "`axis`"),
    "axis-float": (lambda kw: kw.update(axis=0.0), TypeError, "`axis`"),
    "reward-int64": (lambda kw: kw.update(reward=torch.ones(4, 3, dtype=torch.int64)),
                     TypeError, "`reward`"),
    "value-int64": (lambda kw: kw.update(value=torch.ones(4, 3, dtype=torch.int64)),
                    TypeError, "`value`"),
    "pcont-bool-tensor": (lambda kw: kw.update(pcont=torch.ones(4, 3, dtype=torch.bool)),
                          TypeError, "`pcont`"),
    "pcont-python-bool": (lambda kw: kw.update(pcont=True), TypeError, "`pcont`"),
    "bootstrap-int64": (lambda kw: kw.update(bootstrap=torch.ones(3, dtype=torch.int64)),
                        TypeError, "`bootstrap`"),
    "value-float64": (lambda kw: kw.update(value=kw["value"].double()), TypeError, "`value`"),
    "pcont-float64": (lambda kw: kw.update(pcont=kw["pcont"].double()), TypeError, "`pcont`"),
    "bootstrap-float64": (lambda kw: kw.update(bootstrap=kw["bootstrap"].double()), TypeError,
                          "`bootstrap`"),
    "lambda-negative": (lambda kw: kw.update(lambda_=-0.1), ValueError, "`lambda_`"),
    "lambda-above-one": (lambda kw: kw.update(lambda_=1.5), ValueError, "`lambda_`"),
    "lambda-nan": (lambda kw: kw.update(lambda_=float("nan")), ValueError, "`lambda_`"),
    "lambda-str": (lambda kw: kw.update(lambda_="0.9"), TypeError, "`lambda_`"),
    "zero-length-time": (lambda kw: _zero_length(kw, LR_SEQ, "bootstrap"), ValueError,
                         "`reward`"),
    "zero-length-time-axis1": (lambda kw: kw.update(reward=torch.zeros(3, 0),
                                                    value=torch.zeros(3, 0),
                                                    pcont=torch.zeros(3, 0), axis=1),
                               ValueError, "`reward`"),
    "zero-dim": (lambda kw: _zero_dim(kw, LR_SEQ, "bootstrap"), ValueError, "`reward`"),
    "reward-list": (lambda kw: kw.update(reward=kw["reward"].tolist()), TypeError, "`reward`"),
    "reward-none": (lambda kw: kw.update(reward=None), TypeError, "`reward`"),
    "value-meta": (lambda kw: kw.update(value=kw["value"].to("meta")), ValueError, "`value`"),
    "pcont-meta": (lambda kw: kw.update(pcont=kw["pcont"].to("meta")), ValueError, "`pcont`"),
    "bootstrap-meta": (lambda kw: kw.update(bootstrap=kw["bootstrap"].to("meta")), ValueError,
                       "`bootstrap`"),
}

RS_BAD = {
    "decay-shape": (lambda kw: kw.update(decay=torch.zeros(5, 3)), ValueError, "`decay`"),
    "init-shape": (lambda kw: kw.update(init=torch.zeros(4)), ValueError, "`init`"),
    "axis-too-big": (lambda kw: kw.update(axis=2), ValueError, "`axis`"),
    "axis-too-small": (lambda kw: kw.update(axis=-3), ValueError, "`axis`"),
    "inputs-int64": (lambda kw: kw.update(inputs=torch.ones(4, 3, dtype=torch.int64)),
                     TypeError, "`inputs`"),
    "decay-int64": (lambda kw: kw.update(decay=torch.ones(4, 3, dtype=torch.int64)),
                    TypeError, "`decay`"),
    "decay-float64": (lambda kw: kw.update(decay=kw["decay"].double()), TypeError, "`decay`"),
    "init-float64": (lambda kw: kw.update(init=kw["init"].double()), TypeError, "`init`"),
    "zero-length-time": (lambda kw: _zero_length(kw, RS_SEQ, "init"), ValueError, "`inputs`"),
    "zero-dim": (lambda kw: _zero_dim(kw, RS_SEQ, "init"), ValueError, "`inputs`"),
    "inputs-list": (lambda kw: kw.update(inputs=kw["inputs"].tolist()), TypeError,
                    "`inputs`"),
    "decay-meta": (lambda kw: kw.update(decay=kw["decay"].to("meta")), ValueError, "`decay`"),
    "init-meta": (lambda kw: kw.update(init=kw["init"].to("meta")), ValueError, "`init`"),
}


@pytest.mark.parametrize("case", list(LR_BAD))
def test_lambda_return_bad_inputs(case):
    mutate, exc, match = LR_BAD[case]
    kwargs = _lr_good()
    mutate(kwargs)
    assert_both_raise(lambda_return, lambda_return_ref, kwargs, exc, match)


@pytest.mark.parametrize("case", list(RS_BAD))
def test_reverse_scan_bad_inputs(case):
    mutate, exc, match = RS_BAD[case]
    kwargs = _rs_good()
    mutate(kwargs)
    assert_both_raise(reverse_scan, reverse_scan_ref, kwargs, exc, match)


@pytest.mark.parametrize("other", ["meta", pytest.param("cuda", marks=requires_cuda)])
def test_device_mismatch(other):
    """Tensors on two devices (meta stands in for a second device on CPU machines)."""
    kw = _lr_good()
    kw["value"] = kw["value"].to(other)
    assert_both_raise(lambda_return, lambda_return_ref, kw, ValueError, "`value`")
    kw = _lr_good()
    kw["reward"] = kw["reward"].to(other)
    assert_both_raise(lambda_return, lambda_return_ref, kw, ValueError, "`value`")
    kw = _rs_good()
    kw["init"] = kw["init"].to(other)
    assert_both_raise(reverse_scan, reverse_scan_ref, kw, ValueError, "`init`")


def test_valid_edge_arguments_accepted():
    """λ at the interval ends, an int λ, axis = -ndim."""
    kw = _lr_good()
    for lam in (0, 1, 0.0, 1.0):
        kw["lambda_"] = lam
        torch.testing.assert_close(lambda_return(**kw), lambda_return_ref(**kw))
    kw["axis"] = -2
    torch.testing.assert_close(lambda_return(**kw), lambda_return_ref(**kw))


# Direct torch.ops calls skip the Python checks; the C++ TORCH_CHECKs name the argument.
def _direct_lr(r=None, v=None, p=None, b=None, lam=0.9):
    d = _lr_good()
    return (d["reward"] if r is None else r, d["value"] if v is None else v,
            d["pcont"] if p is None else p, d["bootstrap"] if b is None else b, lam)


def _direct_rs(x=None, d=None, i=None):
    g = _rs_good()
    return (g["inputs"] if x is None else x, g["decay"] if d is None else d,
            g["init"] if i is None else i)


DIRECT_BAD = {
    "lr-value-shape": ("lambda_return", lambda: _direct_lr(v=torch.zeros(5, 3)), "`value`"),
    "lr-pcont-shape": ("lambda_return", lambda: _direct_lr(p=torch.zeros(4, 2)), "`pcont`"),
    "lr-bootstrap-shape": ("lambda_return", lambda: _direct_lr(b=torch.zeros(4)),
                           "`bootstrap`"),
    "lr-value-dtype": ("lambda_return", lambda: _direct_lr(v=torch.zeros(4, 3).double()),
                       "`value`"),
    "lr-bootstrap-dtype": ("lambda_return", lambda: _direct_lr(b=torch.zeros(3).double()),
                           "`bootstrap`"),
    "lr-reward-int": ("lambda_return",
                      lambda: _direct_lr(*(torch.zeros(4, 3, dtype=torch.int64),) * 3,
                                         b=torch.zeros(3, dtype=torch.int64)), "`reward`"),
    "lr-lambda": ("lambda_return", lambda: _direct_lr(lam=1.5), "`lambda_`"),
    "lr-lambda-nan": ("lambda_return", lambda: _direct_lr(lam=float("nan")), "`lambda_`"),
    "lr-zero-length": ("lambda_return",
                       lambda: _direct_lr(*(torch.zeros(0, 3),) * 3, b=torch.zeros(3)),
                       "`reward`"),
    "lr-zero-dim": ("lambda_return",
                    lambda: _direct_lr(*(torch.tensor(1.0),) * 3, b=torch.tensor(1.0)),
                    "`reward`"),
    "rs-decay-shape": ("reverse_scan", lambda: _direct_rs(d=torch.zeros(4, 2)), "`decay`"),
    "rs-init-shape": ("reverse_scan", lambda: _direct_rs(i=torch.zeros(4, 3)), "`init`"),
    "rs-decay-dtype": ("reverse_scan", lambda: _direct_rs(d=torch.zeros(4, 3).double()),
                       "`decay`"),
    "rs-inputs-int": ("reverse_scan",
                      lambda: _direct_rs(*(torch.zeros(4, 3, dtype=torch.int64),) * 2,
                                         i=torch.zeros(3, dtype=torch.int64)), "`inputs`"),
    "rs-decay-meta": ("reverse_scan", lambda: _direct_rs(d=torch.zeros(4, 3, device="meta")),
                      "`decay`"),
    # All-meta inputs run the fake kernel alone (as torch.compile tracing does): it must
    # reject what the C++ kernel rejects.
    "lr-all-meta-shape": ("lambda_return",
                          lambda: (torch.zeros(4, 3, device="meta"),
                                   torch.zeros(5, 7, device="meta"),
                                   torch.zeros(4, 3, device="meta"),
                                   torch.zeros(3, device="meta"), 0.9), "`value`"),
    "lr-all-meta-lambda": ("lambda_return",
                           lambda: (*(torch.zeros(4, 3, device="meta"),) * 3,
                                    torch.zeros(3, device="meta"), 1.5), "`lambda_`"),
    "rs-all-meta-init": ("reverse_scan",
                         lambda: (*(torch.zeros(4, 3, device="meta"),) * 2,
                                  torch.zeros(2, device="meta")), "`init`"),
}


@pytest.mark.parametrize("case", list(DIRECT_BAD))
def test_direct_op_errors(case):
    op_name, make_args, match = DIRECT_BAD[case]
    op = getattr(torch.ops.dreamer_fast, op_name)
    with pytest.raises(RuntimeError, match=match):
        op(*make_args())


def test_direct_backward_op_errors():
    r, v, p, b, lam = _direct_lr()
    out = torch.ops.dreamer_fast.lambda_return(r, v, p, b, lam)
    with pytest.raises(RuntimeError, match="`value`"):
        torch.ops.dreamer_fast.lambda_return_backward(out, v[:3], p, b, out, lam)
    with pytest.raises(RuntimeError, match="`out`"):
        torch.ops.dreamer_fast.lambda_return_backward(out, v, p, b, out.double(), lam)
    with pytest.raises(RuntimeError, match="`bootstrap`"):
        torch.ops.dreamer_fast.lambda_return_backward(out, v, p, b[:2], out, lam)
    with pytest.raises(RuntimeError, match="`lambda_`"):
        torch.ops.dreamer_fast.lambda_return_backward(out, v, p, b, out, -0.5)
    x, d, i = _direct_rs()
    out = torch.ops.dreamer_fast.reverse_scan(x, d, i)
    with pytest.raises(RuntimeError, match="`out`"):
        torch.ops.dreamer_fast.reverse_scan_backward(out, d, i, out[:, :2])
    with pytest.raises(RuntimeError, match="`init`"):
        torch.ops.dreamer_fast.reverse_scan_backward(out, d, i[None], out)


# --------------------------------------------------------------------------------------
# CUDA-only
# --------------------------------------------------------------------------------------

@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("axis", [0, 1], ids=lambda v: f"ax{v}")
def test_lambda_return_cuda_graph_capture_replay(axis):
    gen = make_generator("cuda-graph", axis)
    T, batch = 33, (4, 50)
    static = [a.float().cuda() for a in lambda_return_inputs(T, batch, axis, gen)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm up outside the capture
            lambda_return(*static, 0.95, axis)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = lambda_return(*static, 0.95, axis)
    for _ in range(2):  # replay on fresh values copied into the captured inputs
        fresh = lambda_return_inputs(T, batch, axis, gen)
        for s, f in zip(static, fresh):
            s.copy_(f.float())
        graph.replay()
        torch.cuda.synchronize()
        ref = lambda_return_ref(*[f.float().double() for f in fresh], 0.95, axis)
        assert_close_to_ref(out, ref, torch.float32, "graph replay")


@requires_cuda
@pytest.mark.cuda
def test_cuda_result_stays_on_current_device_stream(gen):
    r, v, p, b = (a.float().cuda() for a in lambda_return_inputs(8, (3,), 0, gen))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = lambda_return(r, v, p, b, 0.9)
        out2 = reverse_scan(r, p, b)
    stream.synchronize()
    assert out.device == r.device and out2.device == r.device
    torch.testing.assert_close(out.cpu(), lambda_return(r.cpu(), v.cpu(), p.cpu(), b.cpu(), 0.9))


# --------------------------------------------------------------------------------------
# Missing / partial extension
# --------------------------------------------------------------------------------------

def test_missing_extension_error(monkeypatch, gen):
    monkeypatch.setattr(_extension, "_C", None)
    monkeypatch.setattr(_extension, "_IMPORT_ERROR",
                        ImportError("simulated: undefined symbol _ZN3c10"))
    assert not dreamer_fast.has_extension()
    assert not dreamer_fast.has_cuda_kernels()
    assert isinstance(dreamer_fast.extension_error(), ImportError)
    r, v, p, b = lambda_return_inputs(5, (3,), 0, gen)
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation") as info:
        lambda_return(r, v, p, b, 0.9)
    assert "simulated: undefined symbol" in str(info.value)
    assert "lambda_return" in str(info.value)
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation"):
        reverse_scan(r, p, b)
    # The references do not need the extension.
    torch.testing.assert_close(lambda_return_ref(r, v, p, b, 1.0), _discounted_sum(r, p, b))
    torch.testing.assert_close(reverse_scan_ref(r, p, b), _discounted_sum(r, p, b))
    # Argument errors still come first, and identically, from both.
    with pytest.raises(ValueError, match="`lambda_`"):
        lambda_return(r, v, p, b, 2.0)


def test_extension_without_cuda_kernels_rejects_cuda(monkeypatch):
    monkeypatch.setattr(_extension, "_C", types.SimpleNamespace(cuda_kernels_built=False))
    assert not dreamer_fast.has_cuda_kernels()
    with pytest.raises(RuntimeError, match="without CUDA kernels"):
        _extension.require_device_kernels("lambda_return", torch.device("cuda"))
    _extension.require_device_kernels("lambda_return", torch.device("cpu"))
    with pytest.raises(RuntimeError, match="no fast kernel for device type 'mps'"):
        _extension.require_device_kernels("lambda_return", torch.device("mps"))
