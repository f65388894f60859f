"""Tests of the reverse-time scans: ``lambda_return`` and ``reverse_scan``.

The generic checks come from the op-contract harness (``op_contract.py``): each op's
contract generates the fast-vs-reference grid (float64 reference on the same values,
every gradient; float64/float32 on the CPU, bf16/fp16 and every CUDA dtype on a smaller
grid, wide batches on every device), non-contiguous and empty inputs, gradcheck,
opcheck of the native forward and backward ops, torch.compile and the argument errors.
The op-specific behaviour stays as plain tests: closed forms and hand-computed values,
Python-number ``pcont``/``decay`` and ``None`` bootstrap/init, NaN propagation, the
native backward ops' checks, CUDA graphs and streams, the missing-extension path. The
last section runs the harness on deliberately broken ops: each generated check must
fail on them.

None of these tests skip when the extension is missing: the fast ops then raise the
rebuild hint and the tests fail, which is what a broken build should do.
"""

from __future__ import annotations

import dataclasses
import math
import types

import pytest
import torch

import dreamer_fast
from dreamer_fast import _extension
from dreamer_fast.ops import lambda_return, lambda_return_ref, reverse_scan, reverse_scan_ref

from conftest import (
    DEVICES,
    Bad,
    DirectBad,
    OpContract,
    assert_both_raise,
    assert_close_to_ref,
    check_bad_input,
    check_compile,
    check_direct_bad,
    check_empty,
    check_gradcheck,
    check_matches_ref,
    check_noncontiguous,
    check_opcheck,
    contract_tests,
    dtype_id,
    make_generator,
    rand_pcont,
    randn,
    requires_cuda,
    time_shape,
)


# --------------------------------------------------------------------------------------
# Input builders
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


@dataclasses.dataclass(frozen=True)
class Case:
    """A scan call: T steps, batch shape, time axis, λ (lambda_return only); ``number``:
    pcont/decay as this Python number and bootstrap/init None."""
    T: int
    batch: tuple[int, ...]
    axis: int = 0
    lam: float = 0.95
    number: float | None = None


def _to(ts, dtype, device):
    return [t.to(device=device, dtype=dtype) for t in ts]


def build_lambda_return(case: Case, dtype, device, gen) -> dict:
    r, v, p, b = _to(lambda_return_inputs(case.T, case.batch, case.axis, gen), dtype, device)
    if case.number is not None:
        p, b = case.number, None
    return dict(reward=r, value=v, pcont=p, bootstrap=b, lambda_=case.lam, axis=case.axis)


def build_reverse_scan(case: Case, dtype, device, gen) -> dict:
    x, d, i = _to(reverse_scan_inputs(case.T, case.batch, case.axis, gen), dtype, device)
    if case.number is not None:
        d, i = case.number, None
    return dict(inputs=x, decay=d, init=i, axis=case.axis)


def _grad_like(x: torch.Tensor) -> torch.Tensor:
    return torch.randn(x.shape, generator=make_generator("g", x.shape)).to(x.dtype)


def native_lambda_return(kw: dict) -> list:
    """The native forward and backward calls (time-major inputs: axis 0)."""
    assert kw["axis"] == 0
    args = (kw["reward"], kw["value"], kw["pcont"], kw["bootstrap"], kw["lambda_"])
    r, v, p, b, lam = (a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    out = torch.ops.dreamer_fast.lambda_return(r, v, p, b, lam)
    return [(torch.ops.dreamer_fast.lambda_return.default, args),
            (torch.ops.dreamer_fast.lambda_return_backward.default,
             (_grad_like(r), v, p, b, out, lam))]


def native_reverse_scan(kw: dict) -> list:
    assert kw["axis"] == 0
    args = (kw["inputs"], kw["decay"], kw["init"])
    x, d, i = (a.detach() for a in args)
    out = torch.ops.dreamer_fast.reverse_scan(x, d, i)
    return [(torch.ops.dreamer_fast.reverse_scan.default, args),
            (torch.ops.dreamer_fast.reverse_scan_backward.default, (_grad_like(x), d, i, out))]


def _finite_ref(outs, refs, kwargs, dtype):
    assert torch.isfinite(refs[0]).all(), "the reference is not finite on these inputs"


# --------------------------------------------------------------------------------------
# Argument errors (fast and ref raise the same type, naming the argument)
# --------------------------------------------------------------------------------------

def _zero_length(names, init_name):
    def mutate(kw):
        for n in names:
            kw[n] = torch.zeros(0, 3)
        kw[init_name] = torch.zeros(3)
    return mutate


def _zero_dim(names, init_name):
    def mutate(kw):
        for n in names:
            kw[n] = torch.tensor(1.0)
        kw[init_name] = None
    return mutate


def _set(**changes):
    """Set arguments; a callable value is applied to the argument's valid value."""
    def mutate(kw):
        for k, v in changes.items():
            kw[k] = v(kw[k]) if callable(v) else v
    return mutate


def _bad(table):
    return tuple(Bad(id, mutate, exc, arg) for id, (mutate, exc, arg) in table.items())


i64 = dict(dtype=torch.int64)
LR_SEQ = ("reward", "value", "pcont")
RS_SEQ = ("inputs", "decay")

LR_BAD = _bad({
    "value-shape": (_set(value=torch.zeros(5, 3)), ValueError, "value"),
    "pcont-shape": (_set(pcont=torch.zeros(4, 2)), ValueError, "pcont"),
    "bootstrap-shape": (_set(bootstrap=torch.zeros(4)), ValueError, "bootstrap"),
    "bootstrap-with-time": (_set(bootstrap=torch.zeros(4, 3)), ValueError, "bootstrap"),
    "axis-too-big": (_set(axis=2), ValueError, "axis"),
    "axis-too-small": (_set(axis=-3), ValueError, "axis"),
    "axis-float": (_set(axis=0.0), TypeError, "axis"),
    "reward-int64": (_set(reward=torch.ones(4, 3, **i64)), TypeError, "reward"),
    "value-int64": (_set(value=torch.ones(4, 3, **i64)), TypeError, "value"),
    "pcont-bool-tensor": (_set(pcont=torch.ones(4, 3, dtype=torch.bool)), TypeError, "pcont"),
    "pcont-python-bool": (_set(pcont=True), TypeError, "pcont"),
    "bootstrap-int64": (_set(bootstrap=torch.ones(3, **i64)), TypeError, "bootstrap"),
    "value-float64": (_set(value=torch.Tensor.double), TypeError, "value"),
    "pcont-float64": (_set(pcont=torch.Tensor.double), TypeError, "pcont"),
    "bootstrap-float64": (_set(bootstrap=torch.Tensor.double), TypeError, "bootstrap"),
    "lambda-negative": (_set(lambda_=-0.1), ValueError, "lambda_"),
    "lambda-above-one": (_set(lambda_=1.5), ValueError, "lambda_"),
    "lambda-nan": (_set(lambda_=float("nan")), ValueError, "lambda_"),
    "lambda-str": (_set(lambda_="0.9"), TypeError, "lambda_"),
    "zero-length-time": (_zero_length(LR_SEQ, "bootstrap"), ValueError, "reward"),
    "zero-length-time-axis1": (_set(reward=torch.zeros(3, 0), value=torch.zeros(3, 0),
                                    pcont=torch.zeros(3, 0), axis=1), ValueError, "reward"),
    "zero-dim": (_zero_dim(LR_SEQ, "bootstrap"), ValueError, "reward"),
    "reward-list": (_set(reward=torch.Tensor.tolist), TypeError, "reward"),
    "reward-none": (_set(reward=None), TypeError, "reward"),
    "value-meta": (_set(value=lambda t: t.to("meta")), ValueError, "value"),
    "reward-meta": (_set(reward=lambda t: t.to("meta")), ValueError, "value"),
    "pcont-meta": (_set(pcont=lambda t: t.to("meta")), ValueError, "pcont"),
    "bootstrap-meta": (_set(bootstrap=lambda t: t.to("meta")), ValueError, "bootstrap"),
})

RS_BAD = _bad({
    "decay-shape": (_set(decay=torch.zeros(5, 3)), ValueError, "decay"),
    "init-shape": (_set(init=torch.zeros(4)), ValueError, "init"),
    "axis-too-big": (_set(axis=2), ValueError, "axis"),
    "axis-too-small": (_set(axis=-3), ValueError, "axis"),
    "inputs-int64": (_set(inputs=torch.ones(4, 3, **i64)), TypeError, "inputs"),
    "decay-int64": (_set(decay=torch.ones(4, 3, **i64)), TypeError, "decay"),
    "decay-float64": (_set(decay=torch.Tensor.double), TypeError, "decay"),
    "init-float64": (_set(init=torch.Tensor.double), TypeError, "init"),
    "zero-length-time": (_zero_length(RS_SEQ, "init"), ValueError, "inputs"),
    "zero-dim": (_zero_dim(RS_SEQ, "init"), ValueError, "inputs"),
    "inputs-list": (_set(inputs=torch.Tensor.tolist), TypeError, "inputs"),
    "decay-meta": (_set(decay=lambda t: t.to("meta")), ValueError, "decay"),
    "init-meta": (_set(init=lambda t: t.to("meta")), ValueError, "init"),
})


# Direct torch.ops calls skip the Python checks; the C++ TORCH_CHECKs name the argument.
def _lr_good():
    r, v, p, b = lambda_return_inputs(4, (3,), 0, make_generator("lr-good"))
    r, v, p, b = (a.float() for a in (r, v, p, b))
    return dict(reward=r, value=v, pcont=p, bootstrap=b, lambda_=0.95, axis=0)


def _rs_good():
    x, d, i = (a.float() for a in reverse_scan_inputs(4, (3,), 0, make_generator("rs-good")))
    return dict(inputs=x, decay=d, init=i, axis=0)


def _direct_lr(r=None, v=None, p=None, b=None, lam=0.9):
    d = _lr_good()
    return (d["reward"] if r is None else r, d["value"] if v is None else v,
            d["pcont"] if p is None else p, d["bootstrap"] if b is None else b, lam)


def _direct_rs(x=None, d=None, i=None):
    g = _rs_good()
    return (g["inputs"] if x is None else x, g["decay"] if d is None else d,
            g["init"] if i is None else i)


meta = dict(device="meta")
LR_DIRECT_BAD = (
    DirectBad("value-shape", "lambda_return", lambda: _direct_lr(v=torch.zeros(5, 3)), "value"),
    DirectBad("pcont-shape", "lambda_return", lambda: _direct_lr(p=torch.zeros(4, 2)), "pcont"),
    DirectBad("bootstrap-shape", "lambda_return", lambda: _direct_lr(b=torch.zeros(4)),
              "bootstrap"),
    DirectBad("value-dtype", "lambda_return", lambda: _direct_lr(v=torch.zeros(4, 3).double()),
              "value"),
    DirectBad("bootstrap-dtype", "lambda_return",
              lambda: _direct_lr(b=torch.zeros(3).double()), "bootstrap"),
    DirectBad("reward-int", "lambda_return",
              lambda: _direct_lr(*(torch.zeros(4, 3, **i64),) * 3, b=torch.zeros(3, **i64)),
              "reward"),
    DirectBad("lambda", "lambda_return", lambda: _direct_lr(lam=1.5), "lambda_"),
    DirectBad("lambda-nan", "lambda_return", lambda: _direct_lr(lam=float("nan")), "lambda_"),
    DirectBad("zero-length", "lambda_return",
              lambda: _direct_lr(*(torch.zeros(0, 3),) * 3, b=torch.zeros(3)), "reward"),
    DirectBad("zero-dim", "lambda_return",
              lambda: _direct_lr(*(torch.tensor(1.0),) * 3, b=torch.tensor(1.0)), "reward"),
    # All-meta inputs run the fake kernel alone (as torch.compile tracing does): it must
    # reject what the C++ kernel rejects.
    DirectBad("all-meta-shape", "lambda_return",
              lambda: (torch.zeros(4, 3, **meta), torch.zeros(5, 7, **meta),
                       torch.zeros(4, 3, **meta), torch.zeros(3, **meta), 0.9), "value"),
    DirectBad("all-meta-lambda", "lambda_return",
              lambda: (*(torch.zeros(4, 3, **meta),) * 3, torch.zeros(3, **meta), 1.5),
              "lambda_"),
)
RS_DIRECT_BAD = (
    DirectBad("decay-shape", "reverse_scan", lambda: _direct_rs(d=torch.zeros(4, 2)), "decay"),
    DirectBad("init-shape", "reverse_scan", lambda: _direct_rs(i=torch.zeros(4, 3)), "init"),
    DirectBad("decay-dtype", "reverse_scan", lambda: _direct_rs(d=torch.zeros(4, 3).double()),
              "decay"),
    DirectBad("inputs-int", "reverse_scan",
              lambda: _direct_rs(*(torch.zeros(4, 3, **i64),) * 2, i=torch.zeros(3, **i64)),
              "inputs"),
    DirectBad("decay-meta", "reverse_scan", lambda: _direct_rs(d=torch.zeros(4, 3, **meta)),
              "decay"),
    DirectBad("all-meta-init", "reverse_scan",
              lambda: (*(torch.zeros(4, 3, **meta),) * 2, torch.zeros(2, **meta)), "init"),
)


# --------------------------------------------------------------------------------------
# The contracts and their generated tests
# --------------------------------------------------------------------------------------

LAMBDA_RETURN = OpContract(
    name="lambda_return", fast=lambda_return, ref=lambda_return_ref, build=build_lambda_return,
    differentiable=("reward", "value", "pcont", "bootstrap"), outputs=("R",),
    native=native_lambda_return, bad=LR_BAD, direct_bad=LR_DIRECT_BAD,
    bad_case=Case(4, (3,)), extra=_finite_ref,
)
REVERSE_SCAN = OpContract(
    name="reverse_scan", fast=reverse_scan, ref=reverse_scan_ref, build=build_reverse_scan,
    differentiable=("inputs", "decay", "init"), outputs=("R",), native=native_reverse_scan,
    bad=RS_BAD, direct_bad=RS_DIRECT_BAD, bad_case=Case(4, (3,)), extra=_finite_ref,
)


def _bid(batch):
    return "b" + "x".join(map(str, batch))


def _grid(Ts, batches, axes, lams):
    return {f"T{T}-{_bid(b)}-ax{a}" + (f"-lam{lam}" if lam is not None else ""):
            Case(T, b, a, 0.95 if lam is None else lam)
            for T in Ts for b in batches for a in axes for lam in lams}


T_VALUES, BATCHES, AXES, LAMBDAS = [1, 2, 15, 16, 64, 65], [(1,), (37,), (3, 5)], [0, 1, -1], \
    [0.0, 0.95, 1.0]
# Smaller grid for the low-precision dtypes and for CUDA.
T_SMALL, BATCHES_SMALL, AXES_SMALL = [1, 16, 65], [(37,), (3, 5)], [0, -1]
# Wide batches: several 64-column CPU tiles, a ragged last tile, and enough work for
# at::parallel_for to split the tiles across threads.
WIDE = {"T3-b130": Case(3, (130,)), "T65-b1300": Case(65, (1300,)),
        "T16-b7x150": Case(16, (7, 150))}
SCAN_GRADCHECK = [(1, (3,), 0), (5, (3,), 0), (4, (2, 3), 1), (6, (2,), -1)]

globals().update(contract_tests(
    LAMBDA_RETURN,
    grid=_grid(T_VALUES, BATCHES, AXES, LAMBDAS),
    small_grid=_grid(T_SMALL, BATCHES_SMALL, AXES_SMALL, LAMBDAS),
    devices_grid=WIDE,
    noncontig={f"ax{a}": Case(9, (4, 70), a, 0.9) for a in (0, 1)},
    empty={"T4-b0": Case(4, (0,), lam=0.9), "T3-b2x0-ax1": Case(3, (2, 0), 1)},
    gradcheck={**{f"T{T}-{_bid(b)}-ax{a}-lam{lam}": Case(T, b, a, lam)
                  for T, b, a in SCAN_GRADCHECK for lam in (0.0, 0.6, 1.0)},
               "number-pcont-none-bootstrap": Case(5, (3,), lam=0.7, number=0.9)},
    opcheck={"f32-none": (Case(5, (3,)), torch.float32, "none"),
             "f32-all": (Case(5, (3,)), torch.float32, "all"),
             "f64-T1-even": (Case(1, (2, 3), lam=0.0), torch.float64, "even"),
             "f64-lam1-odd": (Case(7, (4,), lam=1.0), torch.float64, "odd"),
             "bf16-all": (Case(3, (2,), lam=0.5), torch.bfloat16, "all")},
    compile={"ax-1-number-pcont-none-bootstrap": Case(10, (3, 5), -1, 0.9, number=0.97)},
))
globals().update(contract_tests(
    REVERSE_SCAN,
    grid=_grid(T_VALUES, BATCHES, AXES, [None]),
    small_grid=_grid(T_SMALL, BATCHES_SMALL, AXES_SMALL, [None]),
    devices_grid={k: dataclasses.replace(v, axis=-1) for k, v in WIDE.items()},
    noncontig={f"ax{a}": Case(9, (4, 70), a) for a in (0, 1)},
    empty={"T4-b0": Case(4, (0,))},
    gradcheck={**{f"T{T}-{_bid(b)}-ax{a}": Case(T, b, a) for T, b, a in SCAN_GRADCHECK},
               "number-decay-none-init": Case(5, (3,), number=0.9)},
    opcheck={"f32-none": (Case(5, (3,)), torch.float32, "none"),
             "f32-all": (Case(5, (3,)), torch.float32, "all"),
             "f64-T1-even": (Case(1, (2, 3)), torch.float64, "even"),
             "f16-decay-init": (Case(6, (4,)), torch.float16, (False, True, True))},
    compile={"number-decay-none-init": Case(10, (3, 5), -1, number=0.97)},
))


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
                         ids=dtype_id)
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
# Native ops, fake kernels
# --------------------------------------------------------------------------------------

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


@pytest.mark.compile
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_lambda_return_inductor(gen):
    """fullgraph compile (inductor) of the public op plus surrounding ops, fwd + bwd."""

    def wrap(fast):
        def f(reward, value, pcont, bootstrap, lambda_, axis):
            ret = fast(reward * 2.0, value, pcont, bootstrap, lambda_, axis=axis)
            return (ret - value).square().mean()
        return f

    check_compile(LAMBDA_RETURN, Case(16, (8,), 1), gen, backend="inductor", wrap=wrap)


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
# Argument errors beyond the contracts' lists
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# The harness catches broken ops: every generated check fails on a deliberately broken
# fast op (each a small change of reverse_scan), so a passing contract test means
# something.
# --------------------------------------------------------------------------------------

def _broken(fast, **changes) -> OpContract:
    return dataclasses.replace(REVERSE_SCAN, fast=fast, **changes)


class _WrongInitGrad(torch.autograd.Function):
    """Identity forward; the backward scales the gradient by 1.01."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * 1.01


_CASE = Case(5, (3,))
_GEN = make_generator("broken")


def test_op_contract_catches_an_offset_value():
    broken = _broken(lambda inputs, decay, init, axis: reverse_scan(inputs, decay, init, axis)
                     + 1e-3)
    check_matches_ref(REVERSE_SCAN, _CASE, torch.float64, "cpu", _GEN)  # the real op passes
    for dtype in (torch.float64, torch.float32):
        with pytest.raises(AssertionError, match="reverse_scan R"):
            check_matches_ref(broken, _CASE, dtype, "cpu", _GEN)


def test_op_contract_catches_a_dropped_gradient():
    broken = _broken(lambda inputs, decay, init, axis:
                     reverse_scan(inputs, decay.detach(), init, axis))
    with pytest.raises(AssertionError, match="no gradient for decay"):
        check_matches_ref(broken, _CASE, torch.float64, "cpu", _GEN)


def test_op_contract_catches_a_wrong_gradient():
    broken = _broken(lambda inputs, decay, init, axis:
                     reverse_scan(inputs, decay, _WrongInitGrad.apply(init), axis))
    with pytest.raises(AssertionError, match="d/d init"):
        check_matches_ref(broken, _CASE, torch.float64, "cpu", _GEN)
    with pytest.raises(AssertionError, match="gradcheck failed"):
        check_gradcheck(broken, _CASE, _GEN)


def test_op_contract_catches_ignored_strides():
    """A fast op reading its inputs' storage as if they were contiguous."""
    def fast(inputs, decay, init, axis):
        raw = [x.as_strided(x.shape, torch.empty(x.shape).stride()) for x in (inputs, decay)]
        return reverse_scan(*raw, init, axis)

    check_noncontiguous(REVERSE_SCAN, Case(9, (4, 7), 1), "cpu", _GEN, "step2")
    for layout in ("transposed", "step2"):
        with pytest.raises(AssertionError, match="inputs"):
            check_noncontiguous(_broken(fast), Case(9, (4, 7), 1), "cpu", _GEN, layout)


def test_op_contract_catches_empty_input_failures():
    def crashes(inputs, decay, init, axis):
        assert inputs.numel(), "division by zero"
        return reverse_scan(inputs, decay, init, axis)

    def wrong_shape(inputs, decay, init, axis):
        out = reverse_scan(inputs, decay, init, axis)
        return out if out.numel() else out.reshape(-1)

    for fast in (crashes, wrong_shape):
        with pytest.raises(AssertionError):
            check_empty(_broken(fast), Case(4, (0,)), "cpu", _GEN)


# A native op whose fake kernel disagrees with its real kernel (the output shape).
@torch.library.custom_op("dreamer_fast_test::scaled", mutates_args=())
def _scaled(x: torch.Tensor) -> torch.Tensor:
    return x * 2.0


@_scaled.register_fake
def _(x):
    return x.new_empty(x.shape[0] + 1, *x.shape[1:])


def test_op_contract_catches_a_wrong_fake_kernel():
    broken = _broken(reverse_scan, native=lambda kw: [
        (torch.ops.dreamer_fast_test.scaled.default, (kw["inputs"],))])
    check_opcheck(REVERSE_SCAN, _CASE, torch.float32, "all", _GEN)
    with pytest.raises(AssertionError, match="opcheck"):
        check_opcheck(broken, _CASE, torch.float32, "none", _GEN)


def test_op_contract_catches_compile_failures():
    def graph_break(inputs, decay, init, axis):
        torch._dynamo.graph_break()
        return reverse_scan(inputs, decay, init, axis)

    def differs_when_compiled(inputs, decay, init, axis):
        out = reverse_scan(inputs, decay, init, axis)
        return out + 1e-3 if torch.compiler.is_compiling() else out

    for fast in (graph_break, differs_when_compiled):
        with pytest.raises(AssertionError, match="compiled|torch.compile"):
            check_compile(_broken(fast), _CASE, _GEN)


def test_op_contract_catches_accepted_bad_input():
    def no_shape_check(inputs, decay, init, axis):  # silently truncates a longer decay
        return reverse_scan(inputs, decay[:inputs.shape[0]], init, axis)

    def names_the_wrong_argument(inputs, decay, init, axis):
        if decay.shape != inputs.shape:
            raise ValueError("reverse_scan: `inputs` has the wrong shape")
        return reverse_scan(inputs, decay, init, axis)

    def wrong_exception_type(inputs, decay, init, axis):
        if decay.shape != inputs.shape:
            raise RuntimeError("reverse_scan: `decay` has the wrong shape")
        return reverse_scan(inputs, decay, init, axis)

    bad = next(b for b in RS_BAD if b.id == "decay-shape")
    check_bad_input(REVERSE_SCAN, bad)
    for fast, match in ((no_shape_check, "accepted"), (names_the_wrong_argument, "`decay`"),
                        (wrong_exception_type, "RuntimeError")):
        with pytest.raises(AssertionError, match=match):
            check_bad_input(_broken(fast), bad)


def test_op_contract_catches_an_accepted_direct_call():
    accepted = DirectBad("valid", "reverse_scan", _direct_rs, "decay")
    with pytest.raises(AssertionError, match="accepted"):
        check_direct_bad(REVERSE_SCAN, accepted)


def test_op_contract_catches_a_misspelt_differentiable_argument():
    broken = _broken(reverse_scan, differentiable=("inputs", "decays", "init"))
    with pytest.raises(AssertionError, match="decays"):
        check_matches_ref(broken, _CASE, torch.float64, "cpu", _GEN)
