"""Shared helpers for the dreamer_fast op tests.

* The op-contract harness (``OpContract``, ``contract_tests``, the ``check_*``
  functions; body in ``op_contract.py``): every generic check of a fast op against
  its reference, generated from one description of the op.
* ``TOLERANCES``: per-dtype ``(rtol, atol)`` for comparing a fast result computed in
  that dtype against the reference computed in float64 on the *same* (upcast) input
  values. ``atol`` is relative to the magnitude of the reference (see
  :func:`assert_close_to_ref`), so it is meaningful for returns of any scale.
* ``DEVICES``: "cpu" always, "cuda" as a ``pytest.param`` skipped (with a reason) when
  there is no CUDA device or the extension was built without CUDA kernels.
* Deterministic random inputs: :func:`make_generator` / :func:`rand_inputs`.

The extension is deliberately *not* a skip condition: the project always builds the
CPU extension, so if ``dreamer_fast._C`` is missing every fast-op test must fail
(``require_device_kernels`` raises a RuntimeError with the rebuild hint), never skip.
"""

from __future__ import annotations

import pytest
import torch

import dreamer_fast

# The op-contract harness and the comparison helpers it is built on live in
# op_contract.py; they are re-exported here (``from conftest import ...``).
pytest.register_assert_rewrite("op_contract")

from op_contract import (  # noqa: E402,F401
    ALL_DTYPES,
    CUDA_PARAM,
    CUDA_SKIP_REASON,
    DEVICES,
    HAS_CUDA_KERNELS,
    TOLERANCES,
    Bad,
    DirectBad,
    OpContract,
    as_outputs,
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
    device_dtype_param,
    dtype_id,
    make_generator,
    map_tensors,
    noncontiguous_view,
    requires_cuda,
    tolerance,
)


# --------------------------------------------------------------------------------------
# Deterministic random inputs
# --------------------------------------------------------------------------------------

def assert_both_raise(fast, ref, kwargs: dict, exc, match: str) -> None:
    """The fast op and its reference reject ``kwargs`` with the same exception type and a
    message matching ``match`` (they share one argument check)."""
    with pytest.raises(exc, match=match) as fast_info:
        fast(**kwargs)
    with pytest.raises(exc, match=match) as ref_info:
        ref(**kwargs)
    assert type(fast_info.value) is type(ref_info.value)


def randn(shape, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float64) * scale


def rand_pcont(shape, gen: torch.Generator, discount: float = 0.99,
               p_terminal: float = 0.05) -> torch.Tensor:
    """discount * continue-probability in (0, 1), with occasional episode ends (0)."""
    cont = torch.rand(tuple(shape), generator=gen, dtype=torch.float64) * 0.5 + 0.5
    ends = torch.rand(tuple(shape), generator=gen, dtype=torch.float64) < p_terminal
    return torch.where(ends, torch.zeros_like(cont), discount * cont)


def time_shape(T: int, batch: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """Shape with a time axis of length ``T`` inserted at ``axis`` (negative allowed)
    into ``batch``: axis=1 with batch (B,) gives (B, T); with (B, C) gives (B, T, C)."""
    ndim = len(batch) + 1
    ax = axis % ndim
    shape = list(batch)
    shape.insert(ax, T)
    return tuple(shape)


@pytest.fixture
def float64_default():
    """torch's default dtype is float64 for the test, then what it was."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded from the test's node id (deterministic per test case)."""
    return make_generator(request.node.nodeid)


def pytest_report_header(config):
    err = dreamer_fast.extension_error()
    return (f"dreamer_fast: has_extension={dreamer_fast.has_extension()} "
            f"has_cuda_kernels={HAS_CUDA_KERNELS} torch={torch.__version__}"
            + (f" extension_error={err!r}" if err else ""))


# ---- imagination rollouts (test_imagine.py, test_imagine_graph.py) -----------------------

#: Small RSSMs of the three Dreamer versions (cell, latents, norm) and the actor heads.
IMAGINE_RSSMS = {
    "v1-gru-gauss": dict(cell="gru", classes=None, norm="none", act="elu"),
    "v2-lngru-cat": dict(cell="ln_gru", classes=4, norm="layer", act="elu"),
    "v3-block-cat": dict(cell="block_gru", classes=4, norm="rms", act="silu", blocks=4),
}
ACTOR_HEADS = ("tanh_normal", "bounded_normal", "categorical")


def imagine_models(cfg: str, head: str, backend: str, dtype: torch.dtype = torch.float64,
                   device="cpu"):
    """A seeded ``(RSSM, Actor)`` pair: deter 16, hidden 12, 5 latents, 3 actions."""
    from dreamer_fast.nn import RSSM, Actor
    torch.manual_seed(0)
    rssm = RSSM(stoch=5, deter=16, hidden=12, action_size=3, embed_size=7, dtype=dtype,
                backend=backend, device=device, **IMAGINE_RSSMS[cfg])
    actor = Actor(rssm.feat_size, 3, head=head, units=10, layers=2, dtype=dtype,
                  backend=backend, device=device)
    return rssm, actor


def imagine_start(rssm, n: int, seed: int) -> dict[str, torch.Tensor]:
    """``rssm.initial(n)`` plus seeded noise (drawn on the CPU), on the RSSM's device."""
    p = next(rssm.parameters())
    g = torch.Generator().manual_seed(seed)
    state = {k: (v.cpu() + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype)).to(p.device)
             for k, v in rssm.initial(n).items()}
    if "std" in state:
        state["std"] = state["std"].abs() + 0.1
    return state
