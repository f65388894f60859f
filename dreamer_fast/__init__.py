"""dreamer_fast: Dreamer (V1/V2/V3) for PyTorch with fused C++/CUDA kernels.

Fast ops live in :mod:`dreamer_fast.ops`, each with a pure-PyTorch ``<op>_ref``
beside it (same signature and semantics).
"""

from dreamer_fast._extension import extension_error, has_cuda_kernels, has_extension
from dreamer_fast import nn, ops

__version__ = "0.1.0"

__all__ = ["nn", "ops", "has_extension", "has_cuda_kernels", "extension_error", "__version__"]
