"""Tests of the recurrent cells: dreamer_fast.ops.gru_cell / ln_gru_cell / block_gru_cell.

The op-contract harness (``op_contract.py``) generates the generic checks from each
cell's contract: values and the gradient of every input and weight against a float64
reference (float32/float64 on the CPU, bf16/fp16 on the CPU and every dtype on CUDA),
non-contiguous and empty inputs, gradcheck, opcheck of the native ops, torch.compile
and argument errors of the public and raw ops. The value grids use independent
references: gru_cell is compared with torch.nn.GRUCell itself and ln_gru_cell with the
equations written out in this file (``_ln_gru_equations``); the paired ``*_ref`` ops
are checked against the same references, and block_gru_cell against
block_gru_cell_ref. The modules (drop-in GRUCell, LNGRUCell, BlockGRUCell backends) and
the LayerNorm's numerical stability are plain tests.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import dreamer_fast
from dreamer_fast.ops import (block_gru_cell, block_gru_cell_ref, gru_cell, gru_cell_ref,
                              ln_gru_cell, ln_gru_cell_ref)
from dreamer_fast.ops.dense import ACTS
from conftest import (DEVICES, Bad, DirectBad, OpContract, check_matches_ref, contract_tests,
                      make_generator)


def _set(**changes):
    """Set arguments; a callable value is applied to the argument's valid value."""
    def mutate(kw):
        for k, v in changes.items():
            kw[k] = v(kw[k]) if callable(v) else v
    return mutate


def _grad_like(x: torch.Tensor) -> torch.Tensor:
    return torch.randn(x.shape, generator=make_generator("g", x.shape)).to(x.dtype)


def _detach(ts):
    return [t.detach() if isinstance(t, torch.Tensor) else t for t in ts]


def _r(gen, dtype, device):
    def r(*shape, scale=1.0, uniform=False):
        x = (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1 if uniform
             else torch.randn(*shape, generator=gen, dtype=torch.float64))
        return (x * scale).to(device=device, dtype=dtype)
    return r


@dataclasses.dataclass(frozen=True)
class Case:
    """``input [B, I]``, ``hx [B, H]`` (None: zeros), reshaped to ``lead`` + [.] when
    given (``lead=()``: unbatched); ``bias``: gru_cell's biases; ln_gru_cell's options."""
    B: int
    I: int
    H: int
    bias: bool = True
    state: bool = True
    lead: tuple[int, ...] | None = None
    update_bias: float = -1.0
    eps: float = 1e-3
    norm: bool = True  # ln_gru_cell: the LayerNorm (False: norm_weight = norm_bias = None)
    state_first: bool = False  # ln_gru_cell: weight columns for cat(h, x)


def _state(case: Case, r):
    x, h = r(case.B, case.I), r(case.B, case.H, scale=0.5)
    if case.lead is not None:
        x, h = x.reshape(*case.lead, case.I), h.reshape(*case.lead, case.H)
    return x, (h if case.state else None)


# --------------------------------------------------------------------------------------
# gru_cell
# --------------------------------------------------------------------------------------

def build_gru(case: Case, dtype, device, gen) -> dict:
    r = _r(gen, dtype, device)
    x, h = _state(case, r)
    H, k = case.H, 1 / math.sqrt(case.H)
    return dict(input=x, hx=h, weight_ih=r(3 * H, case.I, scale=k, uniform=True),
                weight_hh=r(3 * H, H, scale=k, uniform=True),
                bias_ih=r(3 * H, scale=k, uniform=True) if case.bias else None,
                bias_hh=r(3 * H, scale=k, uniform=True) if case.bias else None)


def torch_gru(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """torch.nn.GRUCell itself, with the given tensors bound as its parameters."""
    bias = bias_ih is not None
    cell = torch.nn.GRUCell(input.shape[-1], weight_hh.shape[1], bias=bias, dtype=input.dtype,
                            device=input.device)
    params = {"weight_ih": weight_ih, "weight_hh": weight_hh}
    if bias:
        params |= {"bias_ih": bias_ih, "bias_hh": bias_hh}
    if input.dim() <= 2:
        return torch.func.functional_call(cell, params, (input, hx))
    # nn.GRUCell takes [B, .] or [.]: flatten leading dims
    flat = (input.reshape(-1, input.shape[-1]),
            None if hx is None else hx.reshape(-1, hx.shape[-1]))
    return torch.func.functional_call(cell, params, flat).reshape(*input.shape[:-1], -1)


def native_gru(kw: dict) -> list:
    args = (kw["input"], kw["hx"], kw["weight_ih"], kw["weight_hh"], kw["bias_ih"], kw["bias_hh"])
    x, h, w_ih, w_hh, b_ih, b_hh = _detach(args)
    hy, ws = torch.ops.dreamer_fast.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)
    return [(torch.ops.dreamer_fast.gru_cell.default, args),
            (torch.ops.dreamer_fast.gru_cell_backward.default,
             (_grad_like(hy), ws, x, h, w_ih, w_hh))]


GRU_BAD = tuple(Bad(*b) for b in [
    ("input-size", _set(input=torch.randn(4, 7)), ValueError, "weight_ih"),
    ("hidden-size", _set(hx=torch.randn(4, 5)), ValueError, "hx"),
    ("batch", _set(hx=torch.randn(3, 6)), ValueError, "hx"),
    ("w_hh-shape", _set(weight_hh=torch.randn(18, 5)), ValueError, "weight_hh"),
    ("bias-shape", _set(bias_ih=torch.randn(17)), ValueError, "bias_ih"),
    ("int-input", _set(input=torch.Tensor.long), TypeError, "input"),
    ("dtype-mix", _set(hx=torch.Tensor.double), TypeError, "hx"),
    ("weight-dtype", _set(weight_ih=torch.Tensor.double), TypeError, "weight_ih"),
    ("device-mix", _set(weight_hh=lambda t: t.to("meta")), ValueError, "weight_hh"),
    ("0-dim", _set(input=torch.tensor(1.0), hx=None), ValueError, "input"),
])
_x, _h = torch.randn(4, 5), torch.randn(4, 6)
GRU_DIRECT_BAD = (
    DirectBad("input-size", "gru_cell",
              lambda: (_x, _h, torch.randn(18, 4), torch.randn(18, 6), None, None), "weight_ih"),
    DirectBad("all-meta-hx", "gru_cell",  # the fake kernel's check
              lambda: (_x.to("meta"), torch.randn(3, 6, device="meta"),
                       torch.randn(18, 5, device="meta"), torch.randn(18, 6, device="meta"),
                       None, None), "hx"),
)

GRU = OpContract(
    name="gru_cell", fast=gru_cell, ref=gru_cell_ref, build=build_gru,
    differentiable=("input", "hx", "weight_ih", "weight_hh", "bias_ih", "bias_hh"),
    outputs=("hy",), native=native_gru, bad=GRU_BAD, direct_bad=GRU_DIRECT_BAD,
    bad_case=Case(4, 5, 6, bias=False), noncontig_exact=False,
)

BATCHES = [1, 37, 256]
DETERS = [96, 200, 512]
INPUT_SIZE = 45  # not a multiple of 8 on purpose
SIZES = {f"B{B}-H{H}": Case(B, INPUT_SIZE, H) for B in BATCHES for H in DETERS}
SIZES_CPU_LOW = {k: SIZES[k] for k in ("B37-H96",)}
# B=160, H=128: two or more CPU parallel_for tasks of the row kernels (>= 64k elements
# each, csrc/common/parallel_grain.h) in the forward and the backward.
CELL_MISC = {"parallel-B160-H128": Case(160, 13, 128),
             "no-bias-no-state": Case(5, 7, 16, bias=False, state=False),
             "lead-2x3": Case(6, 9, 12, lead=(2, 3)), "unbatched": Case(1, 9, 12, lead=())}

globals().update(contract_tests(
    GRU, ref=torch_gru, grid=SIZES | CELL_MISC, small_grid=SIZES, small_grid_cpu=SIZES_CPU_LOW,
    noncontig={"B6-H12": Case(6, 9, 12)}, empty={"B0": Case(0, 5, 6)},
    gradcheck={"B3-H4": Case(3, 5, 4), "no-bias": Case(3, 5, 4, bias=False)},
    opcheck={"all": (Case(4, 5, 6), torch.float64, "all"),
             "none": (Case(4, 5, 6), torch.float64, "none"),
             "f32-no-bias-all": (Case(4, 5, 6, bias=False), torch.float32, "all")},
    compile={"B8-H6": Case(8, 5, 6)},
))


@pytest.mark.parametrize("case", [Case(1, 13, 24), Case(37, 13, 24), Case(6, 9, 12, lead=(2, 3)),
                                  Case(5, 7, 16, bias=False, state=False)],
                         ids=["B1", "B37", "lead", "no-bias-no-state"])
@pytest.mark.parametrize("device", DEVICES)
def test_gru_cell_ref_matches_torch_grucell(device, case):
    check_matches_ref(dataclasses.replace(GRU, fast=gru_cell_ref), case, torch.float64, device,
                      make_generator("gru-ref", case), ref=torch_gru)


@pytest.mark.parametrize("device", DEVICES)
def test_gru_cell_module_without_bias(device):
    """Bias-free: the module has no biases and its weights get gradients."""
    cell = dreamer_fast.nn.GRUCell(7, 16, bias=False, dtype=torch.float64, device=device)
    cell(torch.randn(5, 7, dtype=torch.float64, device=device)).sum().backward()
    assert cell.weight_ih.grad is not None and cell.bias_ih is None


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


def test_module_backend_argument():
    with pytest.raises(ValueError, match="`backend`"):
        dreamer_fast.nn.GRUCell(3, 4, backend="cuda")


# --------------------------------------------------------------------------------------
# ln_gru_cell
# --------------------------------------------------------------------------------------

def build_ln_gru(case: Case, dtype, device, gen) -> dict:
    r = _r(gen, dtype, device)
    x, h = _state(case, r)
    H = case.H
    return dict(input=x, hx=h,
                weight=r(3 * H, case.I + H, scale=1 / math.sqrt(case.I + H), uniform=True),
                norm_weight=1 + r(3 * H, scale=0.2) if case.norm else None,
                norm_bias=r(3 * H, scale=0.2) if case.norm else None,
                update_bias=case.update_bias, eps=case.eps, state_first=case.state_first)


def ln_gru_equations(input, hx, weight, norm_weight, norm_bias, update_bias=-1.0, eps=1e-3,
                     state_first=False):
    """The LN-GRU equations of the issue, written out independently of the package
    (without the norm when norm_weight is None; the weight's columns for cat(h, x) with
    state_first)."""
    if hx is None:
        hx = input.new_zeros(*input.shape[:-1], weight.shape[0] // 3)
    parts = torch.cat([hx, input] if state_first else [input, hx], -1) @ weight.T
    if norm_weight is None:
        y = parts
    else:
        mean = parts.mean(-1, keepdim=True)
        var = ((parts - mean) ** 2).mean(-1, keepdim=True)
        y = (parts - mean) / torch.sqrt(var + eps) * norm_weight + norm_bias
    H = hx.shape[-1]
    reset, cand, update = y[..., :H], y[..., H:2 * H], y[..., 2 * H:]
    reset = 1 / (1 + torch.exp(-reset))
    cand = torch.tanh(reset * cand)
    update = 1 / (1 + torch.exp(-(update + update_bias)))
    return update * cand + (1 - update) * hx


def native_ln_gru(kw: dict) -> list:
    args = (kw["input"], kw["hx"], kw["weight"], kw["norm_weight"], kw["norm_bias"],
            kw["update_bias"], kw["eps"], kw["state_first"])
    x, h, W, g, b, ub, eps, sf = _detach(args)
    hy, parts, stats = torch.ops.dreamer_fast.ln_gru_cell(x, h, W, g, b, ub, eps, sf)
    return [(torch.ops.dreamer_fast.ln_gru_cell.default, args),
            (torch.ops.dreamer_fast.ln_gru_cell_backward.default,
             (_grad_like(hy), parts, stats, x, h, W, g, b, ub, sf))]


LN_BAD = tuple(Bad(*b) for b in [
    ("input-size", _set(input=torch.randn(4, 7)), ValueError, "weight"),
    ("weight-rows", _set(weight=torch.randn(17, 11)), ValueError, "weight"),
    ("hidden-size", _set(hx=torch.randn(4, 7)), ValueError, "weight"),
    ("norm-shape", _set(norm_weight=torch.ones(6)), ValueError, "norm_weight"),
    ("bias-shape", _set(norm_bias=torch.zeros(19)), ValueError, "norm_bias"),
    ("batch", _set(hx=torch.randn(2, 6)), ValueError, "hx"),
    ("int-weight", _set(weight=torch.Tensor.long), TypeError, "weight"),
    ("dtype-mix", _set(norm_weight=torch.Tensor.double), TypeError, "norm_weight"),
    ("eps", _set(eps=0.0), ValueError, "eps"),
    ("update-bias-str", _set(update_bias="-1"), TypeError, "update_bias"),
    ("norm-half-given", _set(norm_bias=None), ValueError, "norm_bias"),
    ("state-first-int", _set(state_first=1), TypeError, "state_first"),
])
LN_DIRECT_BAD = (
    DirectBad("norm-bias-shape", "ln_gru_cell",
              lambda: (_x, _h, torch.randn(18, 11), torch.ones(18), torch.zeros(3), -1.0, 1e-3),
              "norm_bias"),
    DirectBad("norm-half-given", "ln_gru_cell",
              lambda: (_x, _h, torch.randn(18, 11), torch.ones(18), None, -1.0, 1e-3),
              "norm_bias"),
    DirectBad("no-norm-stats", "ln_gru_cell_backward",  # stats of a normed cell, no norm
              lambda: (torch.randn(4, 6), torch.randn(4, 18), torch.zeros(4, 2), _x, _h,
                       torch.randn(18, 11), None, None, -1.0), "stats"),
    DirectBad("all-meta-eps", "ln_gru_cell",
              lambda: (_x.to("meta"), _h.to("meta"), torch.randn(18, 11, device="meta"),
                       torch.ones(18, device="meta"), torch.zeros(18, device="meta"), -1.0, 0.0),
              "eps"),
)

LN_GRU = OpContract(
    name="ln_gru_cell", fast=ln_gru_cell, ref=ln_gru_cell_ref, build=build_ln_gru,
    differentiable=("input", "hx", "weight", "norm_weight", "norm_bias"), outputs=("hy",),
    native=native_ln_gru, bad=LN_BAD, direct_bad=LN_DIRECT_BAD, bad_case=Case(4, 5, 6),
    noncontig_exact=False,
)

LN_OPTIONS = {"ub0-eps1e-5": Case(9, 10, 32, update_bias=0.0, eps=1e-5),
              "ub-2.5-eps0.1": Case(9, 10, 32, update_bias=-2.5, eps=0.1),
              # dreamerv3-torch's GRUCell(norm=False); sheeprl's cat(h, x) column order
              "no-norm": Case(9, 10, 32, norm=False),
              "state-first": Case(9, 10, 32, state_first=True),
              "no-norm-state-first-ub0": Case(9, 10, 32, norm=False, state_first=True,
                                              update_bias=0.0)}
LN_OPTIONS_SMALL = {k: dataclasses.replace(v, B=3, I=5, H=4) for k, v in LN_OPTIONS.items()}

globals().update(contract_tests(
    LN_GRU, ref=ln_gru_equations, grid=SIZES | CELL_MISC | LN_OPTIONS, small_grid=SIZES,
    small_grid_cpu=SIZES_CPU_LOW, noncontig={"B6-H12": Case(6, 9, 12)},
    empty={"B0": Case(0, 5, 6)}, gradcheck={"B3-H4": Case(3, 5, 4), **LN_OPTIONS_SMALL},
    opcheck={"all": (Case(4, 5, 6), torch.float64, "all"),
             "f32-options-none": (LN_OPTIONS_SMALL["ub-2.5-eps0.1"], torch.float32, "none"),
             "no-norm-all": (LN_OPTIONS_SMALL["no-norm"], torch.float64, "all"),
             "state-first-all": (LN_OPTIONS_SMALL["state-first"], torch.float64, "all")},
    compile={"B8-H6": Case(8, 5, 6), "no-norm-state-first": Case(8, 5, 6, norm=False,
                                                                  state_first=True)},
))


@pytest.mark.parametrize("case", [Case(7, 10, 32), Case(5, 7, 16, state=False),
                                  LN_OPTIONS["ub-2.5-eps0.1"], LN_OPTIONS["no-norm"],
                                  LN_OPTIONS["state-first"]],
                         ids=["B7", "no-state", "options", "no-norm", "state-first"])
@pytest.mark.parametrize("device", DEVICES)
def test_ln_gru_cell_ref_matches_equations(device, case):
    check_matches_ref(dataclasses.replace(LN_GRU, fast=ln_gru_cell_ref), case, torch.float64,
                      device, make_generator("lngru-ref", case), ref=ln_gru_equations)


def test_ln_gru_large_row_mean_is_stable():
    """Rows with a large common offset: the two-pass variance keeps float32 accurate."""
    kw = build_ln_gru(Case(8, 16, 32), torch.float64, "cpu", make_generator("lngru-offset"))
    kw["weight"][:, 0] = 50.0  # every part gets +50 * x[:, 0]
    kw["input"][:, 0] = 20.0
    out = ln_gru_cell(**{k: v.float() if isinstance(v, torch.Tensor) else v
                         for k, v in kw.items()})
    # The parts are ~1000 with a spread of ~1: float32 GEMM rounding alone costs ~1e-4
    # after normalisation, while a one-pass E[x²] − E[x]² variance would be off by ~5%.
    torch.testing.assert_close(out.double(), ln_gru_equations(**kw), rtol=0, atol=2e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_lngrucell_module(device):
    torch.manual_seed(0)
    cell = dreamer_fast.nn.LNGRUCell(10, 24, device=device, dtype=torch.float64)
    ref = dreamer_fast.nn.LNGRUCell(10, 24, device=device, dtype=torch.float64, backend="ref")
    ref.load_state_dict(cell.state_dict())
    x = torch.randn(3, 10, device=device, dtype=torch.float64)
    torch.testing.assert_close(cell(x), ref(x))
    assert set(cell.state_dict()) == {"weight", "norm_weight", "norm_bias"}


# --------------------------------------------------------------------------------------
# block_gru_cell (the DreamerV3 block GRU core)
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BlockCase:
    """B batch, D deter, G blocks, U hidden, S stoch, A actions, L hidden layers;
    ``action``: 'random' (scale 2: |action| > 1 happens), 'fixed' ([3, -0.5, 1.5] per
    row: the normalisation's stop-gradient) or 'small' (|action| < 0.9)."""
    B: int
    D: int
    G: int
    U: int
    S: int = 45
    A: int = 6
    L: int = 1
    act: str = "silu"
    action: str = "random"


def build_block_gru(case: BlockCase, dtype, device, gen) -> dict:
    r = _r(gen, torch.float64, "cpu")
    B, D, G, U, S, A = case.B, case.D, case.G, case.U, case.S, case.A
    Dg = D // G
    in_params = []
    for fan_in in (D, S, A):
        in_params += [r(U, fan_in, scale=0.3 * fan_in ** -0.5), r(U, scale=0.03),
                      1 + r(U, scale=0.03)]
    hidden = []
    for layer in range(case.L):
        in_g = Dg + 3 * U if layer == 0 else Dg
        hidden += [r(G, in_g, Dg, scale=0.3 * in_g ** -0.5), r(D, scale=0.03),
                   1 + r(D, scale=0.03)]
    deter, stoch, action = r(B, D), r(B, S), r(B, A, scale=2.0)
    if case.action == "fixed":
        action = torch.tensor([[3.0, -0.5, 1.5]], dtype=torch.float64).expand(B, 3).clone()
    elif case.action == "small":
        action = action.clamp(-0.9, 0.9)
    to = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return dict(deter=to(deter), stoch=to(stoch), action=to(action),
                in_params=[to(t) for t in in_params], hidden_params=[to(t) for t in hidden],
                gru_weight=to(r(G, Dg, 3 * Dg, scale=0.3 * Dg ** -0.5)),
                gru_bias=to(r(3 * D, scale=0.03)), blocks=G, act=case.act, eps=1e-4)


def native_block_gru(kw: dict) -> list:
    tensors = (kw["deter"], kw["stoch"], kw["action"], kw["in_params"], kw["hidden_params"],
               kw["gru_weight"], kw["gru_bias"])
    rest = (kw["blocks"], ACTS[kw["act"]], kw["eps"])
    d, s, a, inp, hid, gw, gb = (_detach(t) if isinstance(t, list) else t.detach()
                                 for t in tensors)
    out, saved = torch.ops.dreamer_fast.block_gru_cell(d, s, a, inp, hid, gw, gb, *rest)
    return [(torch.ops.dreamer_fast.block_gru_cell.default, (*tensors, *rest)),
            (torch.ops.dreamer_fast.block_gru_cell_backward.default,
             (_grad_like(out), saved, d, s, a, inp, hid, gw, gb, *rest))]


def _replace_item(key, i, fn):
    def mutate(kw):
        kw[key] = list(kw[key])
        kw[key][i] = fn(kw[key][i])
    return mutate


BLOCK_BAD = tuple(Bad(*b) for b in [
    ("blocks-divide", _set(blocks=3), ValueError, "blocks"),
    ("stoch-batch", _set(stoch=lambda t: t[:2]), ValueError, "stoch"),
    ("in-params-count", _set(in_params=lambda p: p[:8]), ValueError, "in_params"),
    ("stoch-weight", _replace_item("in_params", 3, lambda t: t[:, :5]), ValueError,
     "in_params[3]"),
    ("hidden-count", _set(hidden_params=lambda p: p[:2]), ValueError, "hidden_params"),
    ("gru-weight", _set(gru_weight=lambda t: t[:, :, :-1]), ValueError, "gru_weight"),
    ("dtype-mix", _set(stoch=torch.Tensor.double), TypeError, "stoch"),
    ("int-action", _set(action=torch.Tensor.long), TypeError, "action"),
    ("unknown-act", _set(act="relu6"), ValueError, "act"),
    ("eps", _set(eps=0.0), ValueError, "eps"),
])

BLOCK_GRU = OpContract(
    name="block_gru_cell", fast=block_gru_cell, ref=block_gru_cell_ref, build=build_block_gru,
    differentiable=("deter", "stoch", "action", "in_params", "hidden_params", "gru_weight",
                    "gru_bias"), outputs=("deter'",), native=native_block_gru, bad=BLOCK_BAD,
    bad_case=BlockCase(3, 16, 4, 8, 6, 2), noncontig_exact=False,
)

globals().update(contract_tests(
    BLOCK_GRU,
    grid={**{f"B{B}-D{D}-G{G}-U{U}-L{L}": BlockCase(B, D, G, U, L=L)
             for B, D, G, U in [(1, 96, 8, 32), (37, 200, 4, 40), (256, 96, 1, 16)]
             for L in (1, 2)},
          **{act: BlockCase(5, 24, 4, 10, 12, 3, act=act) for act in ("gelu", "elu")},
          "action-normalisation": BlockCase(4, 16, 2, 8, 6, 3, action="fixed")},
    small_grid={"B64-D512-G8": BlockCase(64, 512, 8, 128, 1024, 6)},
    small_grid_cpu={"B16-D64-G4": BlockCase(16, 64, 4, 16, 32, 6, L=2)},
    noncontig={"B5-D16-L2": BlockCase(5, 16, 2, 8, 6, 3, L=2)},
    empty={"B0": BlockCase(0, 16, 4, 8, 6, 2)},
    # |action| < 1: the stop-gradient on max(1, |action|) is then invisible to the
    # finite differences gradcheck compares against.
    gradcheck={"B2-D8-G2-L2": BlockCase(2, 8, 2, 4, 5, 2, L=2, action="small")},
    opcheck={"all": (BlockCase(2, 8, 2, 4, 5, 2, L=2), torch.float64, "all")},
    compile={"B4-D16-G2": BlockCase(4, 16, 2, 8, 6, 3)},
))


@pytest.mark.parametrize("device", DEVICES)
def test_block_gru_module_backends_agree(device):
    torch.manual_seed(0)
    fused = dreamer_fast.nn.BlockGRUCell(64, 40, 5, 24, blocks=4, dynlayers=2, device=device,
                                         dtype=torch.float64)
    ref = dreamer_fast.nn.BlockGRUCell(64, 40, 5, 24, blocks=4, dynlayers=2, device=device,
                                       dtype=torch.float64, backend="ref")
    ref.load_state_dict(fused.state_dict())
    x = [torch.randn(3, n, device=device, dtype=torch.float64) for n in (64, 40, 5)]
    out_f, out_r = fused(*x), ref(*x)
    torch.testing.assert_close(out_f, out_r)
    out_f.sum().backward()
    out_r.sum().backward()
    for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
