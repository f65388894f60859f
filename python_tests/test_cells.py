"""Tests of the recurrent cells: dreamer_fast.ops.gru_cell / ln_gru_cell.

* gru_cell is compared with torch.nn.GRUCell itself (float64) and with gru_cell_ref.
* ln_gru_cell is compared with an independent implementation of the equations written
  in this file (``_ln_gru_equations``), and with ln_gru_cell_ref.
Values and gradients of every input and weight, for float32/float64 on CPU (plus
bf16/fp16 on CUDA when present).
"""

from __future__ import annotations

import math

import pytest
import torch

import dreamer_fast
from dreamer_fast.ops import gru_cell, gru_cell_ref, ln_gru_cell, ln_gru_cell_ref
from conftest import CUDA_PARAM, DEVICES, assert_close_to_ref, make_generator, requires_cuda

BATCHES = [1, 37, 256]
DETERS = [96, 200, 512]
INPUT_SIZE = 45  # not a multiple of 8 on purpose


def _device_dtypes():
    out = [pytest.param("cpu", torch.float32, id="cpu-f32"),
           pytest.param("cpu", torch.float64, id="cpu-f64")]
    for dt, name in [(torch.float32, "f32"), (torch.bfloat16, "bf16"), (torch.float16, "f16")]:
        out.append(pytest.param("cuda", dt, id=f"cuda-{name}",
                                marks=[requires_cuda, pytest.mark.cuda]))
    return out


# ---- tensors ---------------------------------------------------------------------------

def _gru_tensors(B, I, H, gen):
    """float64 inputs: input, hx, weight_ih, weight_hh, bias_ih, bias_hh."""
    k = 1 / math.sqrt(H)
    u = lambda *s: (torch.rand(*s, generator=gen, dtype=torch.float64) * 2 - 1) * k
    return [torch.randn(B, I, generator=gen, dtype=torch.float64),
            torch.randn(B, H, generator=gen, dtype=torch.float64) * 0.5,
            u(3 * H, I), u(3 * H, H), u(3 * H), u(3 * H)]


def _ln_gru_tensors(B, I, H, gen):
    """float64 inputs: input, hx, weight, norm_weight, norm_bias."""
    k = 1 / math.sqrt(I + H)
    return [torch.randn(B, I, generator=gen, dtype=torch.float64),
            torch.randn(B, H, generator=gen, dtype=torch.float64) * 0.5,
            (torch.rand(3 * H, I + H, generator=gen, dtype=torch.float64) * 2 - 1) * k,
            1 + 0.2 * torch.randn(3 * H, generator=gen, dtype=torch.float64),
            0.2 * torch.randn(3 * H, generator=gen, dtype=torch.float64)]


def _ln_gru_equations(x, h, W, gamma, beta, update_bias=-1.0, eps=1e-3):
    """The LN-GRU equations of the issue, written out independently of the package."""
    parts = torch.cat([x, h], -1) @ W.T
    mean = parts.mean(-1, keepdim=True)
    var = ((parts - mean) ** 2).mean(-1, keepdim=True)
    y = (parts - mean) / torch.sqrt(var + eps) * gamma + beta
    H = h.shape[-1]
    reset, cand, update = y[..., :H], y[..., H:2 * H], y[..., 2 * H:]
    reset = 1 / (1 + torch.exp(-reset))
    cand = torch.tanh(reset * cand)
    update = 1 / (1 + torch.exp(-(update + update_bias)))
    return update * cand + (1 - update) * h


def _grads(fn, args, gout):
    leaves = [a.detach().requires_grad_(True) for a in args]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, gout.to(out.dtype))
    return out, grads


def _compare(fast_fn, ref_fn, args64, dtype, device, gen, names):
    """fast(args in dtype on device) vs ref_fn(args64): values and every gradient."""
    gout64 = torch.randn(args64[1].shape, generator=gen, dtype=torch.float64)
    out64, grads64 = _grads(ref_fn, args64, gout64)
    args = [a.to(device=device, dtype=dtype) for a in args64]
    out, grads = _grads(fast_fn, args, gout64.to(device))
    assert_close_to_ref(out, out64, dtype, "output")
    for name, g, g64 in zip(names, grads, grads64):
        assert_close_to_ref(g, g64, dtype, f"d {name}")


# ---- gru_cell --------------------------------------------------------------------------

GRU_NAMES = ["input", "hx", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
LN_NAMES = ["input", "hx", "weight", "norm_weight", "norm_bias"]


def _torch_gru(x, h, w_ih, w_hh, b_ih, b_hh):
    cell = torch.nn.GRUCell(x.shape[-1], h.shape[-1], dtype=x.dtype, device=x.device)
    # Bind the given tensors as the cell's parameters (keeps them differentiable).
    return torch.func.functional_call(
        cell, {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih, "bias_hh": b_hh}, (x, h))


@pytest.mark.parametrize("H", DETERS)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("device,dtype", _device_dtypes())
def test_gru_cell_matches_torch_grucell(device, dtype, B, H):
    gen = make_generator("gru", B, H)
    args = _gru_tensors(B, INPUT_SIZE, H, gen)
    _compare(gru_cell, _torch_gru, args, dtype, device, gen, GRU_NAMES)


@pytest.mark.parametrize("B", [1, 37])
@pytest.mark.parametrize("device", DEVICES)
def test_gru_cell_ref_matches_torch_grucell(device, B):
    gen = make_generator("gru-ref", B)
    args = _gru_tensors(B, 13, 24, gen)
    _compare(gru_cell_ref, _torch_gru, args, torch.float64, device, gen, GRU_NAMES)


@pytest.mark.parametrize("device", DEVICES)
def test_gru_cell_without_bias_and_without_state(device):
    gen = make_generator("gru-nobias")
    x, h, w_ih, w_hh, _, _ = _gru_tensors(5, 7, 16, gen)
    x, w_ih, w_hh = (t.to(device) for t in (x, w_ih, w_hh))
    out = gru_cell(x, None, w_ih, w_hh)
    ref = gru_cell_ref(x, torch.zeros(5, 16, dtype=x.dtype, device=device), w_ih, w_hh)
    torch.testing.assert_close(out, ref)
    # bias-free gradients come back as None for the missing biases through the module
    cell = dreamer_fast.nn.GRUCell(7, 16, bias=False, dtype=torch.float64, device=device)
    cell(x).sum().backward()
    assert cell.weight_ih.grad is not None and cell.bias_ih is None


@pytest.mark.parametrize("device", DEVICES)
def test_gru_cell_leading_dims_and_unbatched(device):
    gen = make_generator("gru-dims")
    x, h, *w = _gru_tensors(6, 9, 12, gen)
    x, h, w = x.to(device), h.to(device), [t.to(device) for t in w]
    out = gru_cell(x.reshape(2, 3, 9), h.reshape(2, 3, 12), *w)
    torch.testing.assert_close(out.reshape(6, 12), gru_cell_ref(x, h, *w))
    torch.testing.assert_close(gru_cell(x[0], h[0], *w), gru_cell_ref(x[:1], h[:1], *w)[0])


@pytest.mark.parametrize("device", DEVICES)
def test_grucell_module_is_drop_in(device):
    torch.manual_seed(0)
    ours = dreamer_fast.nn.GRUCell(11, 20, device=device)
    theirs = torch.nn.GRUCell(11, 20, device=device)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    x, h = torch.randn(4, 11, device=device), torch.randn(4, 20, device=device)
    torch.testing.assert_close(ours(x, h), theirs(x, h), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


# ---- ln_gru_cell -----------------------------------------------------------------------

@pytest.mark.parametrize("H", DETERS)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("device,dtype", _device_dtypes())
def test_ln_gru_cell_matches_equations(device, dtype, B, H):
    gen = make_generator("lngru", B, H)
    args = _ln_gru_tensors(B, INPUT_SIZE, H, gen)
    _compare(ln_gru_cell, _ln_gru_equations, args, dtype, device, gen, LN_NAMES)


@pytest.mark.parametrize("update_bias,eps", [(0.0, 1e-5), (-2.5, 0.1)])
@pytest.mark.parametrize("device", DEVICES)
def test_ln_gru_cell_options(device, update_bias, eps):
    gen = make_generator("lngru-opts", update_bias)
    args = _ln_gru_tensors(9, 10, 32, gen)
    _compare(lambda *a: ln_gru_cell(*a, update_bias=update_bias, eps=eps),
             lambda *a: _ln_gru_equations(*a, update_bias=update_bias, eps=eps),
             args, torch.float64, device, gen, LN_NAMES)


@pytest.mark.parametrize("device", DEVICES)
def test_ln_gru_cell_ref_matches_equations(device):
    gen = make_generator("lngru-ref")
    args = _ln_gru_tensors(7, 10, 32, gen)
    _compare(ln_gru_cell_ref, _ln_gru_equations, args, torch.float64, device, gen, LN_NAMES)


def test_ln_gru_large_row_mean_is_stable():
    """Rows with a large common offset: the two-pass variance keeps float32 accurate."""
    gen = make_generator("lngru-offset")
    x, h, W, g, b = _ln_gru_tensors(8, 16, 32, gen)
    W[:, 0] = 50.0  # every part gets +50 * x[:, 0]
    x[:, 0] = 20.0
    out = ln_gru_cell(*(t.float() for t in (x, h, W, g, b)))
    # The parts are ~1000 with a spread of ~1: float32 GEMM rounding alone costs ~1e-4
    # after normalisation, while a one-pass E[x²] − E[x]² variance would be off by ~5%.
    torch.testing.assert_close(out.double(), _ln_gru_equations(x, h, W, g, b),
                               rtol=0, atol=2e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_lngrucell_module(device):
    torch.manual_seed(0)
    cell = dreamer_fast.nn.LNGRUCell(10, 24, device=device, dtype=torch.float64)
    ref = dreamer_fast.nn.LNGRUCell(10, 24, device=device, dtype=torch.float64, backend="ref")
    ref.load_state_dict(cell.state_dict())
    x = torch.randn(3, 10, device=device, dtype=torch.float64)
    torch.testing.assert_close(cell(x), ref(x))
    assert set(cell.state_dict()) == {"weight", "norm_weight", "norm_bias"}


# ---- layouts, gradcheck, opcheck, compile ------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_noncontiguous_inputs(device):
    gen = make_generator("noncontig")
    x, h, *w = [t.to(device) for t in _gru_tensors(6, 9, 12, gen)]
    xt = torch.randn(9, 6, dtype=torch.float64, device=device).T  # transposed view
    ht = h.T.contiguous().T
    w_ih_nc = torch.cat([w[0], w[0]], 1)[:, ::2]  # strided columns
    torch.testing.assert_close(gru_cell(xt, ht, w_ih_nc, *w[1:]),
                               gru_cell_ref(xt.contiguous(), h, w_ih_nc.contiguous(), *w[1:]))
    xl, hl, W, g, b = [t.to(device) for t in _ln_gru_tensors(6, 9, 12, gen)]
    Wt = W.T.contiguous().T
    torch.testing.assert_close(ln_gru_cell(xl[::1].T.contiguous().T, hl, Wt, g, b),
                               ln_gru_cell_ref(xl, hl, W, g, b))


def test_gradcheck():
    gen = make_generator("gradcheck")
    args = [a.requires_grad_() for a in _gru_tensors(3, 5, 4, gen)]
    assert torch.autograd.gradcheck(gru_cell, tuple(args))
    args = [a.requires_grad_() for a in _ln_gru_tensors(3, 5, 4, gen)]
    assert torch.autograd.gradcheck(ln_gru_cell, tuple(args))


def test_opcheck():
    gen = make_generator("opcheck")
    x, h, w_ih, w_hh, b_ih, b_hh = _gru_tensors(4, 5, 6, gen)
    for rg in (False, True):
        args = [t.clone().requires_grad_(rg) for t in (x, h, w_ih, w_hh, b_ih, b_hh)]
        torch.library.opcheck(torch.ops.dreamer_fast.gru_cell.default, tuple(args))
        torch.library.opcheck(torch.ops.dreamer_fast.gru_cell.default, (*args[:4], None, None))
    hy, ws = torch.ops.dreamer_fast.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)
    torch.library.opcheck(torch.ops.dreamer_fast.gru_cell_backward.default,
                          (torch.randn_like(hy), ws, x, h, w_ih, w_hh))
    x, h, W, g, b = _ln_gru_tensors(4, 5, 6, gen)
    for rg in (False, True):
        args = [t.clone().requires_grad_(rg) for t in (x, h, W, g, b)]
        torch.library.opcheck(torch.ops.dreamer_fast.ln_gru_cell.default, (*args, -1.0, 1e-3))
    hy, parts, stats = torch.ops.dreamer_fast.ln_gru_cell(x, h, W, g, b, -1.0, 1e-3)
    torch.library.opcheck(torch.ops.dreamer_fast.ln_gru_cell_backward.default,
                          (torch.randn_like(hy), parts, stats, x, h, W, g, b, -1.0))


@pytest.mark.compile
def test_torch_compile_fullgraph():
    gen = make_generator("compile")
    gru_args = [a.float().requires_grad_() for a in _gru_tensors(8, 5, 6, gen)]
    ln_args = [a.float().requires_grad_() for a in _ln_gru_tensors(8, 5, 6, gen)]

    def step(ga, la):
        return gru_cell(*ga).sum() + ln_gru_cell(*la).square().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager_loss = step(gru_args, ln_args)
    eager_grads = torch.autograd.grad(eager_loss, gru_args + ln_args)
    loss = compiled(gru_args, ln_args)
    grads = torch.autograd.grad(loss, gru_args + ln_args)
    torch.testing.assert_close(loss, eager_loss)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)


# ---- bad input ---------------------------------------------------------------------------

def _gru_bad_cases():
    x, h = torch.randn(4, 5), torch.randn(4, 6)
    w_ih, w_hh, b = torch.randn(18, 5), torch.randn(18, 6), torch.randn(18)
    return {
        "input-size": ((torch.randn(4, 7), h, w_ih, w_hh), ValueError, "weight_ih"),
        "hidden-size": ((x, torch.randn(4, 5), w_ih, w_hh), ValueError, "hx"),
        "batch": ((x, torch.randn(3, 6), w_ih, w_hh), ValueError, "hx"),
        "w_hh-shape": ((x, h, w_ih, torch.randn(18, 5)), ValueError, "weight_hh"),
        "bias-shape": ((x, h, w_ih, w_hh, torch.randn(17)), ValueError, "bias_ih"),
        "int-input": ((x.long(), h, w_ih, w_hh), TypeError, "input"),
        "dtype-mix": ((x, h.double(), w_ih, w_hh), TypeError, "hx"),
        "weight-dtype": ((x, h, w_ih.double(), w_hh), TypeError, "weight_ih"),
        "device-mix": ((x, h, w_ih, w_hh.to("meta")), ValueError, "weight_hh"),
        "0-dim": ((torch.tensor(1.0), None, w_ih, w_hh), ValueError, "input"),
    }


@pytest.mark.parametrize("case", list(_gru_bad_cases()))
@pytest.mark.parametrize("fn", [gru_cell, gru_cell_ref], ids=["fast", "ref"])
def test_gru_cell_bad_input(fn, case):
    args, exc, name = _gru_bad_cases()[case]
    with pytest.raises(exc, match=f"`{name}`"):
        fn(*args)


def _ln_bad_cases():
    x, h = torch.randn(4, 5), torch.randn(4, 6)
    W, g, b = torch.randn(18, 11), torch.ones(18), torch.zeros(18)
    return {
        "input-size": ((torch.randn(4, 7), h, W, g, b), ValueError, "weight"),
        "weight-rows": ((x, h, torch.randn(17, 11), g, b), ValueError, "weight"),
        "hidden-size": ((x, torch.randn(4, 7), W, g, b), ValueError, "weight"),
        "norm-shape": ((x, h, W, torch.ones(6), b), ValueError, "norm_weight"),
        "bias-shape": ((x, h, W, g, torch.zeros(19)), ValueError, "norm_bias"),
        "batch": ((x, torch.randn(2, 6), W, g, b), ValueError, "hx"),
        "int-weight": ((x, h, W.long(), g, b), TypeError, "weight"),
        "dtype-mix": ((x, h, W, g.double(), b), TypeError, "norm_weight"),
        "eps": ((x, h, W, g, b, -1.0, 0.0), ValueError, "eps"),
    }


@pytest.mark.parametrize("case", list(_ln_bad_cases()))
@pytest.mark.parametrize("fn", [ln_gru_cell, ln_gru_cell_ref], ids=["fast", "ref"])
def test_ln_gru_cell_bad_input(fn, case):
    args, exc, name = _ln_bad_cases()[case]
    with pytest.raises(exc, match=f"`{name}`"):
        fn(*args)


def test_direct_op_errors():
    x, h = torch.randn(4, 5), torch.randn(4, 6)
    with pytest.raises(RuntimeError, match="`weight_ih`"):
        torch.ops.dreamer_fast.gru_cell(x, h, torch.randn(18, 4), torch.randn(18, 6), None, None)
    with pytest.raises(RuntimeError, match="`norm_bias`"):
        torch.ops.dreamer_fast.ln_gru_cell(x, h, torch.randn(18, 11), torch.ones(18),
                                           torch.zeros(3), -1.0, 1e-3)
    with pytest.raises(RuntimeError, match="`hx`"):  # fake kernel path (meta input)
        torch.ops.dreamer_fast.gru_cell(x.to("meta"), torch.randn(3, 6, device="meta"),
                                        torch.randn(18, 5, device="meta"),
                                        torch.randn(18, 6, device="meta"), None, None)


def test_module_backend_argument():
    with pytest.raises(ValueError, match="`backend`"):
        dreamer_fast.nn.GRUCell(3, 4, backend="cuda")
