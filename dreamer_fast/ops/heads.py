"""Distribution heads: the Gaussian sample and the straight-through categorical
sample with a uniform mix (DreamerV3's "unimix" latents and actions).

Fast ops (one native kernel forward, one backward) and their pure-PyTorch
references live side by side and share one argument check, so they have the same
signature, semantics and errors. The noise is an input: draw it with your own
generator (``torch.randn_like`` / ``torch.rand``) and both paths are deterministic.

``gaussian_sample(stats, noise, min_std=0.1, std_act='softplus', mean_act='none', min_std_mode='add')`` -> ``(sample, mean, std)``
    ``stats [..., 2S]``, ``noise [..., S]`` (same leading dims)::

        m, raw = stats.chunk(2, -1)
        mean = mean_act(m)
        std = std_act(raw) + min_std          # min_std_mode='add'
        std = max(std_act(raw), min_std)      # min_std_mode='clamp' (TorchRL's scale_lb)
        sample = mean + std * noise

    with ``std_act`` one of (dreamerv3-torch's ``std_act`` options)::

        softplus   softplus(raw)              (beta = 1, threshold = 20; the default)
        abs        |raw + 1|                  (gradient sign(raw + 1), 0 at raw = -1)
        sigmoid    σ(raw)
        sigmoid2   2 σ(raw / 2)

    and ``mean_act`` ``none`` (``mean = m``, the default) or ``tanh5`` (``mean = 5
    tanh(m / 5)``). The clamp's gradient is ``torch.clamp_min``'s: passed where
    ``std_act(raw) >= min_std``, 0 below. Differentiable in ``stats`` and ``noise``
    through all three outputs.
    ``min_std`` must be a finite float >= 0.

``categorical_sample(logits, uniform, unimix=0.01, *, check_range=True)`` -> ``(sample, probs)``
    ``logits [..., G, K]``, ``uniform [..., G]`` in [0, 1)::

        probs = (1 - unimix) * softmax(logits, -1) + unimix / K
        index = smallest k with uniform < cumsum(probs)[k]   (clamped to K - 1)
        sample = onehot(index) + probs - probs.detach()       # straight-through

    The value of ``sample`` is the one-hot (up to the rounding of
    ``onehot + probs - probs``); its gradient flows to ``logits`` as if it were
    ``probs``. With ``g = g_sample + g_probs`` and ``s = softmax(logits)``::

        d logits = (1 - unimix) * s * (g - sum(s * g, -1))

    No gradient reaches ``uniform``. ``unimix`` must be in [0, 1). The softmax
    subtracts the row max (stable for any finite logits; -inf logits get
    probability ``unimix / K``).

    **The index search is the same arithmetic in the fast op and the reference**:
    ``probs`` in the accumulation type (float32 for float32/float16/bfloat16, float64
    for float64; before rounding to the output dtype), summed sequentially
    ``((p_0 + p_1) + p_2) + ...`` in that type, and compared as ``uniform < c_k``.
    Given the same probs, both pick the same index bit for bit, including for
    ``uniform`` exactly on a cumulative-sum boundary (it then belongs to the next
    class). The softmax itself is not bit-identical between the kernels and
    ``torch.softmax`` (``exp`` implementations and summation orders differ by an ulp
    or so), so on arbitrary inputs the two can disagree only when ``uniform`` lies
    within a few ulps of a boundary.

    ``check_range=True`` verifies ``0 <= uniform < 1`` with a tensor reduction, which
    synchronises with a CUDA device (and is not CUDA-graph capturable); pass
    ``check_range=False`` in hot loops. The check is skipped automatically while
    ``torch.compile`` traces and while a CUDA graph is being captured. Without it,
    values outside [0, 1) are not an error, the search just runs: ``uniform < 0`` gives
    class 0, NaN gives K - 1, and ``uniform >= 1`` gives K - 1 (or an earlier class if
    rounding pushed a cumulative sum above it). With ``unimix = 0`` a class of
    probability 0 is never drawn, except
    the last one through that clamp when the rounded probs sum to less than
    ``uniform``.

    ``uniform`` has the dtype of ``logits``. In float16/bfloat16 it takes only 2^10 /
    2^7 distinct values in [0.5, 1) (steps of 2^-11 / 2^-8), so the sampled
    distribution is quantised at that resolution; use float32 logits where that
    matters. Draw it with ``torch.rand(..., dtype=logits.dtype)``:
    ``torch.rand(...).to(torch.bfloat16)`` rounds up to 1.0 about once in 512 draws.

Fast kernels: float32/float64/float16/bfloat16 on CPU and CUDA, accumulating in
float32 (float64 for float64). ``uniform`` and ``noise`` must have the dtype of
``logits`` / ``stats``.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F

from dreamer_fast import _extension
from dreamer_fast.ops import _checks

__all__ = ["categorical_sample", "categorical_sample_ref", "gaussian_sample",
           "gaussian_sample_ref", "GAUSSIAN_STD_ACTS", "GAUSSIAN_MEAN_ACTS",
           "GAUSSIAN_MIN_STD_MODES"]

_GAUSSIAN = "gaussian_sample"
_CATEGORICAL = "categorical_sample"


# --------------------------------------------------------------------------------------
# Argument handling shared by fast and reference
# --------------------------------------------------------------------------------------

def _check_real(op: str, name: str, value: object, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{op}: `{name}` must be a float {expected}, got {type(value).__name__}")
    return float(value)


def _check_min_std(op: str, min_std: object) -> float:
    value = _check_real(op, "min_std", min_std, ">= 0")
    if not (math.isfinite(value) and value >= 0.0):  # also rejects NaN
        raise ValueError(f"{op}: `min_std` must be a finite float >= 0, got {value}")
    return value


def _check_unimix(op: str, unimix: object) -> float:
    value = _check_real(op, "unimix", unimix, "in [0, 1)")
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise ValueError(f"{op}: `unimix` must be in [0, 1), got {value}")
    return value


#: ``std_act`` / ``mean_act`` of :func:`gaussian_sample` (the order is the kernels' codes)
GAUSSIAN_STD_ACTS = ("softplus", "abs", "sigmoid", "sigmoid2")
GAUSSIAN_MEAN_ACTS = ("none", "tanh5")
GAUSSIAN_MIN_STD_MODES = ("add", "clamp")


def _check_act(op: str, name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{op}: `{name}` must be one of {'|'.join(choices)}, got {value!r}")
    return value


def _gaussian_args(stats, noise, min_std, std_act="softplus", mean_act="none",
                   min_std_mode="add"):
    op = _GAUSSIAN
    std_act = _check_act(op, "std_act", std_act, GAUSSIAN_STD_ACTS)
    mean_act = _check_act(op, "mean_act", mean_act, GAUSSIAN_MEAN_ACTS)
    min_std_mode = _check_act(op, "min_std_mode", min_std_mode, GAUSSIAN_MIN_STD_MODES)
    stats = _checks.check_float_tensor(op, "stats", stats)
    noise = _checks.check_float_tensor(op, "noise", noise)
    if stats.dim() == 0:
        raise ValueError(f"{op}: `stats` must have at least 1 dim ([..., 2S]), got a 0-dim tensor")
    if stats.shape[-1] % 2:
        raise ValueError(f"{op}: `stats` last dim must be even ([..., 2S]: mean and raw std "
                         f"halves), got shape {tuple(stats.shape)}")
    expected = stats.shape[:-1] + (stats.shape[-1] // 2,)
    if noise.shape != expected:
        raise ValueError(f"{op}: `noise` must have shape {tuple(expected)} (`stats` shape "
                         f"{tuple(stats.shape)} with the last dim halved), got "
                         f"{tuple(noise.shape)}")
    _checks.check_dtype_device(op, "stats", stats, "noise", noise)
    return stats, noise, _check_min_std(op, min_std), std_act, mean_act, min_std_mode


def _check_uniform_range(op: str, uniform: torch.Tensor) -> None:
    """0 <= uniform < 1 everywhere (NaN fails). One reduction and one host sync."""
    if uniform.numel() == 0 or uniform.device.type == "meta":
        return
    lo, hi = torch.aminmax(uniform.detach())
    if not bool((lo >= 0) & (hi < 1)):  # NaN propagates through aminmax and fails both
        raise ValueError(
            f"{op}: `uniform` must lie in [0, 1), got values in [{float(lo)}, {float(hi)}] "
            "(pass check_range=False to skip this check, which synchronises with the device)"
        )


def _capturing(t: torch.Tensor) -> bool:
    """True while ``t``'s CUDA stream is being captured into a CUDA graph, where the
    host-synchronising range check is not allowed."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def _categorical_args(logits, uniform, unimix, check_range):
    op = _CATEGORICAL
    logits = _checks.check_float_tensor(op, "logits", logits)
    uniform = _checks.check_float_tensor(op, "uniform", uniform)
    if logits.dim() < 2:
        raise ValueError(f"{op}: `logits` must have at least 2 dims ([..., G, K]), got shape "
                         f"{tuple(logits.shape)}")
    if logits.shape[-1] < 1:
        raise ValueError(f"{op}: `logits` must have at least one class (last dim), got shape "
                         f"{tuple(logits.shape)}")
    if uniform.shape != logits.shape[:-1]:
        raise ValueError(f"{op}: `uniform` must have shape {tuple(logits.shape[:-1])} "
                         f"(`logits` shape {tuple(logits.shape)} without the class dim), got "
                         f"{tuple(uniform.shape)}")
    _checks.check_dtype_device(op, "logits", logits, "uniform", uniform)
    unimix = _check_unimix(op, unimix)
    if check_range and not torch.compiler.is_compiling() and not _capturing(uniform):
        _check_uniform_range(op, uniform)
    return logits, uniform, unimix


# --------------------------------------------------------------------------------------
# Fast ops
# --------------------------------------------------------------------------------------

def gaussian_sample(stats: torch.Tensor, noise: torch.Tensor, min_std: float = 0.1,
                    std_act: str = "softplus", mean_act: str = "none",
                    min_std_mode: str = "add") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean + std * noise, mean, std)`` with ``std = std_act(raw) + min_std`` (or
    ``max(std_act(raw), min_std)``), ``mean = mean_act(m)``; one native kernel (see the
    module docstring)."""
    args = _gaussian_args(stats, noise, min_std, std_act, mean_act, min_std_mode)
    _extension.require_device_kernels(_GAUSSIAN, args[0].device)
    sample, mean, std = torch.ops.dreamer_fast.gaussian_sample(*args)
    return sample, mean, std


def categorical_sample(logits: torch.Tensor, uniform: torch.Tensor, unimix: float = 0.01, *,
                       check_range: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through one-hot sample and the unimix probs; one native kernel (see the
    module docstring)."""
    logits, uniform, unimix = _categorical_args(logits, uniform, unimix, check_range)
    _extension.require_device_kernels(_CATEGORICAL, logits.device)
    sample, probs = torch.ops.dreamer_fast.categorical_sample(logits, uniform, unimix)
    return sample, probs


# --------------------------------------------------------------------------------------
# References: plain PyTorch, same signatures
# --------------------------------------------------------------------------------------

_REF_STD_ACTS = {
    "softplus": F.softplus,
    "abs": lambda raw: torch.abs(raw + 1),
    "sigmoid": torch.sigmoid,
    "sigmoid2": lambda raw: 2 * torch.sigmoid(raw / 2),
}
_REF_MEAN_ACTS = {"none": lambda m: m, "tanh5": lambda m: 5 * torch.tanh(m / 5)}


def gaussian_sample_ref(stats: torch.Tensor, noise: torch.Tensor, min_std: float = 0.1,
                        std_act: str = "softplus", mean_act: str = "none",
                        min_std_mode: str = "add"
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference Gaussian head (what Dreamer codebases run), in the input dtype."""
    stats, noise, min_std, std_act, mean_act, min_std_mode = _gaussian_args(
        stats, noise, min_std, std_act, mean_act, min_std_mode)
    m, raw = stats.chunk(2, -1)
    mean = _REF_MEAN_ACTS[mean_act](m)
    std = _REF_STD_ACTS[std_act](raw)
    std = std + min_std if min_std_mode == "add" else std.clamp_min(min_std)
    return mean + std * noise, mean, std


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def categorical_index_ref(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The index search shared with the kernels: the number of k < K-1 with
    ``!(uniform < c_k)``, ``c`` the sequential cumulative sum of ``probs`` in their
    dtype (pass the accumulation dtype). Equals "smallest k with uniform < c_k,
    clamped to K - 1" because ``c`` never decreases. ``torch.cumsum`` is not used: its
    CPU kernel accumulates float32 in float64, its CUDA kernel in a parallel order."""
    c = torch.zeros_like(uniform)
    index = torch.zeros(uniform.shape, dtype=torch.int64, device=uniform.device)
    for k in range(probs.shape[-1] - 1):
        c = c + probs[..., k]
        index += ~(uniform < c)
    return index


def categorical_sample_ref(logits: torch.Tensor, uniform: torch.Tensor, unimix: float = 0.01,
                           *, check_range: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference straight-through categorical sample with unimix. Computes in the
    accumulation dtype (float32 for float32/float16/bfloat16, float64 for float64)
    and rounds the outputs to ``logits.dtype``, like the kernels."""
    logits, uniform, unimix = _categorical_args(logits, uniform, unimix, check_range)
    acc = _acc_dtype(logits.dtype)
    K = logits.shape[-1]
    probs = torch.softmax(logits.to(acc), -1) * (1.0 - unimix) + unimix / K
    with torch.no_grad():
        index = categorical_index_ref(probs, uniform.to(acc))
    onehot = F.one_hot(index, K).to(acc)
    sample = onehot + probs - probs.detach()
    return sample.to(logits.dtype), probs.to(logits.dtype)


# --------------------------------------------------------------------------------------
# torch.library registration: fake (meta) kernels and autograd
# --------------------------------------------------------------------------------------

def _fake_check_same(op: str, ref_name: str, ref: torch.Tensor, name: str, x: torch.Tensor,
                     shape) -> None:
    torch._check(tuple(x.shape) == tuple(shape),
                 lambda: f"{op}: `{name}` must have shape {tuple(shape)}, got {tuple(x.shape)}")
    torch._check(x.dtype == ref.dtype,
                 lambda: f"{op}: `{name}` has dtype {x.dtype} but `{ref_name}` has dtype "
                         f"{ref.dtype}")
    torch._check(x.device == ref.device,
                 lambda: f"{op}: `{name}` is on {x.device} but `{ref_name}` is on {ref.device}")


def _fake_gaussian_checks(op: str, stats, noise, min_std, std_act="softplus",
                          mean_act="none", min_std_mode="add") -> tuple:
    """The checks of csrc/heads_checks.h, for the fake kernels (meta/fake inputs are
    routed to them instead of the C++ kernels). Returns noise's shape."""
    torch._check(stats.dim() >= 1,
                 lambda: f"{op}: `stats` must have at least 1 dim ([..., 2S]), got shape "
                         f"{tuple(stats.shape)}")
    torch._check(stats.is_floating_point(),
                 lambda: f"{op}: `stats` must be a floating-point tensor, got {stats.dtype}")
    torch._check(stats.shape[-1] % 2 == 0,
                 lambda: f"{op}: `stats` last dim must be even, got {stats.shape[-1]}")
    shape = tuple(stats.shape[:-1]) + (stats.shape[-1] // 2,)
    _fake_check_same(op, "stats", stats, "noise", noise, shape)
    torch._check(math.isfinite(min_std) and min_std >= 0.0,
                 lambda: f"{op}: `min_std` must be a finite float >= 0, got {min_std}")
    for name, value, choices in (("std_act", std_act, GAUSSIAN_STD_ACTS),
                                 ("mean_act", mean_act, GAUSSIAN_MEAN_ACTS),
                                 ("min_std_mode", min_std_mode, GAUSSIAN_MIN_STD_MODES)):
        torch._check(value in choices, lambda: f"{op}: `{name}` must be one of "
                                               f"{'|'.join(choices)}, got {value!r}")
    return shape


def _fake_categorical_checks(op: str, logits, unimix) -> None:
    torch._check(logits.dim() >= 2,
                 lambda: f"{op}: `logits` must have at least 2 dims ([..., G, K]), got shape "
                         f"{tuple(logits.shape)}")
    torch._check(logits.is_floating_point(),
                 lambda: f"{op}: `logits` must be a floating-point tensor, got {logits.dtype}")
    torch._check(logits.shape[-1] >= 1,
                 lambda: f"{op}: `logits` must have at least one class (last dim), got shape "
                         f"{tuple(logits.shape)}")
    torch._check(0.0 <= unimix < 1.0, lambda: f"{op}: `unimix` must be in [0, 1), got {unimix}")


def _register() -> None:
    def _contiguous_like(x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("dreamer_fast::gaussian_sample")
    def _(stats, noise, min_std, std_act="softplus", mean_act="none", min_std_mode="add"):
        _fake_gaussian_checks(_GAUSSIAN, stats, noise, min_std, std_act, mean_act, min_std_mode)
        return _contiguous_like(noise), _contiguous_like(noise), _contiguous_like(noise)

    @torch.library.register_fake("dreamer_fast::gaussian_sample_backward")
    def _(grad_sample, grad_mean, grad_std, stats, noise, min_std, std_act="softplus",
          mean_act="none", min_std_mode="add"):
        op = "gaussian_sample_backward"
        shape = _fake_gaussian_checks(op, stats, noise, min_std, std_act, mean_act, min_std_mode)
        for name, g in (("grad_sample", grad_sample), ("grad_mean", grad_mean),
                        ("grad_std", grad_std)):
            if g is not None:
                _fake_check_same(op, "stats", stats, name, g, shape)
        return _contiguous_like(stats), _contiguous_like(noise)

    @torch.library.register_fake("dreamer_fast::categorical_sample")
    def _(logits, uniform, unimix):
        _fake_categorical_checks(_CATEGORICAL, logits, unimix)
        _fake_check_same(_CATEGORICAL, "logits", logits, "uniform", uniform, logits.shape[:-1])
        return _contiguous_like(logits), _contiguous_like(logits)

    @torch.library.register_fake("dreamer_fast::categorical_sample_backward")
    def _(grad_sample, grad_probs, logits, unimix):
        op = "categorical_sample_backward"
        _fake_categorical_checks(op, logits, unimix)
        for name, g in (("grad_sample", grad_sample), ("grad_probs", grad_probs)):
            if g is not None:
                _fake_check_same(op, "logits", logits, name, g, logits.shape)
        return _contiguous_like(logits)

    # Outputs that get no gradient arrive as None (not materialised zeros) and are
    # passed to the backward kernels as null pointers.
    def gaussian_setup(ctx, inputs, output):
        stats, noise, *head = inputs
        ctx.head = tuple(head)  # min_std, std_act, mean_act, min_std_mode
        ctx.save_for_backward(stats, noise)
        ctx.set_materialize_grads(False)

    def gaussian_backward(ctx, g_sample, g_mean, g_std):
        if g_sample is None and g_mean is None and g_std is None:
            return (None,) * 6
        stats, noise = ctx.saved_tensors
        g_stats, g_noise = torch.ops.dreamer_fast.gaussian_sample_backward(
            g_sample, g_mean, g_std, stats, noise, *ctx.head)
        # noise only reaches the outputs through the sample
        return (g_stats if ctx.needs_input_grad[0] else None,
                g_noise if ctx.needs_input_grad[1] and g_sample is not None else None,
                None, None, None, None)

    torch.library.register_autograd("dreamer_fast::gaussian_sample", gaussian_backward,
                                    setup_context=gaussian_setup)

    def categorical_setup(ctx, inputs, output):
        logits, _, unimix = inputs
        ctx.unimix = unimix
        ctx.save_for_backward(logits)
        ctx.set_materialize_grads(False)

    def categorical_backward(ctx, g_sample, g_probs):
        if g_sample is None and g_probs is None:
            return None, None, None
        (logits,) = ctx.saved_tensors
        g_logits = torch.ops.dreamer_fast.categorical_sample_backward(
            g_sample, g_probs, logits, ctx.unimix)
        return g_logits, None, None  # no gradient to uniform

    torch.library.register_autograd("dreamer_fast::categorical_sample", categorical_backward,
                                    setup_context=categorical_setup)


if _extension.has_extension():
    _register()
