"""Tests of the distribution heads: ``gaussian_sample`` and ``categorical_sample``.

The op-contract harness (``op_contract.py``) generates the generic checks from each
head's contract: fast vs the float64 reference on the same input values for every
output and the gradient of every differentiable input (random upstream gradients on
all outputs; float64/float32 grid on the CPU, bf16/fp16 and every CUDA dtype on a
smaller one, ``min_std``/``unimix`` values and wide rows on every device),
non-contiguous and empty inputs, gradcheck, opcheck of the native forward and backward
ops (every subset of upstream gradients), torch.compile and argument errors of the
public and raw ops. The categorical sample is compared through its index (see below),
not entry by entry.

Plain tests cover the rest: the categorical index search (bit for bit against the
shared sequential-cumsum arithmetic, at and around every cumulative-sum boundary), a
χ² goodness-of-fit test of the sampler (and a check that it rejects wrong samplers),
gradients through a subset of the outputs, the straight-through estimator,
hand-computed values, softplus' threshold, NaN, extreme logits, the range check of
``uniform`` and CUDA graphs.

On the index: fast and reference run the same search arithmetic (sequential cumsum
in the accumulation dtype, ``uniform < c_k``), but their softmaxes differ in the
last bit (libm/CUDA ``exp`` vs torch's vectorised ``exp``, different summation
order), so on arbitrary logits the two can pick different classes only when
``uniform`` lies within a few ulps of a cumulative-sum boundary. The tests check
(1) exact agreement of the kernel's index with the shared search applied to the
kernel's own probs, boundaries included, (2) exact fast-vs-ref agreement, boundaries
included, on logits whose probs both compute exactly, and (3) on random logits, that
any disagreement is within a few ulps of a boundary and rare.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dreamer_fast.ops import (
    categorical_sample,
    categorical_sample_ref,
    gaussian_sample,
    gaussian_sample_ref,
)
from dreamer_fast.ops.heads import categorical_index_ref

from conftest import (
    ALL_DTYPES,
    DEVICES,
    Bad,
    DirectBad,
    OpContract,
    assert_close_to_ref,
    check_compile,
    contract_tests,
    dtype_id as _dtype_id,
    make_generator,
    randn,
    requires_cuda,
)


def below_one(dtype: torch.dtype) -> float:
    """The largest value < 1 in ``dtype``."""
    return 1.0 - torch.finfo(dtype).eps / 2


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def quantize(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 ``x`` rounded to ``dtype`` (and back to float64)."""
    return x.to(dtype).to(torch.float64)


def quantize_uniform(u: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 uniform in [0, 1) rounded to ``dtype``, kept below 1 (rounding can
    reach 1.0: ``torch.rand(n).to(torch.bfloat16)`` does so about once in 512)."""
    return quantize(u, dtype).clamp(max=below_one(dtype))


# --------------------------------------------------------------------------------------
# Input builders
# --------------------------------------------------------------------------------------

def gaussian_inputs(batch, S, gen):
    """float64 (stats [*batch, 2S], noise [*batch, S]); raw std spans softplus' range."""
    stats = randn(batch + (2 * S,), gen, scale=3.0)
    noise = randn(batch + (S,), gen)
    return stats, noise


def categorical_inputs(batch, G, K, gen, scale=2.0):
    """float64 (logits [*batch, G, K], uniform [*batch, G] in [0, 1))."""
    logits = randn(batch + (G, K), gen, scale=scale)
    uniform = torch.rand(batch + (G,), generator=gen, dtype=torch.float64)
    return logits, uniform


def sample_index(sample: torch.Tensor) -> torch.Tensor:
    return sample.detach().argmax(-1).cpu()


def sequential_cumsum(probs: torch.Tensor) -> torch.Tensor:
    """The kernels' cumulative sum: ((p_0 + p_1) + p_2) + ... in probs' dtype."""
    out = torch.empty_like(probs)
    c = torch.zeros_like(probs[..., 0])
    for k in range(probs.shape[-1]):
        c = c + probs[..., k]
        out[..., k] = c
    return out


def assert_index_matches_up_to_boundaries(index, index_ref, probs_ref, uniform, dtype, msg=""):
    """``index`` equals ``index_ref`` except in rows where ``uniform`` is within a few
    ulps (of the accumulation type) of a cumulative-sum boundary of ``probs_ref``,
    and such rows are rare."""
    index, index_ref = index.cpu(), index_ref.cpu()
    differ = index != index_ref
    if not differ.any():
        return
    eps = torch.finfo(acc_dtype(dtype)).eps
    c = probs_ref.detach().cpu().double().cumsum(-1)[differ][:, :-1]
    u = uniform.detach().cpu().double()[differ]
    dist = (c - u[:, None]).abs().amin(-1)
    assert (dist <= 64 * eps).all(), (
        f"{msg}: index differs in {int(differ.sum())} rows, some away from any boundary: "
        f"distances {dist.tolist()}")
    assert differ.float().mean() <= 1e-3, f"{msg}: index differs in {int(differ.sum())} rows"


# --------------------------------------------------------------------------------------
# The contracts
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GaussianCase:
    batch: tuple[int, ...]
    S: int
    min_std: float = 0.1
    std_act: str = "softplus"
    mean_act: str = "none"
    min_std_mode: str = "add"


@dataclasses.dataclass(frozen=True)
class CategoricalCase:
    batch: tuple[int, ...]
    G: int
    K: int
    unimix: float = 0.01


def build_gaussian(case: GaussianCase, dtype, device, gen) -> dict:
    stats, noise = gaussian_inputs(case.batch, case.S, gen)
    return dict(stats=stats.to(device=device, dtype=dtype),
                noise=noise.to(device=device, dtype=dtype), min_std=case.min_std,
                std_act=case.std_act, mean_act=case.mean_act, min_std_mode=case.min_std_mode)


def build_categorical(case: CategoricalCase, dtype, device, gen) -> dict:
    logits, uniform = categorical_inputs(case.batch, case.G, case.K, gen)
    return dict(logits=logits.to(device=device, dtype=dtype),
                uniform=quantize_uniform(uniform, dtype).to(device=device, dtype=dtype),
                unimix=case.unimix)


def _mean_is_a_copy(outs, refs, kwargs, dtype):
    """Without a mean activation the mean is the first half of stats, bit for bit."""
    if kwargs["mean_act"] != "none":
        return
    S = kwargs["noise"].shape[-1]
    assert torch.equal(outs[1].cpu(), kwargs["stats"][..., :S].cpu()), "mean is not a copy"


def _sample_is_onehot_of_its_index(sample, ref64, dtype, msg):
    """The value is the one-hot of the kernel's own index (up to one rounding)."""
    assert sample.dtype == dtype and sample.shape == ref64.shape, msg
    onehot = torch.nn.functional.one_hot(sample_index(sample), sample.shape[-1]).double()
    assert_close_to_ref(sample, onehot, dtype, msg)


def _index_matches_refs(outs, refs, kwargs, dtype):
    """Same search as the reference in the same dtype, and as the float64 reference
    (up to uniforms within a few ulps of a boundary)."""
    logits, uniform = (kwargs[k].detach().cpu() for k in ("logits", "uniform"))
    index = sample_index(outs[0])
    same_dtype_ref = categorical_sample_ref(logits, uniform, kwargs["unimix"])
    assert_index_matches_up_to_boundaries(index, sample_index(same_dtype_ref[0]),
                                          same_dtype_ref[1], uniform, dtype, "vs ref")
    assert_index_matches_up_to_boundaries(index, sample_index(refs[0]), refs[1], uniform,
                                          dtype, "vs ref64")


def _straight_through_value(outs):
    """``sample - sample.detach() + probs.detach()``: its value is probs (so the
    numerical Jacobian is d probs / d logits) and its analytical gradient is the
    sample's straight-through one."""
    sample, probs = outs
    return sample - sample.detach() + probs.detach(), probs


def _grad_like(x):
    return torch.randn(x.shape, generator=make_generator("g", x.shape)).to(x.dtype)


def native_gaussian(kw: dict) -> list:
    acts = (kw["std_act"], kw["mean_act"], kw["min_std_mode"])
    args = (kw["stats"], kw["noise"], kw["min_std"], *acts)
    stats, noise = kw["stats"].detach(), kw["noise"].detach()
    g = _grad_like(noise)
    backward = torch.ops.dreamer_fast.gaussian_sample_backward.default
    # every subset of upstream gradients in float32, all of them otherwise
    subsets = [(g, g * 2, g * 3)] + ([(g, None, None), (None, g, None), (None, None, g)]
                                     if g.dtype == torch.float32 else [])
    return [(torch.ops.dreamer_fast.gaussian_sample.default, args)] + [
        (backward, (*grads, stats, noise, kw["min_std"], *acts)) for grads in subsets]


def native_categorical(kw: dict) -> list:
    args = (kw["logits"], kw["uniform"], kw["unimix"])
    logits = kw["logits"].detach()
    g = _grad_like(logits)
    backward = torch.ops.dreamer_fast.categorical_sample_backward.default
    subsets = [(g, g * 2)] + ([(g, None), (None, g)] if g.dtype == torch.float32 else [])
    return [(torch.ops.dreamer_fast.categorical_sample.default, args)] + [
        (backward, (*grads, logits, kw["unimix"])) for grads in subsets]


def _set(**changes):
    """Set arguments; a callable value is applied to the argument's valid value."""
    def mutate(kw):
        for k, v in changes.items():
            kw[k] = v(kw[k]) if callable(v) else v
    return mutate


def _set_uniform(value):
    def mutate(kw):
        kw["uniform"] = kw["uniform"].clone()
        kw["uniform"][1, 1] = value
    return mutate


def _bad(table):
    return tuple(Bad(id, mutate, exc, arg) for id, (mutate, exc, arg) in table.items())


i64 = dict(dtype=torch.int64)
meta = dict(device="meta")
to_meta = lambda t: t.to("meta")  # noqa: E731

GAUSSIAN_BAD = _bad({
    "stats-int64": (_set(stats=torch.ones(4, 6, **i64)), TypeError, "stats"),
    "noise-int64": (_set(noise=torch.ones(4, 3, **i64)), TypeError, "noise"),
    "stats-bool": (_set(stats=torch.ones(4, 6, dtype=torch.bool)), TypeError, "stats"),
    "stats-list": (_set(stats=torch.Tensor.tolist), TypeError, "stats"),
    "noise-none": (_set(noise=None), TypeError, "noise"),
    "noise-float64": (_set(noise=torch.Tensor.double), TypeError, "noise"),
    "stats-odd": (_set(stats=torch.zeros(4, 7)), ValueError, "stats"),
    "stats-0dim": (_set(stats=torch.tensor(1.0)), ValueError, "stats"),
    "noise-shape-last": (_set(noise=torch.zeros(4, 6)), ValueError, "noise"),
    "noise-shape-batch": (_set(noise=torch.zeros(5, 3)), ValueError, "noise"),
    "noise-extra-dim": (_set(noise=torch.zeros(1, 4, 3)), ValueError, "noise"),
    "noise-meta": (_set(noise=to_meta), ValueError, "noise"),
    "stats-meta": (_set(stats=to_meta), ValueError, "noise"),
    "min-std-negative": (_set(min_std=-0.1), ValueError, "min_std"),
    "min-std-nan": (_set(min_std=float("nan")), ValueError, "min_std"),
    "min-std-inf": (_set(min_std=float("inf")), ValueError, "min_std"),
    "min-std-str": (_set(min_std="0.1"), TypeError, "min_std"),
    "min-std-bool": (_set(min_std=True), TypeError, "min_std"),
    "min-std-tensor": (_set(min_std=torch.tensor([0.1, 0.2])), TypeError, "min_std"),
    "std-act-unknown": (_set(std_act="exp"), ValueError, "std_act"),
    "std-act-none": (_set(std_act=None), ValueError, "std_act"),
    "mean-act-unknown": (_set(mean_act="tanh"), ValueError, "mean_act"),
    "min-std-mode-unknown": (_set(min_std_mode="max"), ValueError, "min_std_mode"),
})

CATEGORICAL_BAD = _bad({
    "logits-int64": (_set(logits=torch.ones(4, 2, 5, **i64)), TypeError, "logits"),
    "uniform-int64": (_set(uniform=torch.zeros(4, 2, **i64)), TypeError, "uniform"),
    "logits-list": (_set(logits=torch.Tensor.tolist), TypeError, "logits"),
    "uniform-none": (_set(uniform=None), TypeError, "uniform"),
    "uniform-float64": (_set(uniform=torch.Tensor.double), TypeError, "uniform"),
    "logits-bfloat16": (_set(logits=torch.Tensor.bfloat16), TypeError, "uniform"),
    "logits-1dim": (_set(logits=torch.zeros(5), uniform=torch.zeros(())), ValueError, "logits"),
    "logits-0dim": (_set(logits=torch.tensor(0.0)), ValueError, "logits"),
    "logits-no-class": (_set(logits=torch.zeros(4, 2, 0)), ValueError, "logits"),
    "uniform-shape": (_set(uniform=torch.zeros(4, 3)), ValueError, "uniform"),
    "uniform-with-class-dim": (_set(uniform=torch.zeros(4, 2, 5)), ValueError, "uniform"),
    "uniform-meta": (_set(uniform=to_meta), ValueError, "uniform"),
    "logits-meta": (_set(logits=to_meta), ValueError, "uniform"),
    "uniform-negative": (_set_uniform(-1e-6), ValueError, "uniform"),
    "uniform-one": (_set_uniform(1.0), ValueError, "uniform"),
    "uniform-above-one": (_set_uniform(3.0), ValueError, "uniform"),
    "uniform-nan": (_set_uniform(float("nan")), ValueError, "uniform"),
    "uniform-inf": (_set_uniform(float("inf")), ValueError, "uniform"),
    "unimix-negative": (_set(unimix=-0.01), ValueError, "unimix"),
    "unimix-one": (_set(unimix=1.0), ValueError, "unimix"),
    "unimix-nan": (_set(unimix=float("nan")), ValueError, "unimix"),
    "unimix-str": (_set(unimix="0.01"), TypeError, "unimix"),
    "unimix-none": (_set(unimix=None), TypeError, "unimix"),
})

GAUSSIAN_BAD_CASE, CATEGORICAL_BAD_CASE = GaussianCase((4,), 3), CategoricalCase((4,), 2, 5)


def _gaussian_good():
    return build_gaussian(GAUSSIAN_BAD_CASE, torch.float32, "cpu", make_generator("g-good"))


def _categorical_good():
    return build_categorical(CATEGORICAL_BAD_CASE, torch.float32, "cpu",
                             make_generator("c-good"))


# Direct torch.ops calls skip the Python checks; the C++ TORCH_CHECKs (and, for meta
# inputs, the fake kernels) name the argument.
def _g():
    kw = _gaussian_good()
    return kw["stats"], kw["noise"]


def _c():
    kw = _categorical_good()
    return kw["logits"], kw["uniform"]


def _direct(op, table):
    return tuple(DirectBad(id, op, make_args, arg) for id, (make_args, arg) in table.items())


GAUSSIAN_DIRECT_BAD = _direct("gaussian_sample", {
    "stats-odd": (lambda: (torch.zeros(4, 7), torch.zeros(4, 3), 0.1), "stats"),
    "stats-0dim": (lambda: (torch.tensor(1.0), torch.tensor(1.0), 0.1), "stats"),
    "stats-int": (lambda: (torch.zeros(4, 6, **i64), torch.zeros(4, 3, **i64), 0.1), "stats"),
    "noise-shape": (lambda: (_g()[0], torch.zeros(4, 4), 0.1), "noise"),
    "noise-dtype": (lambda: (_g()[0], _g()[1].double(), 0.1), "noise"),
    "noise-meta": (lambda: (_g()[0], _g()[1].to("meta"), 0.1), "noise"),
    "min-std": (lambda: (*_g(), -1.0), "min_std"),
    "min-std-nan": (lambda: (*_g(), float("nan")), "min_std"),
    "std-act": (lambda: (*_g(), 0.1, "relu", "none"), "std_act"),
    "mean-act": (lambda: (*_g(), 0.1, "softplus", "tanh3"), "mean_act"),
    "min-std-mode": (lambda: (*_g(), 0.1, "softplus", "none", "floor"), "min_std_mode"),
    "all-meta-std-act": (lambda: (torch.zeros(4, 6, **meta), torch.zeros(4, 3, **meta), 0.1,
                                  "sigmoid3"), "std_act"),
    # All-meta inputs run the fake kernel alone (as torch.compile tracing does).
    "all-meta-noise": (lambda: (torch.zeros(4, 6, **meta), torch.zeros(4, 2, **meta), 0.1),
                       "noise"),
    "all-meta-odd": (lambda: (torch.zeros(4, 5, **meta), torch.zeros(4, 2, **meta), 0.1),
                     "stats"),
    "all-meta-min-std": (lambda: (torch.zeros(4, 6, **meta), torch.zeros(4, 3, **meta), -1.0),
                         "min_std"),
})
CATEGORICAL_DIRECT_BAD = _direct("categorical_sample", {
    "logits-1dim": (lambda: (torch.zeros(5), torch.zeros(()), 0.01), "logits"),
    "logits-int": (lambda: (torch.zeros(4, 2, 5, **i64), torch.zeros(4, 2, **i64), 0.01),
                   "logits"),
    "no-class": (lambda: (torch.zeros(4, 2, 0), torch.zeros(4, 2), 0.0), "logits"),
    "uniform-shape": (lambda: (_c()[0], torch.zeros(4, 3), 0.01), "uniform"),
    "uniform-dtype": (lambda: (_c()[0], _c()[1].double(), 0.01), "uniform"),
    "unimix": (lambda: (*_c(), 1.0), "unimix"),
    "unimix-nan": (lambda: (*_c(), float("nan")), "unimix"),
    "all-meta-uniform": (lambda: (torch.zeros(4, 2, 5, **meta), torch.zeros(4, 5, **meta), 0.0),
                         "uniform"),
    "all-meta-1dim": (lambda: (torch.zeros(5, **meta), torch.zeros((), **meta), 0.0), "logits"),
    "all-meta-unimix": (lambda: (torch.zeros(4, 2, 5, **meta), torch.zeros(4, 2, **meta),
                                 -1.0), "unimix"),
})

GAUSSIAN = OpContract(
    name="gaussian_sample", fast=gaussian_sample, ref=gaussian_sample_ref, build=build_gaussian,
    differentiable=("stats", "noise"), outputs=("sample", "mean", "std"),
    native=native_gaussian, bad=GAUSSIAN_BAD, direct_bad=GAUSSIAN_DIRECT_BAD,
    bad_case=GAUSSIAN_BAD_CASE, extra=_mean_is_a_copy,
)
CATEGORICAL = OpContract(
    name="categorical_sample", fast=categorical_sample, ref=categorical_sample_ref,
    build=build_categorical, differentiable=("logits",), outputs=("sample", "probs"),
    native=native_categorical, bad=CATEGORICAL_BAD, direct_bad=CATEGORICAL_DIRECT_BAD,
    bad_case=CATEGORICAL_BAD_CASE, compare={"sample": _sample_is_onehot_of_its_index},
    extra=_index_matches_refs, gradcheck_outputs=_straight_through_value,
)


def _bid(batch):
    return "b" + "x".join(map(str, batch))


# dreamerv3-torch's std_act / mean_act options (every std_act with and without tanh5)
GAUSS_ACTS = {f"{sa}-{ma}": GaussianCase((4, 3), 7, 0.1, sa, ma)
              for sa in ("softplus", "abs", "sigmoid", "sigmoid2") for ma in ("none", "tanh5")
              if (sa, ma) != ("softplus", "none")}
# TorchRL's std = max(softplus(raw), scale_lb); min_std 0.6 puts part of the softplus of
# the stats (normals x 3) below the bound
GAUSS_ACTS |= {f"{sa}-clamp": GaussianCase((4, 3), 7, 0.6, sa, "none", "clamp")
               for sa in ("softplus", "sigmoid")}
BATCHES = [(1,), (37,), (3, 5)]
S_VALUES = [1, 30, 32, 33]
GK_VALUES = [(1, 1), (4, 2), (32, 32), (3, 33), (2, 255)]
# Smaller grid for the low-precision dtypes and for CUDA.
BATCHES_SMALL = [(37,), (3, 5)]
S_SMALL = [1, 33]
GK_SMALL = [(4, 2), (32, 32), (2, 255)]

globals().update(contract_tests(
    GAUSSIAN,
    grid={f"{_bid(b)}-S{S}": GaussianCase(b, S) for b in BATCHES for S in S_VALUES},
    small_grid={f"{_bid(b)}-S{S}": GaussianCase(b, S) for b in BATCHES_SMALL for S in S_SMALL},
    devices_grid={**{f"min_std{m}": GaussianCase((4, 3), 7, m) for m in (0.0, 0.1, 2)},
                  "wide": GaussianCase((64, 9), 257), **GAUSS_ACTS},
    noncontig={"b4x6-S5": GaussianCase((4, 6), 5),
               "b4x6-S5-sigmoid2-tanh5": GaussianCase((4, 6), 5, 0.1, "sigmoid2", "tanh5")},
    empty={"b0x3-S4": GaussianCase((0, 3), 4), "b5-S0": GaussianCase((5,), 0),
           "b0x3-S4-abs-tanh5": GaussianCase((0, 3), 4, 0.1, "abs", "tanh5")},
    gradcheck={**{f"{_bid(b)}-S{S}-min_std{m}": GaussianCase(b, S, m)
                  for b, S in [((3,), 1), ((2, 3), 4)] for m in (0.0, 0.1)},
               **{k: dataclasses.replace(c, batch=(2, 3), S=4) for k, c in GAUSS_ACTS.items()}},
    opcheck={"f32-none": (GaussianCase((3,), 4), torch.float32, "none"),
             "f32-all": (GaussianCase((3,), 4), torch.float32, "all"),
             "f64-stats": (GaussianCase((2, 3), 1, 0.0), torch.float64, "even"),
             "bf16-noise": (GaussianCase((5,), 3, 1.0), torch.bfloat16, "odd"),
             **{f"f64-{k}": (dataclasses.replace(c, batch=(3,), S=4), torch.float64, "all")
                for k, c in GAUSS_ACTS.items()}},
    compile={"b8x3-S6": GaussianCase((8, 3), 6),
             "b8x3-S6-sigmoid-tanh5": GaussianCase((8, 3), 6, 0.1, "sigmoid", "tanh5")},
))
globals().update(contract_tests(
    CATEGORICAL,
    grid={f"{_bid(b)}-G{G}K{K}": CategoricalCase(b, G, K) for b in BATCHES
          for G, K in GK_VALUES},
    small_grid={f"{_bid(b)}-G{G}K{K}": CategoricalCase(b, G, K) for b in BATCHES_SMALL
                for G, K in GK_SMALL},
    # Wider rows and many rows: several parallel_for tasks on the CPU; on CUDA the
    # warp kernels with K up to 256 in registers and the unbounded-K kernel.
    devices_grid={**{f"unimix{u}": CategoricalCase((5,), 3, 32, u) for u in
                     (0.0, 0.01, 0.5, 0.999)},
                  **{f"wide-G{G}K{K}": CategoricalCase((2,), G, K) for G, K in
                     [(700, 3), (64, 32), (8, 64), (4, 129), (3, 300), (2, 1000),
                                      (1100, 32)]}},
    noncontig={"b5x3-G4K33": CategoricalCase((5, 3), 4, 33)},
    empty={"b0-G4K32": CategoricalCase((0,), 4, 32)},
    gradcheck={f"{_bid(b)}-G{G}K{K}-unimix{u}": CategoricalCase(b, G, K, u)
               for b, G, K in [((2,), 1, 1), ((2,), 3, 2), ((2,), 2, 7), ((1,), 2, 33)]
               for u in (0.0, 0.1)},
    opcheck={"f32-K5-none": (CategoricalCase((3,), 2, 5), torch.float32, "none"),
             "f32-K32-all": (CategoricalCase((3,), 2, 32), torch.float32, "all"),
             "f64-K33": (CategoricalCase((2, 2), 1, 33, 0.0), torch.float64, "all"),
             "f16-K2": (CategoricalCase((4,), 3, 2, 0.5), torch.float16, "all")},
    # check_range=True: the uniform range check (a data-dependent branch) is skipped
    # while tracing
    compile={"b6-G4K32": CategoricalCase((6,), 4, 32)},
))


# --------------------------------------------------------------------------------------
# Gradients through a subset of the outputs (the others get None, not zeros)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("used", [(0,), (1,), (2,), (0, 2), (1, 2)],
                         ids=lambda v: "out" + "".join(map(str, v)))
@pytest.mark.parametrize("device", DEVICES)
def test_gaussian_partial_output_grads(device, used, gen):
    stats64, noise64 = gaussian_inputs((6,), 5, gen)
    grads = {}
    for name, fn, dev in (("fast", gaussian_sample, device), ("ref", gaussian_sample_ref, "cpu")):
        stats = stats64.to(dev).requires_grad_()
        noise = noise64.to(dev).requires_grad_()
        outs = fn(stats, noise, 0.1)
        loss = sum((outs[i] * (i + 1.5)).sum() for i in used)
        loss.backward()
        grads[name] = (stats.grad, noise.grad)
    for fast_g, ref_g in zip(grads["fast"], grads["ref"]):
        if ref_g is None:  # noise gets no gradient unless the sample is used
            assert fast_g is None
        else:
            torch.testing.assert_close(fast_g.cpu(), ref_g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("used", [(0,), (1,)], ids=["sample", "probs"])
@pytest.mark.parametrize("device", DEVICES)
def test_categorical_partial_output_grads(device, used, gen):
    logits64, u64 = categorical_inputs((6,), 2, 33, gen)
    grads = []
    for fn, dev in ((categorical_sample, device), (categorical_sample_ref, "cpu")):
        logits = logits64.to(dev).requires_grad_()
        outs = fn(logits, u64.to(dev), 0.1)
        w = torch.arange(33, dtype=torch.float64, device=dev)
        sum((outs[i] * w).sum() for i in used).backward()
        grads.append(logits.grad.cpu())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_straight_through_gradient_equals_probs_gradient(device, gen):
    """d sample / d logits is d probs / d logits (the straight-through estimator)."""
    logits64, u64 = categorical_inputs((4,), 3, 32, gen)
    logits = logits64.to(device).requires_grad_()
    sample, probs = categorical_sample(logits, u64.to(device), 0.05)
    g = randn(sample.shape, gen).to(device)
    (from_sample,) = torch.autograd.grad(sample, logits, g, retain_graph=True)
    (from_probs,) = torch.autograd.grad(probs, logits, g)
    torch.testing.assert_close(from_sample, from_probs, rtol=0, atol=0)


def test_uniform_gets_no_gradient(gen):
    logits64, u64 = categorical_inputs((4,), 3, 5, gen)
    for fn in (categorical_sample, categorical_sample_ref):
        logits = logits64.clone().requires_grad_()
        u = u64.clone().requires_grad_()
        sample, probs = fn(logits, u)
        (sample.sum() + probs.square().sum()).backward()
        assert u.grad is None
        assert logits.grad is not None


# --------------------------------------------------------------------------------------
# The index search
# --------------------------------------------------------------------------------------

def _boundary_uniforms(probs_row: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Uniform values in [0, 1) of ``dtype`` at, just below and just above every
    boundary c_k (k < K - 1) of the sequential cumsum of ``probs_row`` (acc dtype),
    plus 0 and the largest value below 1."""
    c = sequential_cumsum(probs_row)[:-1].to(dtype)
    down = torch.nextafter(c, torch.zeros_like(c))
    up = torch.nextafter(c, torch.ones_like(c))
    u = torch.cat([c, down, up, torch.tensor([0.0, below_one(dtype)], dtype=dtype)])
    return u[(u >= 0) & (u < 1)]


def _expected_index(probs_row_acc: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Smallest k with u < c_k (c the sequential cumsum), clamped to K - 1, written
    directly (not via categorical_index_ref)."""
    c = sequential_cumsum(probs_row_acc).tolist()  # exact: float32/64 -> Python float
    K = len(c)
    out = []
    for v in u.to(probs_row_acc.dtype).tolist():
        out.append(next((k for k in range(K - 1) if v < c[k]), K - 1))
    return torch.tensor(out, dtype=torch.int64)


@pytest.mark.parametrize("K", [1, 2, 5, 32, 33, 255])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=_dtype_id)
@pytest.mark.parametrize("device", DEVICES)
def test_index_is_the_shared_search_on_the_kernels_probs(device, dtype, K, gen):
    """Bit-exact: the kernel's index is the sequential-cumsum search applied to the
    probs it returns (float32/float64: the returned probs are the accumulation-type
    values it searched), for uniforms on, just below and just above every
    boundary, at 0 and just below 1."""
    base = randn((3, K), gen, scale=2.0).to(dtype=dtype, device=device)
    # the probs of this device's kernel (exp and the warp's sum order differ by device)
    probs_rows = categorical_sample(
        base[:, None, :], torch.zeros(3, 1, dtype=dtype, device=device))[1][:, 0].cpu()
    for row in range(3):
        u = _boundary_uniforms(probs_rows[row], dtype)
        logits = base[row].expand(u.numel(), K)[None]  # G = one group per u
        sample, probs = categorical_sample(logits, u[None].to(device))
        assert torch.equal(probs[0].cpu(), probs_rows[row].expand(u.numel(), K)), (
            "probs of identical rows differ")
        index = sample_index(sample)[0]
        assert torch.equal(index, _expected_index(probs_rows[row].cpu(), u))
        assert torch.equal(index, categorical_index_ref(probs[0].cpu(), u))
        # On a boundary the uniform belongs to the next class.
        c = sequential_cumsum(probs_rows[row].cpu())
        on_boundary = torch.isin(u, c[:-1])
        if on_boundary.any():
            k = torch.searchsorted(c[:-1].contiguous(), u[on_boundary].contiguous())
            assert torch.equal(index[on_boundary], k + 1)


@pytest.mark.parametrize("K", [2, 8, 32, 64, 65])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=_dtype_id)
@pytest.mark.parametrize("device", DEVICES)
def test_categorical_row_position_does_not_matter(device, dtype, K, gen):
    """Bit-exact: a row gives the same probs, sample and logit gradient wherever it
    sits in a call (the CPU launcher takes rows in blocks for K <= 64, and the rows
    of a partial last block must go through the same arithmetic as the others)."""
    row = randn((K,), gen, scale=2.0).to(dtype)
    g = randn((2, K), gen).to(dtype)
    u = torch.tensor(0.37, dtype=dtype)

    def run(rows: int):
        logits = row.expand(rows, K)[None].to(device).clone().requires_grad_()
        sample, probs = categorical_sample(logits, u.expand(1, rows).to(device))
        torch.autograd.backward((sample, probs), [g[0].expand(1, rows, K).to(device),
                                                  g[1].expand(1, rows, K).to(device)])
        return sample[0].cpu(), probs[0].cpu(), logits.grad[0].cpu()

    one = run(1)
    for rows in (5, 33, 100):
        for name, got, want in zip(("sample", "probs", "d/d logits"), run(rows), one):
            assert torch.equal(got, want.expand(rows, K)), f"{name} differ at {rows} rows"


def _exact_prob_logits(K: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows whose softmax every implementation computes exactly (logits 0 or -inf:
    exp gives exactly 1 or 0, the sum is a small integer): some all-finite, some
    with -inf classes, not at the last position only."""
    rows = [torch.zeros(K)]
    if K > 1:
        mask = torch.zeros(K)
        mask[1::3] = -math.inf
        rows.append(mask)
        mask = torch.zeros(K)
        mask[: K // 2] = -math.inf
        rows.append(mask)
        mask = torch.full((K,), -math.inf)
        mask[K // 3] = 0.0
        rows.append(mask)
    return torch.stack(rows).to(dtype)


@pytest.mark.parametrize("unimix", [0.0, 0.01, 0.3], ids=lambda v: f"mix{v}")
@pytest.mark.parametrize("K", [1, 2, 3, 32, 33, 255])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=_dtype_id)
def test_fast_and_ref_same_index_at_boundaries(dtype, K, unimix):
    """Bit-exact fast vs reference on logits whose probs both compute exactly: the
    same probs bits, then the same index for uniforms on, just below and just above
    every boundary, 0 and just below 1."""
    base = _exact_prob_logits(K, dtype)
    zeros = torch.zeros(base.shape[0], 1, dtype=dtype)
    p_fast = categorical_sample(base[:, None], zeros, unimix)[1][:, 0]
    p_ref = categorical_sample_ref(base[:, None], zeros, unimix)[1][:, 0]
    assert torch.equal(p_fast, p_ref)
    # The accumulation-type probs (what both searched) are the same too: recompute
    # them the reference's way and check the kernel rounds them to what it returned.
    acc = acc_dtype(dtype)
    p_acc = torch.softmax(base.to(acc), -1) * (1.0 - unimix) + unimix / K
    assert torch.equal(p_acc.to(dtype), p_fast)
    for row in range(base.shape[0]):
        u = _boundary_uniforms(p_acc[row], dtype)
        logits = base[row].expand(u.numel(), K)[None]
        i_fast = sample_index(categorical_sample(logits, u[None], unimix)[0])[0]
        i_ref = sample_index(categorical_sample_ref(logits, u[None], unimix)[0])[0]
        assert torch.equal(i_fast, i_ref)
        assert torch.equal(i_fast, _expected_index(p_acc[row], u))
        if unimix == 0.0 and K > 1:  # zero-probability classes are never drawn ...
            never = p_acc[row] == 0
            never[-1] = False  # ... except through the clamp to K - 1
            assert not never[i_fast].any()


@pytest.mark.parametrize("K", [2, 32, 255])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("device", DEVICES)
def test_fast_and_ref_same_index_random(device, dtype, K):
    """Random logits and uniforms (20k rows): the same index as the reference in the
    same dtype, except for uniforms within a few ulps of a boundary (see the module
    docstring), and uniform = 0 / just below 1 always agree."""
    gen = make_generator("same-index", dtype, K)
    rows = 20000 // K + 64
    logits, u = categorical_inputs((rows,), 4, K, gen)
    logits = logits.to(dtype)
    u = quantize_uniform(u, dtype).to(dtype)
    u[:8] = 0.0
    u[8:16] = below_one(dtype)
    s_fast, p_fast = categorical_sample(logits.to(device), u.to(device))
    s_ref, p_ref = categorical_sample_ref(logits, u)
    i_fast, i_ref = sample_index(s_fast), sample_index(s_ref)
    assert_index_matches_up_to_boundaries(i_fast, i_ref, p_ref, u, dtype)
    assert torch.equal(i_fast[:16], i_ref[:16])
    assert (i_fast[:8] == 0).all()


def test_index_search_hand_computed():
    # K = 2, probs [0.5, 0.5] (exact): u < 0.5 -> 0, u = 0.5 (on the boundary) -> 1.
    logits = torch.zeros(1, 5, 2)
    u = torch.tensor([[0.0, 0.25, 0.4999999701976776, 0.5, 0.9999999403953552]])
    for fn in (categorical_sample, categorical_sample_ref):
        sample, probs = fn(logits, u, 0.0)
        assert probs.eq(0.5).all()
        assert sample_index(sample)[0].tolist() == [0, 0, 0, 1, 1]
        assert sample[0, :, :].sum(-1).eq(1).all()
    # K = 4, probs [0.1, 0.2, 0.3, 0.4] (unimix 0): boundaries 0.1, 0.3, 0.6.
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    logits = logits.expand(1, 6, 4)
    u = torch.tensor([[0.0, 0.05, 0.15, 0.35, 0.65, 0.99]], dtype=torch.float64)
    for fn in (categorical_sample, categorical_sample_ref):
        assert sample_index(fn(logits, u, 0.0)[0])[0].tolist() == [0, 0, 1, 2, 3, 3]


# --------------------------------------------------------------------------------------
# χ² goodness of fit of the sampler
# --------------------------------------------------------------------------------------

CHI2_DRAWS = 100_000
CHI2_P_MIN = 1e-4


def chi2_pvalue(counts: torch.Tensor, probs64: torch.Tensor) -> float:
    """p-value of Pearson's χ² test of ``counts`` against ``probs64`` (df = K - 1)."""
    n = counts.sum()
    expected = n * probs64
    assert expected.min() >= 5, "χ² needs expected counts >= 5"
    stat = ((counts.double() - expected) ** 2 / expected).sum()
    df = torch.tensor((counts.numel() - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(df, stat / 2))


def _chi2_logits(K: int) -> torch.Tensor:
    """A lopsided distribution: probs from ~0.2 down to the unimix floor."""
    g = make_generator("chi2-logits", K)
    return torch.randn(K, generator=g, dtype=torch.float64) * 2.5


@pytest.mark.parametrize("K", [3, 32])
@pytest.mark.parametrize("fn", [categorical_sample, categorical_sample_ref],
                         ids=["fast", "ref"])
def test_categorical_chi_square(fn, K):
    """100k draws (fixed seed) fit ``probs`` (computed in float64) at p > 1e-4, and the
    same test rejects (p < 1e-4) the counts of wrong samplers: unimix forgotten,
    indices off by one, the distribution reversed."""
    unimix = 0.01
    logits64 = _chi2_logits(K)
    probs64 = torch.softmax(logits64, -1) * (1 - unimix) + unimix / K
    logits = logits64.float().expand(CHI2_DRAWS, 1, K)
    u = torch.rand(CHI2_DRAWS, 1, generator=make_generator("chi2-uniform", K))
    sample, probs = fn(logits, u, unimix)
    torch.testing.assert_close(probs[0, 0].double(), probs64, rtol=1e-6, atol=1e-7)
    index = sample_index(sample)[:, 0]
    counts = torch.bincount(index, minlength=K)
    assert sample.sum(-1).sub(1).abs().max() < 1e-6  # one-hot rows
    p = chi2_pvalue(counts, probs64)
    assert p > CHI2_P_MIN, f"sampler does not fit probs: p = {p:.3g}, counts {counts.tolist()}"
    # Power: wrong samplers are rejected.
    no_unimix = sample_index(fn(logits, u, 0.0)[0])[:, 0]
    wrong = {
        "unimix forgotten": torch.bincount(no_unimix, minlength=K),
        "off by one": torch.bincount((index + 1) % K, minlength=K),
        "reversed": counts.flip(0),
    }
    for name, wrong_counts in wrong.items():
        p_wrong = chi2_pvalue(wrong_counts, probs64)
        assert p_wrong < CHI2_P_MIN, f"χ² failed to reject a wrong sampler ({name}): {p_wrong}"


# --------------------------------------------------------------------------------------
# Hand-computed values, softplus threshold, NaN, extreme logits
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("fn", [gaussian_sample, gaussian_sample_ref], ids=["fast", "ref"])
@pytest.mark.parametrize("device", DEVICES)
def test_gaussian_hand_computed(device, fn, dtype):
    # raw = 0: softplus = ln 2; raw = 25 (> threshold 20): softplus = 25 exactly;
    # raw = -inf: softplus = 0, so std = min_std.
    kw = dict(dtype=dtype, device=device)
    stats = torch.tensor([[1.0, -2.0, 0.5, 0.0, 25.0, -math.inf]], **kw)
    noise = torch.tensor([[2.0, 0.5, -1.0]], **kw)
    sample, mean, std = fn(stats, noise, 0.25)
    ln2 = math.log(2.0)
    exp = {
        "mean": [1.0, -2.0, 0.5],
        "std": [ln2 + 0.25, 25.25, 0.25],
        "sample": [1.0 + 2.0 * (ln2 + 0.25), -2.0 + 0.5 * 25.25, 0.5 - 0.25],
    }
    got = {"sample": sample, "mean": mean, "std": std}
    for name, e in exp.items():
        assert_close_to_ref(got[name][0], torch.tensor(e, dtype=torch.float64), dtype, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=_dtype_id)
def test_softplus_threshold_matches_torch(dtype):
    raw = torch.tensor([-100.0, -20.0, -1e-3, 0.0, 1.0, 19.9, 20.0, 20.0001, 20.5, 88.0, 1e4],
                       dtype=dtype)
    stats = torch.cat([torch.zeros_like(raw), raw])[None].requires_grad_()
    noise = torch.zeros(1, raw.numel(), dtype=dtype)
    _, _, std = gaussian_sample(stats, noise, 0.0)
    expected = torch.nn.functional.softplus(raw.double())
    # (atol: softplus(-100) = 3.7e-44 is subnormal in float32)
    torch.testing.assert_close(std[0].double(), expected, rtol=2 * torch.finfo(dtype).eps,
                               atol=torch.finfo(dtype).tiny)
    assert std[0, -4:].tolist() == raw[-4:].tolist()  # the identity above the threshold
    # The derivative as torch's softplus_backward has it: exactly 1 above the threshold
    # (not sigmoid(x) = 1 - 2e-9 at 20.0001), z / (z + 1) at and below it.
    (g,) = torch.autograd.grad(std.sum(), stats)
    raw_t = raw.clone().requires_grad_()
    (expected_g,) = torch.autograd.grad(torch.nn.functional.softplus(raw_t).sum(), raw_t)
    torch.testing.assert_close(g[0, raw.numel():], expected_g,
                               rtol=4 * torch.finfo(dtype).eps, atol=0)
    assert g[0, -4:].tolist() == [1.0] * 4


@pytest.mark.parametrize("fn", [gaussian_sample, gaussian_sample_ref], ids=["fast", "ref"])
@pytest.mark.parametrize("device", DEVICES)
def test_gaussian_nan_propagates(device, fn, gen):
    stats, noise = (a.to(device) for a in gaussian_inputs((4,), 3, gen))
    stats[1, 3 + 2] = float("nan")  # raw std of element (1, 2)
    noise[2, 0] = float("nan")
    sample, mean, std = (o.cpu() for o in fn(stats, noise, 0.1))
    assert torch.isnan(std[1, 2]) and torch.isnan(sample[1, 2]) and torch.isnan(sample[2, 0])
    nan = torch.zeros(4, 3, dtype=torch.bool)
    nan[1, 2] = nan[2, 0] = True
    assert torch.isfinite(sample[~nan]).all() and torch.isfinite(mean).all()


@pytest.mark.parametrize("fn", [categorical_sample, categorical_sample_ref], ids=["fast", "ref"])
@pytest.mark.parametrize("device", DEVICES)
def test_categorical_nan_row(device, fn, gen):
    """A NaN logit makes its row's probs and sample NaN (index K - 1); other rows are
    untouched."""
    logits, u = (a.to(device) for a in categorical_inputs((3,), 4, 32, gen))
    logits[1, 2, 7] = float("nan")
    sample, probs = (o.cpu() for o in fn(logits, u))
    assert torch.isnan(probs[1, 2]).all() and torch.isnan(sample[1, 2]).all()
    ok = torch.ones(3, 4, dtype=torch.bool)
    ok[1, 2] = False
    assert torch.isfinite(probs[ok]).all() and torch.isfinite(sample[ok]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_categorical_extreme_logits_are_stable(device):
    """Large logits (the max is subtracted) and -inf (masked) classes."""
    logits = torch.tensor([[[1e4, 1e4 - 1.0, -1e4, 0.0], [-math.inf, 3e38, 3e38, -3e38]]],
                          device=device)
    u = torch.tensor([[0.9, 0.7]], device=device)
    for fn in (categorical_sample, categorical_sample_ref):
        sample, probs = fn(logits, u, 0.01)
        assert torch.isfinite(probs).all() and torch.isfinite(sample).all()
        expected = torch.softmax(logits.double(), -1) * 0.99 + 0.01 / 4
        torch.testing.assert_close(probs.double(), expected, rtol=1e-6, atol=1e-7)
        assert sample_index(sample).tolist() == [[1, 2]]


def test_defaults():
    g = make_generator("defaults")
    stats, noise = gaussian_inputs((3,), 4, g)
    torch.testing.assert_close(gaussian_sample(stats, noise), gaussian_sample(stats, noise, 0.1),
                               rtol=0, atol=0)
    logits, u = categorical_inputs((3,), 2, 8, g)
    torch.testing.assert_close(categorical_sample(logits, u),
                               categorical_sample(logits, u, 0.01), rtol=0, atol=0)
    torch.testing.assert_close(categorical_sample_ref(logits, u)[1],
                               categorical_sample_ref(logits, u, 0.01)[1], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_expanded_inputs(device, gen):
    """Stride-0 (expanded) inputs, as a shared logits row or broadcast noise would be."""
    logits = randn((1, 1, 32), gen).to(device).expand(6, 4, 32)
    u = torch.rand(6, 4, generator=gen, dtype=torch.float64).to(device)
    for a, b in zip(categorical_sample(logits, u), categorical_sample(logits.contiguous(), u)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    stats = randn((1, 10), gen).to(device).expand(7, 10)
    noise = randn((7, 5), gen).to(device)
    for a, b in zip(gaussian_sample(stats, noise), gaussian_sample(stats.contiguous(), noise)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# Native ops, fake kernels, torch.compile with inductor
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_direct_ops_match_public_ops(device, gen):
    stats, noise = (a.to(device) for a in gaussian_inputs((3, 2), 4, gen))
    for a, b in zip(torch.ops.dreamer_fast.gaussian_sample(stats, noise, 0.1),
                    gaussian_sample(stats, noise, 0.1)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    logits, u = (a.to(device) for a in categorical_inputs((3,), 2, 32, gen))
    for a, b in zip(torch.ops.dreamer_fast.categorical_sample(logits, u, 0.01),
                    categorical_sample(logits, u, 0.01)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_meta_tensors_use_fake_kernels():
    sample, mean, std = gaussian_sample(torch.empty(3, 5, 8, device="meta"),
                                        torch.empty(3, 5, 4, device="meta"))
    assert sample.device.type == "meta" and sample.shape == mean.shape == std.shape == (3, 5, 4)
    sample, probs = categorical_sample(torch.empty(3, 4, 32, device="meta"),
                                       torch.empty(3, 4, device="meta"))
    assert sample.device.type == "meta" and sample.shape == probs.shape == (3, 4, 32)


@pytest.mark.compile
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_gaussian_sample_inductor(gen):
    """fullgraph compile (inductor) with surrounding ops, forward and backward."""

    def wrap(fast):
        def f(stats, noise, min_std, std_act, mean_act, min_std_mode):
            sample, mean, std = fast(stats * 1.5, noise, min_std, std_act, mean_act,
                                     min_std_mode)
            return sample.tanh(), (mean - std).square()
        return f

    check_compile(GAUSSIAN, GaussianCase((8, 3), 6), gen, backend="inductor", wrap=wrap)
    check_compile(GAUSSIAN, GaussianCase((8, 3), 6, 0.1, "sigmoid2", "tanh5"), gen,
                  backend="inductor", wrap=wrap)


# --------------------------------------------------------------------------------------
# Argument errors beyond the contracts' lists
# --------------------------------------------------------------------------------------

def test_uniform_range_message_and_opt_out():
    kw = _categorical_good()
    _set_uniform(1.0)(kw)
    with pytest.raises(ValueError, match=r"check_range=False"):
        categorical_sample(**kw)
    # check_range=False skips the check: out-of-range values are clamped by the
    # search (u >= 1 and NaN -> the last class, u < 0 -> class 0), the same in both.
    u = kw["uniform"]
    u[0] = torch.tensor([1.0, float("nan")])
    u[2] = torch.tensor([-0.5, 7.0])
    fast = categorical_sample(kw["logits"], u, check_range=False)
    ref = categorical_sample_ref(kw["logits"], u, check_range=False)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b)
    index = sample_index(fast[0])
    assert index[0].tolist() == [4, 4] and index[2].tolist() == [0, 4]


def test_valid_edge_arguments_accepted():
    """min_std = 0 or an int, unimix = 0 or an int 0, uniform exactly 0 or just below 1."""
    kw = _gaussian_good()
    for min_std in (0, 0.0, 3):
        kw["min_std"] = min_std
        for a, b in zip(gaussian_sample(**kw), gaussian_sample_ref(**kw)):
            torch.testing.assert_close(a, b)
    kw = _categorical_good()
    kw["uniform"][0] = torch.tensor([0.0, below_one(torch.float32)])
    for unimix in (0, 0.0, 0.999):
        kw["unimix"] = unimix
        for a, b in zip(categorical_sample(**kw), categorical_sample_ref(**kw)):
            torch.testing.assert_close(a, b)


def test_direct_backward_op_errors():
    stats, noise = _g()
    g = torch.ones_like(noise)
    bwd = torch.ops.dreamer_fast.gaussian_sample_backward
    with pytest.raises(RuntimeError, match="`grad_sample`"):
        bwd(g[:2], None, None, stats, noise, 0.1)
    with pytest.raises(RuntimeError, match="`grad_mean`"):
        bwd(None, g.double(), None, stats, noise, 0.1)
    with pytest.raises(RuntimeError, match="`grad_std`"):
        bwd(g, g, torch.ones_like(stats), stats, noise, 0.1)
    with pytest.raises(RuntimeError, match="`noise`"):
        bwd(g, g, g, stats, noise[:, :2], 0.1)
    with pytest.raises(RuntimeError, match="`min_std`"):
        bwd(g, g, g, stats, noise, -0.5)
    logits, _ = _c()
    g = torch.ones_like(logits)
    bwd = torch.ops.dreamer_fast.categorical_sample_backward
    with pytest.raises(RuntimeError, match="`grad_sample`"):
        bwd(g[..., :3], None, logits, 0.01)
    with pytest.raises(RuntimeError, match="`grad_probs`"):
        bwd(None, g.half(), logits, 0.01)
    with pytest.raises(RuntimeError, match="`unimix`"):
        bwd(g, g, logits, -0.01)
    with pytest.raises(RuntimeError, match="`logits`"):
        bwd(g[0, 0], None, logits[0, 0], 0.01)
    # No gradient at all is allowed (and computes zeros).
    assert not bwd(None, None, logits, 0.01).any()


# --------------------------------------------------------------------------------------
# CUDA-only
# --------------------------------------------------------------------------------------

@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("K", [2, 32, 33, 255, 1000])
def test_cuda_matches_cpu(K):
    """Same probs (to float32 tolerance) and, away from boundaries, the same index on
    CUDA (thread / warp / unbounded-K kernels) as on the CPU."""
    gen = make_generator("cuda-cpu", K)
    logits, u = categorical_inputs((64,), 8, K, gen)
    logits, u = logits.float(), u.float()
    s_cpu, p_cpu = categorical_sample(logits, u)
    s_gpu, p_gpu = categorical_sample(logits.cuda(), u.cuda())
    torch.testing.assert_close(p_gpu.cpu(), p_cpu, rtol=1e-5, atol=1e-7)
    assert_index_matches_up_to_boundaries(sample_index(s_gpu), sample_index(s_cpu), p_cpu, u,
                                          torch.float32)


@requires_cuda
@pytest.mark.cuda
def test_cuda_graph_capture_replay():
    """check_range=False: no sync, so the op can be captured in a CUDA graph."""
    gen = make_generator("cuda-graph")
    logits, u = (a.float().cuda() for a in categorical_inputs((16,), 32, 32, gen))
    stats, noise = (a.float().cuda() for a in gaussian_inputs((16,), 32, gen))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            categorical_sample(logits, u, check_range=False)
            gaussian_sample(stats, noise)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sample, probs = categorical_sample(logits, u, check_range=False)
        g_sample, _, _ = gaussian_sample(stats, noise)
    for _ in range(2):
        fresh_l, fresh_u = (a.float() for a in categorical_inputs((16,), 32, 32, gen))
        logits.copy_(fresh_l)
        u.copy_(fresh_u)
        graph.replay()
        torch.cuda.synchronize()
        ref_s, ref_p = categorical_sample(fresh_l, fresh_u)
        torch.testing.assert_close(probs.cpu(), ref_p, rtol=1e-5, atol=1e-7)
        assert_index_matches_up_to_boundaries(sample_index(sample), sample_index(ref_s), ref_p,
                                              fresh_u, torch.float32)
