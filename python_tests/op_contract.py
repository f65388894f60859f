"""The op-contract harness: one description of a fast op and its reference, every generic
check generated from it.

An :class:`OpContract` says what a fast op ``<op>`` and its ``<op>_ref`` promise:

* ``fast``, ``ref``: the public functions (same signature);
* ``build(case, dtype, device, gen) -> kwargs``: the keyword arguments of one call for a
  shape case (tensors in ``dtype`` on ``device``, drawn from ``gen``; a list argument
  may hold tensors, as ``block_gru_cell``'s parameter lists do);
* ``differentiable``: the argument names that get gradients (a list argument: all of
  its tensors), ``outputs``: the names of the outputs (a tensor result is one output);
* ``native(kwargs) -> [(OpOverload, args)]``: the underlying ``torch.ops.dreamer_fast``
  calls for these arguments (forward and backward ops), for ``torch.library.opcheck``;
* ``bad``: :class:`Bad` cases (a mutation of valid arguments, the exception type and
  the argument name the message must quote), ``direct_bad``: :class:`DirectBad` raw op
  calls the C++ (or fake-kernel) checks must reject naming the argument.

:func:`contract_tests` turns a contract and the cases to use into test functions
(``globals().update(contract_tests(...))`` in the test module):

==========================  ===========================================================
``test_<op>_matches_ref``   fast in float64/float32 (CPU) vs ref in float64 on the same
                            values: every output and every gradient of ``differentiable``
                            (random upstream gradients), :func:`assert_close_to_ref`
``..._matches_ref_small``   the same for bfloat16/float16 on the CPU and every dtype on
                            CUDA (``DEVICES``; skipped without a device)
``..._noncontiguous``       transposed and step-2 views of every tensor argument: the
                            same outputs and gradients as contiguous copies
``..._empty``               zero-size inputs: fast and ref give the same shapes, the
                            backward runs
``..._gradcheck``           ``torch.autograd.gradcheck`` of the fast op in float64
``..._opcheck``             ``torch.library.opcheck`` on every native call
``..._compile``             ``torch.compile(fullgraph=True, backend='aot_eager')``: the
                            same outputs and gradients as eager (marked ``compile``)
``..._bad_input``           fast and ref raise the same exception type naming the argument
``..._direct_bad``          the raw ``torch.ops`` call raises a RuntimeError naming it
==========================  ===========================================================

Every ``check_*`` function raises ``AssertionError`` on a violation (never a pytest
outcome), so the meta-tests can run them on deliberately broken ops.

This module also holds what the checks are built on and what the other test modules
import through ``conftest``: the per-dtype tolerances, :func:`assert_close_to_ref`,
the device parameters and :func:`make_generator`.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from typing import Any, Callable

import pytest
import torch
from torch.autograd.gradcheck import GradcheckError
from torch.testing._internal.optests import OpCheckError

import dreamer_fast

# --------------------------------------------------------------------------------------
# Tolerances
# --------------------------------------------------------------------------------------

#: dtype -> (rtol, atol) for ``fast(dtype)`` vs ``ref(float64)`` on the same values.
#: atol is scaled by max(1, max|ref|) in :func:`assert_close_to_ref`.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),  # 8-bit mantissa: one rounding of the output ~4e-3
    torch.float16: (1e-2, 1e-2),  # 11-bit mantissa: one rounding of the output ~5e-4
}

ALL_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    return TOLERANCES[dtype]


def assert_close_to_ref(fast: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype,
                        msg: str = "") -> None:
    """``fast`` (computed in ``dtype``) matches ``ref64`` (computed in float64).

    The absolute tolerance is ``atol * max(1, max|ref64|)`` over finite entries, so a
    low-precision result is judged relative to the scale of the whole tensor (a
    return of ~50 in bf16 cannot be better than ~0.2 absolute near zero crossings).
    NaNs must be in the same places.
    """
    assert fast.dtype == dtype, f"{msg}: dtype {fast.dtype}, expected {dtype}"
    assert fast.shape == ref64.shape, f"{msg}: shape {tuple(fast.shape)} != {tuple(ref64.shape)}"
    assert ref64.dtype == torch.float64, "reference must be computed in float64"
    rtol, atol = TOLERANCES[dtype]
    ref64 = ref64.detach().cpu()
    finite = ref64[torch.isfinite(ref64)]
    scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    torch.testing.assert_close(
        fast.detach().cpu().to(torch.float64), ref64, rtol=rtol, atol=atol * scale,
        equal_nan=True, msg=lambda m: f"{msg} [{dtype}, scale {scale:.3g}]\n{m}",
    )


# --------------------------------------------------------------------------------------
# Devices and generators
# --------------------------------------------------------------------------------------

CUDA_SKIP_REASON = "no CUDA device / extension built without CUDA kernels"
HAS_CUDA_KERNELS = dreamer_fast.has_cuda_kernels()
requires_cuda = pytest.mark.skipif(not HAS_CUDA_KERNELS, reason=CUDA_SKIP_REASON)

CUDA_PARAM = pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda], id="cuda")
DEVICES = [pytest.param("cpu", id="cpu"), CUDA_PARAM]


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def device_dtype_param(device: str, dtype: torch.dtype, *rest, id_rest: str = ""):
    """``pytest.param(device, dtype, *rest)`` with the CUDA marks when device is cuda."""
    marks = [requires_cuda, pytest.mark.cuda] if device == "cuda" else []
    return pytest.param(device, dtype, *rest, marks=marks,
                        id=f"{device}-{dtype_id(dtype)}" + (f"-{id_rest}" if id_rest else ""))


def make_generator(*key: object) -> torch.Generator:
    """A CPU generator seeded from ``key`` (stable across runs and processes)."""
    g = torch.Generator()
    g.manual_seed(zlib.crc32(repr(key).encode()))
    return g


# --------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Bad:
    """Valid arguments changed by ``mutate(kwargs)`` (in place) must make fast and ref
    raise ``exc`` with a message quoting ``arg`` (as ```arg```)."""
    id: str
    mutate: Callable[[dict], None]
    exc: type
    arg: str


@dataclasses.dataclass(frozen=True)
class DirectBad:
    """``torch.ops.dreamer_fast.<op>(*make_args())`` must raise a RuntimeError quoting
    ``arg`` (the Python checks are skipped: this is the C++ or fake-kernel check)."""
    id: str
    op: str
    make_args: Callable[[], tuple]
    arg: str


@dataclasses.dataclass(frozen=True)
class OpContract:
    name: str
    fast: Callable
    ref: Callable
    build: Callable[[Any, torch.dtype, str, torch.Generator], dict]
    differentiable: tuple[str, ...]
    outputs: tuple[str, ...] = ("out",)
    native: Callable[[dict], list] | None = None
    bad: tuple[Bad, ...] = ()
    direct_bad: tuple[DirectBad, ...] = ()
    #: the case the bad inputs start from (built in float32 on the CPU)
    bad_case: Any = None
    dtypes: tuple[torch.dtype, ...] = ALL_DTYPES
    #: output name -> ``check(fast_out, ref64_out, dtype, msg)`` replacing
    #: :func:`assert_close_to_ref` for that output (e.g. a sampled index)
    compare: dict = dataclasses.field(default_factory=dict)
    #: ``extra(fast_outs, ref_outs, kwargs, dtype)``: op-specific checks of one run
    extra: Callable | None = None
    #: outputs -> outputs for gradcheck (e.g. a straight-through sample's value)
    gradcheck_outputs: Callable | None = None
    #: noncontiguous inputs give bitwise the same results (False: the dtype tolerance)
    noncontig_exact: bool = True
    #: ``ungraded(kwargs) -> labels`` of differentiable tensors that take no part in
    #: the result: neither fast nor ref may give them a gradient
    ungraded: Callable[[dict], set] | None = None


# --------------------------------------------------------------------------------------
# Argument plumbing: tensors may sit directly in kwargs or inside list arguments
# --------------------------------------------------------------------------------------

def _slots(kwargs: dict):
    """(label, key, index or None, tensor) for every tensor argument."""
    for key, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            yield key, key, None, v
        elif isinstance(v, (list, tuple)):
            for i, t in enumerate(v):
                if isinstance(t, torch.Tensor):
                    yield f"{key}[{i}]", key, i, t


def map_tensors(kwargs: dict, fn: Callable[[str, str, torch.Tensor], torch.Tensor]) -> dict:
    """A copy of ``kwargs`` with every tensor ``t`` replaced by ``fn(label, key, t)``."""
    out = {}
    for key, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            out[key] = fn(key, key, v)
        elif isinstance(v, (list, tuple)) and any(isinstance(t, torch.Tensor) for t in v):
            out[key] = [fn(f"{key}[{i}]", key, t) if isinstance(t, torch.Tensor) else t
                        for i, t in enumerate(v)]
        else:
            out[key] = v
    return out


def leaves(kwargs: dict, keys) -> tuple[list[str], list[torch.Tensor]]:
    """Labels and tensors of the arguments named in ``keys``, in argument order."""
    labels, tensors = [], []
    for label, key, _, t in _slots(kwargs):
        if key in keys:
            labels.append(label)
            tensors.append(t)
    return labels, tensors


def as_outputs(result) -> tuple[torch.Tensor, ...]:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


class _Upstream:
    """Random upstream gradients (float64, rounded to ``dtype``), drawn on first use
    from the outputs' shapes and reused for every later run."""

    def __init__(self, dtype: torch.dtype, gen: torch.Generator):
        self.dtype, self.gen, self.gouts = dtype, gen, None

    def __call__(self, outs) -> list[torch.Tensor]:
        if self.gouts is None:
            self.gouts = [torch.randn(o.shape, generator=self.gen, dtype=torch.float64)
                          .to(self.dtype).double() for o in outs]
        return self.gouts


def _backward(outs, ins, upstream: _Upstream):
    pairs = [(o, g.to(device=o.device, dtype=o.dtype)) for o, g in zip(outs, upstream(outs))
             if o.requires_grad]
    if not pairs or not ins:
        return [None] * len(ins)
    return torch.autograd.grad([o for o, _ in pairs], ins, [g for _, g in pairs],
                               allow_unused=True)


def _run(fn, kwargs, diff, upstream: _Upstream):
    """``fn(**kwargs)`` with the ``diff`` tensors as fresh leaves, then the backward of
    the upstream gradients. Returns (outputs, {label: grad or None})."""
    kw = map_tensors(kwargs, lambda label, key, t: t.detach().clone().requires_grad_(key in diff))
    outs = as_outputs(fn(**kw))
    labels, ins = leaves(kw, diff)
    grads = _backward(outs, ins, upstream)
    return tuple(o.detach() for o in outs), dict(zip(labels, grads))


# --------------------------------------------------------------------------------------
# Checks (each raises AssertionError on a violation)
# --------------------------------------------------------------------------------------

def check_matches_ref(c: OpContract, case, dtype: torch.dtype, device: str,
                      gen: torch.Generator, ref: Callable | None = None) -> None:
    """Fast in ``dtype`` on ``device`` vs the reference (``ref`` overrides ``c.ref``,
    e.g. an independent implementation) in float64 on the CPU, on the same input
    values: every output and the gradient of every differentiable input."""
    ref = ref or c.ref
    kwargs = c.build(case, dtype, device, gen)
    unknown = set(c.differentiable) - set(kwargs)
    assert not unknown, f"{c.name}: differentiable {sorted(unknown)} are not arguments"
    kwargs64 = map_tensors(kwargs, lambda label, key, t: t.detach().cpu().double())
    upstream = _Upstream(dtype, gen)
    outs, grads = _run(c.fast, kwargs, c.differentiable, upstream)
    refs, ref_grads = _run(ref, kwargs64, c.differentiable, upstream)
    assert len(outs) == len(c.outputs) == len(refs), (
        f"{c.name}: {len(outs)} outputs, ref {len(refs)}, contract {len(c.outputs)}")
    for name, out, r in zip(c.outputs, outs, refs):
        assert out.device.type == torch.device(device).type, f"{name} on {out.device}"
        c.compare.get(name, assert_close_to_ref)(out, r, dtype, f"{c.name} {name}")
    assert grads, f"{c.name}: no differentiable inputs"
    ungraded = c.ungraded(kwargs) if c.ungraded else set()
    for label, g in grads.items():
        rg = ref_grads[label]
        if label in ungraded:
            assert g is None and rg is None, f"{c.name}: {label} takes no part, got a gradient"
            continue
        assert rg is not None, f"{c.name}: the reference gives no gradient for {label}"
        assert g is not None, f"{c.name}: no gradient for {label}"
        assert g.shape == rg.shape, f"d/d {label}: shape {tuple(g.shape)} != {tuple(rg.shape)}"
        assert_close_to_ref(g, rg, dtype, f"{c.name} d/d {label}")
    if c.extra is not None:
        c.extra(outs, refs, kwargs, dtype)


def noncontiguous_view(x: torch.Tensor, layout: str):
    """(base, view_fn): ``view_fn(base)`` equals ``x`` as a non-contiguous view
    (``transposed``: the first dim stored last; ``step2``: every dim strided by 2 with
    NaN in between; 1-D tensors always ``step2``)."""
    if layout == "transposed" and x.dim() >= 2:
        base = x.movedim(0, -1).contiguous()
        view_fn = lambda b: b.movedim(-1, 0)  # noqa: E731
    else:
        base = x.new_full(tuple(2 * s for s in x.shape), float("nan"))
        sl = (slice(None, None, 2),) * x.dim()
        base[sl] = x
        view_fn = lambda b: b[sl]  # noqa: E731
    assert torch.equal(view_fn(base), x)
    return base.detach(), view_fn


def check_noncontiguous(c: OpContract, case, device: str, gen: torch.Generator,
                        layout: str, dtype: torch.dtype = torch.float64) -> None:
    """Non-contiguous views of every tensor argument give the outputs and gradients of
    contiguous copies (bitwise, unless ``c.noncontig_exact`` is False)."""
    kwargs = c.build(case, dtype, device, gen)
    upstream = _Upstream(dtype, gen)
    outs_c, grads_c = _run(c.fast, kwargs, c.differentiable, upstream)
    views = {}

    def make_view(label, key, t):
        base, fn = noncontiguous_view(t, layout)
        base.requires_grad_(key in c.differentiable)
        views[label] = (base, fn)
        return fn(base)

    kw_n = map_tensors(kwargs, make_view)
    assert any(not v.is_contiguous() for _, _, _, v in _slots(kw_n)), "nothing non-contiguous"
    outs_n = as_outputs(c.fast(**kw_n))
    labels = [label for label, key, _, _ in _slots(kwargs) if key in c.differentiable]
    grads_n = _backward(outs_n, [views[label][0] for label in labels], upstream)
    tol = dict(rtol=0, atol=0) if c.noncontig_exact else {}

    def same(a, b, msg):
        torch.testing.assert_close(a, b, equal_nan=True, msg=lambda m: f"{msg}\n{m}", **tol)

    for name, out_n, out_c in zip(c.outputs, outs_n, outs_c):
        same(out_n.detach(), out_c, f"{c.name} {name} ({layout} inputs)")
    for label, g_n in zip(labels, grads_n):
        g_c = grads_c[label]
        assert (g_n is None) == (g_c is None), f"{c.name} d/d {label}: None mismatch"
        if g_n is not None:
            same(views[label][1](g_n), g_c, f"{c.name} d/d {label} ({layout} inputs)")


def check_empty(c: OpContract, case, device: str, gen: torch.Generator,
                dtype: torch.dtype = torch.float32) -> None:
    """Zero-size inputs: fast and ref give outputs of the same (empty) shapes on the
    device, and the fast backward gives gradients shaped like the inputs."""
    kwargs = c.build(case, dtype, device, gen)
    assert any(t.numel() == 0 for _, _, _, t in _slots(kwargs)), "no zero-size input"
    kw = map_tensors(kwargs, lambda l, key, t: t.clone().requires_grad_(key in c.differentiable))
    try:
        outs = as_outputs(c.fast(**kw))
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"{c.name}: zero-size input raised {type(e).__name__}: {e}") from None
    refs = as_outputs(c.ref(**kwargs))
    assert len(outs) == len(refs)
    for name, o, r in zip(c.outputs, outs, refs):
        assert o.shape == r.shape, f"{c.name} {name}: {tuple(o.shape)} != ref {tuple(r.shape)}"
        assert o.device.type == torch.device(device).type and o.dtype == r.dtype
    labels, ins = leaves(kw, c.differentiable)
    used = [o for o in outs if o.requires_grad]
    if used:
        grads = torch.autograd.grad(used, ins, [torch.ones_like(o) for o in used],
                                    allow_unused=True)
        for label, x, g in zip(labels, ins, grads):
            assert g is None or g.shape == x.shape, f"{c.name} d/d {label}: {tuple(g.shape)}"


def check_gradcheck(c: OpContract, case, gen: torch.Generator, **gradcheck_kwargs) -> None:
    """``torch.autograd.gradcheck`` of the fast op in float64 over every differentiable
    input (numerical vs the op's own backward)."""
    kwargs = c.build(case, torch.float64, "cpu", gen)
    labels, ins = leaves(kwargs, c.differentiable)
    ins = [t.detach().clone().requires_grad_() for t in ins]

    def f(*xs):
        it = iter(xs)
        kw = map_tensors(kwargs, lambda l, key, t: next(it) if key in c.differentiable else t)
        outs = as_outputs(c.fast(**kw))
        return c.gradcheck_outputs(outs) if c.gradcheck_outputs else outs

    try:
        torch.autograd.gradcheck(f, tuple(ins), **gradcheck_kwargs)
    except GradcheckError as e:
        raise AssertionError(f"{c.name}: gradcheck failed ({', '.join(labels)}): {e}") from None


MASKS = ("none", "all", "even", "odd")


def with_requires_grad(c: OpContract, kwargs: dict, mask) -> dict:
    """The differentiable tensors require grad: ``none``, ``all``, the ``even`` or
    ``odd`` ones (0-based, in argument order), or per tensor (a tuple of bools)."""
    count = iter(range(10 ** 6))

    def f(label, key, t):
        if key not in c.differentiable:
            return t
        i = next(count)
        if isinstance(mask, tuple):
            rg = mask[i]
        else:
            assert mask in MASKS, mask
            rg = mask == "all" or (mask == "even" and i % 2 == 0) or (mask == "odd" and i % 2)
        return t.detach().clone().requires_grad_(bool(rg))
    return map_tensors(kwargs, f)


def check_opcheck(c: OpContract, case, dtype: torch.dtype, mask: str,
                  gen: torch.Generator) -> None:
    """``torch.library.opcheck`` (schema, fake kernel, autograd registration, AOT
    dispatch) on every native call of the contract for these arguments."""
    kwargs = with_requires_grad(c, c.build(case, dtype, "cpu", gen), mask)
    calls = c.native(kwargs)
    assert calls, f"{c.name}: no native calls"
    for op, args in calls:
        try:
            torch.library.opcheck(op, args)
        except OpCheckError as e:
            raise AssertionError(f"{c.name}: opcheck of {op} failed: {e}") from None


def check_compile(c: OpContract, case, gen: torch.Generator, backend: str = "aot_eager",
                  dtype: torch.dtype = torch.float32, wrap: Callable | None = None) -> None:
    """``torch.compile(fullgraph=True)`` of the fast op (inside ``wrap(fast)`` if given:
    surrounding ops) gives eager's outputs and gradients."""
    kwargs = c.build(case, dtype, "cpu", gen)
    labels, tensors = leaves(kwargs, {key for _, key, _, _ in _slots(kwargs)})
    keys = [key for _, key, _, _ in _slots(kwargs)]
    fn = wrap(c.fast) if wrap else c.fast

    def f(*xs):
        it = iter(xs)
        return as_outputs(fn(**map_tensors(kwargs, lambda l, k, t: next(it))))

    def run(call):
        ins = [t.detach().clone().requires_grad_(k in c.differentiable)
               for t, k in zip(tensors, keys)]
        outs = call(*ins)
        grads = _backward(outs, [x for x in ins if x.requires_grad], upstream)
        return outs, grads

    upstream = _Upstream(dtype, gen)

    torch._dynamo.reset()
    outs_e, grads_e = run(f)
    try:
        outs_c, grads_c = run(torch.compile(f, fullgraph=True, backend=backend))
    except Exception as e:  # noqa: BLE001 - a graph break or tracing failure
        raise AssertionError(f"{c.name}: torch.compile(fullgraph=True, backend={backend!r}) "
                             f"failed: {type(e).__name__}: {e}") from None
    for i, (a, b) in enumerate(zip(outs_c, outs_e)):
        torch.testing.assert_close(a, b, msg=lambda m: f"{c.name} compiled output {i}\n{m}")
    for label, a, b in zip([lb for lb, k in zip(labels, keys) if k in c.differentiable],
                           grads_c, grads_e):
        assert (a is None) == (b is None), f"{c.name} compiled d/d {label}: None mismatch"
        if a is not None:
            torch.testing.assert_close(a, b, msg=lambda m: f"{c.name} compiled d/d {label}\n{m}")


def _expect_raise(call, exc, arg: str, what: str):
    try:
        call()
    except Exception as e:  # noqa: BLE001
        assert isinstance(e, exc), f"{what}: raised {type(e).__name__}: {e} (expected {exc})"
        assert re.search(f"`{re.escape(arg)}`", str(e)), (
            f"{what}: the message does not name `{arg}`: {e}")
        return e
    raise AssertionError(f"{what}: accepted the input (expected {exc.__name__} naming `{arg}`)")


def check_bad_input(c: OpContract, bad: Bad) -> None:
    """Fast and ref reject the mutated arguments with the same exception type, naming
    the argument."""
    errors = []
    for which, fn in (("fast", c.fast), ("ref", c.ref)):
        kwargs = c.build(c.bad_case, torch.float32, "cpu", make_generator(c.name, "bad"))
        bad.mutate(kwargs)
        errors.append(_expect_raise(lambda: fn(**kwargs), bad.exc, bad.arg,
                                    f"{c.name} {which} [{bad.id}]"))
    assert type(errors[0]) is type(errors[1]), f"{c.name} [{bad.id}]: {errors}"


def check_direct_bad(c: OpContract, bad: DirectBad) -> None:
    op = getattr(torch.ops.dreamer_fast, bad.op)
    _expect_raise(lambda: op(*bad.make_args()), RuntimeError, bad.arg,
                  f"torch.ops.dreamer_fast.{bad.op} [{bad.id}]")


# --------------------------------------------------------------------------------------
# Test generation
# --------------------------------------------------------------------------------------

_IGNORE_JIT_DEPRECATION = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def _ids(cases: dict) -> list:
    """``pytest.param``s of ``{id: case}``; a case may be a ``pytest.param(case,
    marks=...)`` to carry marks (e.g. an xfail naming a known bug)."""
    out = []
    for k, v in cases.items():
        if isinstance(v, type(pytest.param(None))):
            out.append(pytest.param(*v.values, marks=v.marks, id=k))
        else:
            out.append(pytest.param(v, id=k))
    return out


def contract_tests(c: OpContract, *, grid: dict, small_grid: dict | None = None,
                   noncontig: dict | None = None, empty: dict | None = None,
                   gradcheck: dict | None = None, opcheck: dict | None = None,
                   compile: dict | None = None, devices_grid: dict | None = None,
                   small_grid_cpu: dict | None = None,
                   grid_dtypes=(torch.float64, torch.float32),
                   ref: Callable | None = None) -> dict[str, Callable]:
    """The generated tests of ``c`` (see the module docstring), as ``{name: function}``.

    ``grid`` (CPU, ``grid_dtypes``), ``small_grid`` (the other dtypes on the CPU, every
    dtype on CUDA; ``small_grid_cpu``, if given, replaces it on the CPU), ``devices_grid`` (``grid_dtypes`` on every device), ``noncontig``,
    ``empty``, ``gradcheck``, ``compile``: ``{case id: case}``; ``opcheck``: ``{id: (case, dtype, mask)}`` with mask one of
    :data:`MASKS`. ``ref`` replaces ``c.ref`` in the value grids (an independent
    implementation of the same signature). Omitted (None) checks are not generated.
    """
    n = c.name
    tests: dict[str, Callable] = {}

    def add(name, fn, *decorators):
        for d in reversed(decorators):
            fn = d(fn)
        fn.__name__ = fn.__qualname__ = name
        tests[name] = fn

    def gen_of(*key):
        return make_generator(n, *key)

    def matches_ref(case, dtype):
        check_matches_ref(c, case, dtype, "cpu", gen_of("grid", repr(case), dtype), ref=ref)

    add(f"test_{n}_matches_ref", matches_ref,
        pytest.mark.parametrize("case", _ids(grid)),
        pytest.mark.parametrize("dtype", [pytest.param(d, id=dtype_id(d)) for d in grid_dtypes]))

    if small_grid:
        cpu_cases = small_grid if small_grid_cpu is None else small_grid_cpu
        params = [device_dtype_param("cpu", d, case, id_rest=k) for d in c.dtypes
                  if d not in grid_dtypes for k, case in cpu_cases.items()]
        params += [device_dtype_param("cuda", d, case, id_rest=k) for d in c.dtypes
                   for k, case in small_grid.items()]

        def matches_ref_small(device, dtype, case):
            check_matches_ref(c, case, dtype, device, gen_of("small", repr(case), dtype),
                              ref=ref)

        add(f"test_{n}_matches_ref_small", matches_ref_small,
            pytest.mark.parametrize("device,dtype,case", params))

    if devices_grid:
        def matches_ref_devices(device, dtype, case):
            check_matches_ref(c, case, dtype, device, gen_of("devices", repr(case), dtype),
                              ref=ref)

        add(f"test_{n}_matches_ref_devices", matches_ref_devices,
            pytest.mark.parametrize("device", DEVICES),
            pytest.mark.parametrize("dtype", [pytest.param(d, id=dtype_id(d))
                                              for d in grid_dtypes]),
            pytest.mark.parametrize("case", _ids(devices_grid)))

    if noncontig:
        def noncontiguous(device, layout, case):
            check_noncontiguous(c, case, device, gen_of("noncontig", repr(case)), layout)

        add(f"test_{n}_noncontiguous", noncontiguous,
            pytest.mark.parametrize("device", DEVICES),
            pytest.mark.parametrize("layout", ["transposed", "step2"]),
            pytest.mark.parametrize("case", _ids(noncontig)))

    if empty:
        def empty_inputs(device, case):
            check_empty(c, case, device, gen_of("empty"))

        add(f"test_{n}_empty", empty_inputs, pytest.mark.parametrize("device", DEVICES),
            pytest.mark.parametrize("case", _ids(empty)))

    if gradcheck:
        def gradcheck_fast(case):
            check_gradcheck(c, case, gen_of("gradcheck", repr(case)))

        add(f"test_{n}_gradcheck", gradcheck_fast, pytest.mark.parametrize("case", _ids(gradcheck)))

    if opcheck:
        def opcheck_native(spec):
            case, dtype, mask = spec
            check_opcheck(c, case, dtype, mask, gen_of("opcheck", repr(case)))

        add(f"test_{n}_opcheck", opcheck_native, pytest.mark.parametrize("spec", _ids(opcheck)))

    if compile:
        def compile_fullgraph(case):
            check_compile(c, case, gen_of("compile"))

        add(f"test_{n}_compile", compile_fullgraph, pytest.mark.compile, _IGNORE_JIT_DEPRECATION,
            pytest.mark.parametrize("case", _ids(compile)))

    if c.bad:
        def bad_input(bad):
            check_bad_input(c, bad)

        add(f"test_{n}_bad_input", bad_input,
            pytest.mark.parametrize("bad", [pytest.param(b, id=b.id) for b in c.bad]))

    if c.direct_bad:
        def direct_bad(bad):
            check_direct_bad(c, bad)

        add(f"test_{n}_direct_bad", direct_bad,
            pytest.mark.parametrize("bad", [pytest.param(b, id=b.id) for b in c.direct_bad]))
    return tests
