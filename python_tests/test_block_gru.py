"""Tests of dreamer_fast.ops.block_gru_cell (the DreamerV3 block GRU core)."""

from __future__ import annotations

import pytest
import torch

import dreamer_fast
from dreamer_fast.ops import block_gru_cell, block_gru_cell_ref
from conftest import DEVICES, assert_close_to_ref, make_generator, requires_cuda


def _params(B, D, G, U, S, A, L, gen):
    """float64 (deter, stoch, action, in_params, hidden_params, gru_weight, gru_bias)."""
    r = lambda *s, sc=0.3: torch.randn(*s, generator=gen, dtype=torch.float64) * sc  # noqa: E731
    Dg = D // G
    in_params = []
    for fan_in in (D, S, A):
        in_params += [r(U, fan_in, sc=fan_in ** -0.5), r(U, sc=0.1), 1 + r(U, sc=0.1)]
    hidden = []
    for l in range(L):
        in_g = Dg + 3 * U if l == 0 else Dg
        hidden += [r(G, in_g, Dg, sc=in_g ** -0.5), r(D, sc=0.1), 1 + r(D, sc=0.1)]
    return (r(B, D, sc=1.0), r(B, S, sc=1.0), r(B, A, sc=2.0), in_params, hidden,
            r(G, Dg, 3 * Dg, sc=Dg ** -0.5), r(3 * D, sc=0.1))


def _flat(args):
    deter, stoch, action, inp, hid, gw, gb = args
    return [deter, stoch, action, *inp, *hid, gw, gb]


def _unflat(leaves, n_in, n_hid):
    return (leaves[0], leaves[1], leaves[2], leaves[3:3 + n_in], leaves[3 + n_in:3 + n_in + n_hid],
            leaves[-2], leaves[-1])


def _compare(args64, G, act, device, dtype, gen):
    n_in, n_hid = len(args64[3]), len(args64[4])
    leaves64 = [t.clone().requires_grad_() for t in _flat(args64)]
    ref = block_gru_cell_ref(*_unflat(leaves64, n_in, n_hid), G, act)
    gout = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    grads64 = torch.autograd.grad(ref, leaves64, gout)
    leaves = [t.detach().to(device=device, dtype=dtype).requires_grad_() for t in leaves64]
    out = block_gru_cell(*_unflat(leaves, n_in, n_hid), G, act)
    grads = torch.autograd.grad(out, leaves, gout.to(out))
    assert_close_to_ref(out, ref, dtype, "deter'")
    for i, (g, g64) in enumerate(zip(grads, grads64)):
        assert_close_to_ref(g, g64, dtype, f"grad of leaf {i}")


@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("B,D,G,U", [(1, 96, 8, 32), (37, 200, 4, 40), (256, 96, 1, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_matches_ref_cpu(dtype, B, D, G, U, L):
    gen = make_generator("bgru", B, D, G, U, L)
    _compare(_params(B, D, G, U, 45, 6, L, gen), G, "silu", "cpu", dtype, gen)


@pytest.mark.parametrize("act", ["gelu", "elu"])
def test_other_activations(act):
    gen = make_generator("bgru-act", act)
    _compare(_params(5, 24, 4, 10, 12, 3, 1, gen), 4, act, "cpu", torch.float64, gen)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["f32", "bf16", "f16"])
def test_matches_ref_cuda(dtype):
    gen = make_generator("bgru-cuda")
    _compare(_params(64, 512, 8, 128, 1024, 6, 1, gen), 8, "silu", "cuda", dtype, gen)


def test_action_normalisation_gradient():
    """|action| > 1 is divided by |action| with the divisor held constant (stop-grad)."""
    gen = make_generator("bgru-action")
    args = list(_params(4, 16, 2, 8, 6, 3, 1, gen))
    args[2] = torch.tensor([[3.0, -0.5, 1.5]] * 4, dtype=torch.float64)
    _compare(tuple(args), 2, "silu", "cpu", torch.float64, gen)


@pytest.mark.parametrize("device", DEVICES)
def test_module_backends_agree(device):
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


def test_gradcheck_and_opcheck():
    gen = make_generator("bgru-check")
    args = list(_params(2, 8, 2, 4, 5, 2, 2, gen))
    # |action| < 1: the stop-gradient on max(1, |action|) is then invisible to the
    # finite differences gradcheck compares against.
    args[2] = args[2].clamp(-0.9, 0.9)
    n_in, n_hid = len(args[3]), len(args[4])
    leaves = [t.requires_grad_() for t in _flat(args)]
    assert torch.autograd.gradcheck(
        lambda *l: block_gru_cell(*_unflat(list(l), n_in, n_hid), 2), tuple(leaves))
    deter, stoch, action, inp, hid, gw, gb = _unflat(leaves, n_in, n_hid)
    torch.library.opcheck(torch.ops.dreamer_fast.block_gru_cell.default,
                          (deter, stoch, action, inp, hid, gw, gb, 2, 1, 1e-4))


@pytest.mark.compile
def test_torch_compile_fullgraph():
    gen = make_generator("bgru-compile")
    args = _params(4, 16, 2, 8, 6, 3, 1, gen)
    n_in, n_hid = len(args[3]), len(args[4])
    leaves = [t.float().requires_grad_() for t in _flat(args)]

    def f(*l):
        return block_gru_cell(*_unflat(list(l), n_in, n_hid), 2).square().sum()

    loss = torch.compile(f, fullgraph=True, backend="aot_eager")(*leaves)
    ref = f(*leaves)
    torch.testing.assert_close(loss, ref)
    for g, e in zip(torch.autograd.grad(loss, leaves), torch.autograd.grad(ref, leaves)):
        torch.testing.assert_close(g, e)


def _bad():
    gen = make_generator("bgru-bad")
    deter, stoch, action, inp, hid, gw, gb = _params(3, 16, 4, 8, 6, 2, 1, gen)
    return {
        "blocks-divide": ((deter, stoch, action, inp, hid, gw, gb, 3), ValueError, "blocks"),
        "stoch-batch": ((deter, stoch[:2], action, inp, hid, gw, gb, 4), ValueError, "stoch"),
        "in-params-count": ((deter, stoch, action, inp[:8], hid, gw, gb, 4), ValueError,
                            "in_params"),
        "stoch-weight": ((deter, stoch, action, inp[:3] + [inp[3][:, :5]] + inp[4:], hid, gw, gb,
                          4), ValueError, r"in_params\[3\]"),
        "hidden-count": ((deter, stoch, action, inp, hid[:2], gw, gb, 4), ValueError,
                         "hidden_params"),
        "gru-weight": ((deter, stoch, action, inp, hid, gw[:, :, :-1], gb, 4), ValueError,
                       "gru_weight"),
        "dtype-mix": ((deter, stoch.float(), action, inp, hid, gw, gb, 4), TypeError, "stoch"),
        "int-action": ((deter, stoch, action.long(), inp, hid, gw, gb, 4), TypeError, "action"),
    }


@pytest.mark.parametrize("case", list(_bad()))
@pytest.mark.parametrize("fn", [block_gru_cell, block_gru_cell_ref], ids=["fast", "ref"])
def test_bad_input(fn, case):
    args, exc, name = _bad()[case]
    with pytest.raises(exc, match=f"`{name}"):
        fn(*args)
