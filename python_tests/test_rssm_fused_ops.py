"""The whole-sequence ops ``rssm_observe`` / ``rssm_imagine`` as torch.library ops.

* Their Meta kernels (the C++ op bodies, launching nothing on the meta device) give
  FakeTensor every output shape, so ``opcheck`` passes and ``RSSM.observe`` / ``imagine``
  with the fused backend trace under ``torch.compile(fullgraph=True)`` and give the
  eager numbers, values and parameter gradients. Static shapes only: the C++ bodies
  read concrete sizes, so tracing with symbolic (dynamic) shapes is not supported
  (compile with ``dynamic=False``).
* No output shares memory with an input or with another output, at every batch and
  sequence length including 1 (an aliased input once let the fused ``obs_step`` zero the
  caller's ``action`` rows in place where ``is_first``).
"""

from __future__ import annotations

import pytest
import torch

from dreamer_fast.bench.timing import matmul_precision
from dreamer_fast.nn import RSSM, Actor
from dreamer_fast.nn import draw_imagine_noise, imagine, imagine_ref
from dreamer_fast.ops.rssm import actor_spec, rssm_spec

F64 = torch.float64
CELLS = ("gru", "ln_gru", "block_gru")


def make_rssm(cell: str, classes: int | None) -> RSSM:
    torch.manual_seed(0)
    return RSSM(stoch=4, classes=classes, deter=16, hidden=16, action_size=3, embed_size=8,
                cell=cell, norm="rms" if cell == "block_gru" else "layer", blocks=4,
                backend="fused", dtype=F64)


def observe_inputs(B: int, T: int):
    g = torch.Generator().manual_seed(B * 100 + T)
    embed = torch.randn(B, T, 8, generator=g, dtype=F64)
    action = torch.randn(B, T, 3, generator=g, dtype=F64)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    if B > 1 and T > 2:
        is_first[1, 2] = True
    noise = (torch.rand(B, T, 4, generator=g, dtype=F64),
             torch.rand(B, T, 4, generator=g, dtype=F64))
    return embed, action, is_first, noise


def raw_observe_args(m: RSSM, B: int, T: int):
    embed, action, is_first, noise = observe_inputs(B, T)
    params, ints, floats = rssm_spec(m)
    keep = (~is_first).to(F64)
    deter = torch.randn(B, 16, dtype=F64)
    stoch = torch.zeros(B, m.stoch * (m.classes or 1), dtype=F64)
    return (list(params), ints, floats, embed.requires_grad_(), action, keep, deter, stoch,
            noise[0], noise[1], True)


def raw_imagine_args(m: RSSM, actor: Actor, N: int, H: int, feat_out: bool = False):
    g = torch.Generator().manual_seed(N * 100 + H)
    params, ints, floats = rssm_spec(m)
    a_params, a_ints, a_floats = actor_spec(actor)
    deter = torch.randn(N, 16, generator=g, dtype=F64).requires_grad_()
    stoch = torch.zeros(N, m.stoch * (m.classes or 1), dtype=F64)
    a_noise = torch.rand(N, H, actor.noise_size(), generator=g, dtype=F64)
    s_noise = torch.rand(N, H, m.stoch, generator=g, dtype=F64)
    return (list(params), ints, floats, list(a_params), a_ints, a_floats, deter, stoch, None,
            a_noise, s_noise, H, True, feat_out, True)


def tensors_of(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in tensors_of(item)]
    return []


def assert_no_shared_memory(inputs, outputs):
    ins = [t for t in tensors_of(inputs) if t.numel()]
    outs = [t for t in tensors_of(outputs) if t.numel()]
    seen = {}
    for i, t in enumerate(outs):
        key = t.untyped_storage().data_ptr()
        assert key not in seen, f"outputs {seen[key]} and {i} share memory"
        seen[key] = i
        for x in ins:
            assert key != x.untyped_storage().data_ptr(), f"output {i} shares an input's memory"


@pytest.mark.parametrize("B,T", [(1, 1), (1, 4), (3, 1), (3, 5)])
@pytest.mark.parametrize("cell", CELLS)
def test_observe_outputs_share_no_memory(cell, B, T):
    m = make_rssm(cell, 4)
    args = raw_observe_args(m, B, T)
    out = torch.ops.dreamer_fast.rssm_observe(*args)
    assert len(out[7]) > 0, "save=True must return the saved activations"
    assert_no_shared_memory(args, out)


@pytest.mark.parametrize("feat_out", [False, True], ids=["states", "feat"])
@pytest.mark.parametrize("N,H", [(1, 1), (1, 3), (4, 1), (4, 3)])
@pytest.mark.parametrize("cell", CELLS)
def test_imagine_outputs_share_no_memory(cell, N, H, feat_out):
    m = make_rssm(cell, None)
    actor = Actor(m.feat_size, 3, head="bounded_normal", units=8, layers=2, dtype=F64,
                  backend="fused")
    args = raw_imagine_args(m, actor, N, H, feat_out)
    out = torch.ops.dreamer_fast.rssm_imagine(*args)
    assert len(out[6]) > 0
    assert_no_shared_memory(args, out)


@pytest.mark.parametrize("B,T", [(1, 1), (2, 1), (1, 3)])
def test_fused_observe_leaves_the_callers_action_untouched(B, T):
    m = make_rssm("ln_gru", 4)
    embed, action, is_first, noise = observe_inputs(B, T)
    before = action.clone()
    m.observe(embed, action, is_first, noise=noise)
    torch.testing.assert_close(action, before, rtol=0, atol=0)
    m.obs_step(m.initial(B), action[:, 0], embed[:, 0], is_first[:, 0],
               noise=(noise[0][:, 0], noise[1][:, 0]))
    torch.testing.assert_close(action, before, rtol=0, atol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_imagine_without_world_model_inputs_keeps_less_and_says_so(cell):
    """save_wm_inputs=False (world-model parameters detached) drops the inputs that only
    the world-model weight gradients read: fewer saved bytes, the same outputs; a backward
    that asks for those gradients anyway fails with a message naming the flag."""
    m = make_rssm(cell, 4)
    actor = Actor(m.feat_size, 3, head="bounded_normal", units=8, layers=2, dtype=F64,
                  backend="fused")
    args = list(raw_imagine_args(m, actor, 4, 3))
    keep = torch.ops.dreamer_fast.rssm_imagine(*args)
    args[-1] = False
    drop = torch.ops.dreamer_fast.rssm_imagine(*args)
    for a, b in zip(keep[:6], drop[:6]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(keep[6]) == len(drop[6])
    assert sum(t.numel() for t in drop[6]) < sum(t.numel() for t in keep[6])
    loss = drop[0].square().sum() + drop[4].sum()
    with pytest.raises(RuntimeError, match="save_wm_inputs=False"):
        loss.backward()


OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor",
                 "test_aot_dispatch_static")


@pytest.mark.parametrize("cell,classes", [("ln_gru", 4), ("block_gru", None), ("gru", 4)])
def test_opcheck_rssm_observe(cell, classes):
    m = make_rssm(cell, classes)
    torch.library.opcheck(torch.ops.dreamer_fast.rssm_observe.default,
                          raw_observe_args(m, 2, 3), test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("feat_out", [False, True], ids=["states", "feat"])
@pytest.mark.parametrize("cell,head", [("ln_gru", "categorical"), ("block_gru", "tanh_normal")])
def test_opcheck_rssm_imagine(cell, head, feat_out):
    m = make_rssm(cell, 4)
    actor = Actor(m.feat_size, 3, head=head, units=8, layers=2, dtype=F64, backend="fused")
    torch.library.opcheck(torch.ops.dreamer_fast.rssm_imagine.default,
                          raw_imagine_args(m, actor, 3, 2, feat_out), test_utils=OPCHECK_TESTS)


def _grads(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("cell,classes", [(c, k) for c in CELLS for k in (4, None)])
def test_compiled_fused_observe_matches_eager(cell, classes):
    m = make_rssm(cell, classes)
    embed, action, is_first, noise = observe_inputs(3, 5)
    params = list(m.parameters())

    def loss_fn(embed, action, is_first, noise):
        post, prior = m.observe(embed, action, is_first, noise=noise)
        kl, _, _ = m.kl_loss(post, prior)
        return kl.mean() + m.get_feat(post).square().mean()

    eager = loss_fn(embed, action, is_first, noise)
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")(
        embed, action, is_first, noise)
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)
    for p, ge, gc in zip(params, _grads(eager, params), _grads(compiled, params)):
        assert (ge is None) == (gc is None)
        if ge is not None:
            torch.testing.assert_close(gc, ge, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grad", ["none", "dynamics"])
def test_compiled_fused_imagine_matches_eager(grad):
    m = make_rssm("ln_gru", 4)
    actor = Actor(m.feat_size, 3, head="bounded_normal", units=8, layers=2, dtype=F64,
                  backend="fused")
    start = {k: v.normal_() if k in ("deter", "logit") else v for k, v in m.initial(5).items()}
    noise = draw_imagine_noise(m, actor, 5, 4, like=start["deter"])

    def run(start, noise):
        return imagine(m, actor, start, 4, grad=grad, noise=noise)["feat"].square().mean()

    eager = run(start, noise)
    torch._dynamo.reset()
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")(start, noise)
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)
    if grad == "dynamics":
        params = list(actor.parameters())
        for ge, gc in zip(_grads(eager, params), _grads(compiled, params)):
            torch.testing.assert_close(gc, ge, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not (torch.backends.mkldnn.is_available()
                         and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                    reason="no oneDNN bf16 on this CPU: 'medium' would equal 'highest'")
@pytest.mark.parametrize("classes", [8, None])
def test_medium_matmul_precision_rollout_stays_within_float32_tolerance(classes):
    """``torch.set_float32_matmul_precision('medium')`` lets oneDNN run float32 GEMMs
    with bf16 arithmetic on CPUs that have it (the benchmarks' 'medium' rows); a 15-step
    fused rollout must stay within float32 tolerance of the IEEE reference and pick
    the same categorical classes."""
    torch.manual_seed(0)
    kw = dict(stoch=8, classes=classes, deter=128, hidden=128, action_size=4, embed_size=32,
              cell="ln_gru", dtype=torch.float32)
    fused, ref = RSSM(**kw, backend="fused"), RSSM(**kw, backend="ref")
    ref.load_state_dict(fused.state_dict())
    actor = Actor(fused.feat_size, 4, head="bounded_normal", units=128, layers=2,
                  backend="fused")
    actor_ref = Actor(fused.feat_size, 4, head="bounded_normal", units=128, layers=2,
                      backend="ref")
    actor_ref.load_state_dict(actor.state_dict())
    start = {k: v.normal_() if k in ("deter", "logit", "mean") else v
             for k, v in fused.initial(256).items()}
    noise = draw_imagine_noise(fused, actor, 256, 15, like=start["deter"])
    with matmul_precision("highest"):
        want = imagine_ref(ref, actor_ref, start, 15, noise=noise)
    with matmul_precision("medium"):
        got = imagine(fused, actor, start, 15, noise=noise)
    torch.testing.assert_close(got["feat"], want["feat"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["action"], want["action"], rtol=1e-4, atol=1e-4)
    if classes:
        assert torch.equal(got["stoch"].argmax(-1), want["stoch"].argmax(-1))
