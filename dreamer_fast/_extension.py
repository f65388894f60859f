"""Loading of the native extension ``dreamer_fast._C``.

Importing :mod:`dreamer_fast` never fails because the extension is missing or
broken: the import error is kept, the fast ops raise it with a rebuild hint when
called, and everything with ``backend="ref"`` keeps working.
"""

from __future__ import annotations

import torch

_REBUILD_HINT = (
    "dreamer_fast's native extension (dreamer_fast._C) is not available{why}. "
    "Rebuild it against the installed torch with:\n"
    "    pip install --no-build-isolation -e .\n"
    "or use the pure-PyTorch path (backend='ref' / the *_ref ops)."
)

try:  # pragma: no branch - exercised by the import itself
    from dreamer_fast import _C  # noqa: F401  (registers torch.ops.dreamer_fast.*)

    _IMPORT_ERROR: BaseException | None = None
except Exception as exc:  # ImportError, or an undefined symbol from a torch mismatch
    _C = None
    _IMPORT_ERROR = exc


def has_extension() -> bool:
    """True when ``dreamer_fast._C`` imported and its operators are registered."""
    return _C is not None


def has_cuda_kernels() -> bool:
    """True when the extension was built with CUDA kernels and a CUDA device is usable."""
    return _C is not None and bool(_C.cuda_kernels_built) and torch.cuda.is_available()


def extension_error() -> BaseException | None:
    """The exception raised while importing the extension, or None."""
    return _IMPORT_ERROR


def require_extension(op_name: str) -> None:
    """Raise a RuntimeError with a rebuild hint if the extension is missing."""
    if _C is None:
        why = f" ({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR})" if _IMPORT_ERROR else ""
        raise RuntimeError(f"{op_name}: " + _REBUILD_HINT.format(why=why))


def require_device_kernels(op_name: str, device: torch.device) -> None:
    """Raise if the fast op has no kernel for ``device`` (e.g. CUDA not compiled in)."""
    require_extension(op_name)
    if device.type == "cuda" and not _C.cuda_kernels_built:
        raise RuntimeError(
            f"{op_name}: got CUDA tensors, but dreamer_fast._C was built without CUDA kernels. "
            "Rebuild on a machine with nvcc and a CUDA build of torch "
            "(pip install --no-build-isolation -e .), or use the *_ref op."
        )
    if device.type not in ("cpu", "cuda", "meta"):
        raise RuntimeError(
            f"{op_name}: no fast kernel for device type '{device.type}' "
            "(CPU and CUDA only); use the *_ref op."
        )
