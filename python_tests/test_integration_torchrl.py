"""dreamer_fast.integrations.torchrl against TorchRL's published TD(λ) recursion (written
out here), float64."""

from __future__ import annotations

import types

import pytest
import torch

from dreamer_fast.integrations import UnsupportedPeerConfig
from dreamer_fast.integrations import torchrl as tr


def _peer(gamma, lmbda, nv, reward, done, terminated=None):
    """TorchRL's rolling-gamma TD(λ) loop, time at -2."""
    terminated = done.clone() if terminated is None else terminated
    nv = nv * (~terminated).int()
    T = nv.shape[-2]
    gamma = gamma if isinstance(gamma, torch.Tensor) else torch.full_like(nv, gamma)
    gamma = gamma.expand(nv.shape)
    lmbda = torch.full_like(nv, lmbda)
    out = torch.empty_like(nv)
    g = nv[..., -1, :]
    for i in reversed(range(T)):
        dn = done[..., i, :].int()
        v = nv[..., i, :]
        g = g * (1 - dn) + v * dn
        g = reward[..., i, :] + gamma[..., i, :] * ((1 - lmbda[..., i, :]) * v
                                                    + lmbda[..., i, :] * g)
        out[..., i, :] = g
    return out


@pytest.mark.parametrize("fn", [tr.td_lambda_return_estimate, tr.vec_td_lambda_return_estimate])
@pytest.mark.parametrize("tensor_gamma", [False, True])
def test_td_lambda_matches_peer_recursion(fn, tensor_gamma):
    torch.manual_seed(0)
    B, T = 5, 9
    nv = torch.randn(B, T, 1, dtype=torch.float64, requires_grad=True)
    r = torch.randn(B, T, 1, dtype=torch.float64, requires_grad=True)
    done = torch.rand(B, T, 1) < 0.2
    term = done & (torch.rand(B, T, 1) < 0.5)
    gamma = (0.9 + 0.1 * torch.rand(B, T, 1, dtype=torch.float64)) if tensor_gamma else 0.99
    ref = _peer(gamma, 0.95, nv, r, done, term)
    got = fn(gamma, 0.95, nv, r, done, term)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((ref * w).sum(), [nv, r]),
                    torch.autograd.grad((got * w).sum(), [nv, r])):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    # time on another axis
    got_t = fn(gamma.transpose(0, 1) if tensor_gamma else gamma, 0.95, nv.transpose(0, 1),
               r.transpose(0, 1), done.transpose(0, 1), term.transpose(0, 1), time_dim=0)
    torch.testing.assert_close(got_t, ref.transpose(0, 1), rtol=1e-12, atol=1e-12)


def test_refusal_and_install():
    x = torch.zeros(2, 3, 1)
    with pytest.raises(UnsupportedPeerConfig, match="rolling_gamma"):
        tr.td_lambda_return_estimate(0.9, 0.9, x, x, x.bool(), rolling_gamma=False)
    with pytest.raises(RuntimeError, match="shape"):
        tr.td_lambda_return_estimate(0.9, 0.9, x, x[:, :2], x.bool())
    mod = types.ModuleType("advantages")
    mod.td_lambda_return_estimate = mod.vec_td_lambda_return_estimate = _peer
    tr.install(mod)
    assert mod.td_lambda_return_estimate is tr.td_lambda_return_estimate
    assert mod.vec_td_lambda_return_estimate is tr.vec_td_lambda_return_estimate
    tr.uninstall(mod)
    assert mod.td_lambda_return_estimate is _peer


def test_bench_case_runs_on_a_checkout_with_the_peer_layout(tmp_path):
    import sys

    from dreamer_fast.bench import integration_cases

    value = tmp_path / "torchrl" / "objectives" / "value"
    value.mkdir(parents=True)
    for d in (tmp_path / "torchrl", tmp_path / "torchrl" / "objectives", value):
        (d / "__init__.py").write_text("")
    (value / "functional.py").write_text(
        "from test_integration_torchrl import _peer\n"
        "def td_lambda_return_estimate(g, l, nv, r, done, terminated=None):\n"
        "    return _peer(g, l, nv, r, done, terminated)\n"
        "vec_td_lambda_return_estimate = td_lambda_return_estimate\n")
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "torchrl"}
    for k in saved:
        del sys.modules[k]
    try:
        (case,) = integration_cases.torchrl_cases(tmp_path, torch.device("cpu"),
                                                  torch.float32, N=4, T=5)
        assert case[0] == "td_lambda_return_estimate N=4 T=5"
        assert set(case[2]) == {"fast", "eager", "eager vec"}
        for prepare in case[2].values():
            prepare()()
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] == "torchrl"]:
            del sys.modules[k]
        sys.modules.update(saved)
