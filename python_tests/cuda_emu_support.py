"""What test_cuda_emu.py is built on: loading the emulation module, the backends a case
runs on, and the ulp-based comparison.

* The emulation module ``dreamer_fast._cuda_emu`` (csrc/emu/) runs the real CUDA kernel
  files on the CPU. ``DREAMER_FAST_CUDA_EMU_MODULE`` names another build of it to load
  instead (the sanitized one of the CI's ASan step). Without the module the tests skip
  with the reason, unless ``DREAMER_FAST_REQUIRE_CUDA_EMU=1`` (set by .ci/run): then they
  fail, because on our machines and CI the CUDA headers are there and it must be built.
* Backends: ``emu`` (marker ``cuda_emu``) runs a launcher of the emulation module over CPU
  tensors; ``cuda`` (marker ``cuda``) runs the same launcher of a CUDA build
  (``dreamer_fast._C.cuda_launchers``) on the device, and also compares the device's
  results with the emulated ones.
* :func:`assert_ulp_close`: the error allowed at an element is
  ``n_store`` ulps of the storage dtype at the reference value plus ``n_acc`` units of the
  accumulation dtype's epsilon times the largest reference magnitude of the tensor (the
  rounding of sums and of cancelling terms, which is relative to the terms, not to the
  result). A float16 / bfloat16 result is compared with a reference that computes in
  float32 from the same stored inputs and stores in the same places, so a kernel that
  accumulates in float32 is within one ulp of it, and one that accumulated in the
  storage dtype is not (test_cuda_emu.py shows this).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import dreamer_fast

EMU_MODULE_ENV = "DREAMER_FAST_CUDA_EMU_MODULE"
REQUIRE_ENV = "DREAMER_FAST_REQUIRE_CUDA_EMU"


def _load_emu():
    path = os.environ.get(EMU_MODULE_ENV)
    try:
        if path:
            spec = importlib.util.spec_from_file_location("dreamer_fast._cuda_emu", path)
            if spec is None or spec.loader is None:
                raise ImportError(f"{EMU_MODULE_ENV}={path!r} is not a loadable module")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            from dreamer_fast import _cuda_emu as mod
        return mod, None
    except (ImportError, OSError) as exc:  # not built, or EMU_MODULE_ENV names no file
        return None, exc


EMU, EMU_ERROR = _load_emu()
EMU_MISSING_REASON = (
    "dreamer_fast._cuda_emu is not available (it is built only where the CUDA headers "
    f"cuda_fp16.h / cuda_bf16.h are found; see CMakeLists.txt, DREAMER_FAST_CUDA_EMU): {EMU_ERROR}")


def _device_launchers():
    if not (dreamer_fast.has_cuda_kernels() and torch.cuda.is_available()):
        return None
    from dreamer_fast import _extension
    return getattr(_extension._C, "cuda_launchers", None)


DEVICE = _device_launchers()
DEVICE_MISSING_REASON = "needs a CUDA device and a CUDA build of dreamer_fast._C"

BACKENDS = [
    pytest.param("emu", marks=pytest.mark.cuda_emu, id="emu"),
    pytest.param("cuda", marks=pytest.mark.cuda, id="cuda"),
]


def require_emu():
    """The emulation module, or skip (fail where REQUIRE_ENV is set)."""
    if EMU is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(EMU_MISSING_REASON + f" ({REQUIRE_ENV}=1: it must be built here)")
        pytest.skip(EMU_MISSING_REASON)
    return EMU


class Backend:
    """Launchers and device of one backend; ``run(case_fn)`` returns the outputs on the CPU."""

    def __init__(self, name: str):
        self.name = name
        if name == "emu":
            self.launchers = require_emu()
            self.device = torch.device("cpu")
        else:
            if DEVICE is None:
                pytest.skip(DEVICE_MISSING_REASON)
            self.launchers = DEVICE
            self.device = torch.device("cuda")

    def to(self, t):
        return None if t is None else t.to(self.device)

    def nan(self, shape, dtype) -> torch.Tensor:
        """An output buffer filled with NaN: an element a kernel does not write stays NaN."""
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=self.device)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' accumulation dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def ref_dtype(dtype: torch.dtype) -> torch.dtype:
    """The reference's compute dtype: float64 for float64 / float32 results, float32 (the
    kernels' accumulation dtype) for float16 / bfloat16."""
    return torch.float64 if dtype in (torch.float64, torch.float32) else torch.float32


_MANTISSA = {torch.float64: 52, torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}


def ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` at |x| (at the smallest normal below it), in float64."""
    a = x.detach().to(torch.float64).abs().clamp_min(torch.finfo(dtype).tiny)
    _, e = torch.frexp(a)
    return torch.ldexp(torch.ones_like(a), (e - 1 - _MANTISSA[dtype]).to(torch.int64))


#: storage dtype -> (n_store, n_acc) of assert_ulp_close. Measured on the cases of
#: test_cuda_emu.py: the largest float64 / float32 error is 4.8 eps x max|ref|, and every
#: case still passes with n_acc = 6; a float16 accumulator is thousands of ulps out.
ULP_TOLERANCE = {
    torch.float64: (4, 16),
    torch.float32: (4, 16),
    torch.float16: (1, 16),
    torch.bfloat16: (1, 16),
}


def ulp_error(actual: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, acc: torch.dtype,
              n_acc: float, scale: float | None = None) -> torch.Tensor:
    """Per element: |actual - ref| in ulps of ``dtype`` after taking off the accumulation
    allowance (n_acc * eps(acc) * scale, scale = max|ref| unless given)."""
    a = actual.detach().cpu().to(torch.float64)
    r = ref.detach().cpu().to(torch.float64)
    finite = torch.isfinite(r)
    if scale is None:
        scale = r[finite].abs().max().item() if finite.any() else 1.0
    slack = n_acc * torch.finfo(acc).eps * scale
    err = ((a - r).abs() - slack).clamp_min(0) / ulp(r, dtype)
    return torch.where(finite & torch.isfinite(a), err, torch.zeros_like(err))


def assert_ulp_close(actual: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, name: str,
                     acc: torch.dtype | None = None, n_store: float | None = None,
                     n_acc: float | None = None, scale: float | None = None) -> None:
    """``actual`` (stored in ``dtype``) is within the ulp tolerance of ``ref``; NaN and inf
    exactly where the reference has them. ``scale``: the magnitude of the terms a result
    is the difference of, where that is larger than the result (a normalisation's input
    gradient: rstd (g - mean(g) - x̂ mean(g x̂)) cancels to nearly nothing for a row of one
    or two columns); default max|ref|."""
    acc = acc or acc_dtype(dtype)
    d_store, d_acc = ULP_TOLERANCE[dtype]
    n_store = d_store if n_store is None else n_store
    n_acc = d_acc if n_acc is None else n_acc
    assert tuple(actual.shape) == tuple(ref.shape), (
        f"{name}: shape {tuple(actual.shape)} != reference {tuple(ref.shape)}")
    a = actual.detach().cpu().to(torch.float64)
    r = ref.detach().cpu().to(torch.float64)
    bad_nan = torch.isnan(a) != torch.isnan(r)
    assert not bad_nan.any(), (
        f"{name}: NaN pattern differs at {bad_nan.nonzero()[:5].tolist()} (an unwritten output "
        f"element stays NaN): got {a[bad_nan][:5].tolist()}, reference {r[bad_nan][:5].tolist()}")
    inf = torch.isinf(r) | torch.isinf(a)
    assert torch.equal(a[inf], r[inf]), f"{name}: infinities differ"
    if a.numel() == 0:
        return
    err = ulp_error(a, r, dtype, acc, n_acc, scale)
    worst = err.max().item()
    if worst > n_store:
        i = int(err.argmax())
        raise AssertionError(
            f"{name}: {worst:.3g} ulps of {dtype} beyond the allowance (limit {n_store}; "
            f"n_acc {n_acc} x eps({acc}) x max|ref|) at flat index {i}: got "
            f"{a.flatten()[i].item()!r}, reference {r.flatten()[i].item()!r}; "
            f"{int((err > n_store).sum())} of {err.numel()} elements out")
