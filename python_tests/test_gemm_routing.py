"""The CPU float32 matrix products of the fused ops go to oneDNN (csrc/gemm.h).

* With oneDNN available and enabled, a float32 fused ``observe`` / ``imagine`` runs its
  products through ``mkldnn::_linear_pointwise`` and packs the weights its steps reuse
  (``mkldnn::_reorder_linear_weight``); float64, or ``torch.backends.mkldnn`` disabled,
  keeps ATen's ``mm`` (no oneDNN op is called).
* At ``torch.set_float32_matmul_precision("medium")`` the products stay with ATen,
  which then uses oneDNN's bf16 arithmetic itself.
* Both routes give the reference backend's numbers (values and parameter gradients)
  within float32 tolerance, at sizes where every recurrent product takes oneDNN.
"""

from __future__ import annotations

import pytest
import torch

from dreamer_fast.bench.timing import matmul_precision
from dreamer_fast.nn import RSSM, Actor
from dreamer_fast.nn import draw_imagine_noise, imagine

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="this torch build has no oneDNN")

LINEAR = "mkldnn::_linear_pointwise"
REORDER = "mkldnn::_reorder_linear_weight"


def make_pair(cell: str, dtype: torch.dtype) -> tuple[RSSM, RSSM]:
    torch.manual_seed(0)
    kw = dict(stoch=8, classes=16, deter=256, hidden=256, action_size=3, embed_size=320,
              cell=cell, norm="layer", act="silu", dtype=dtype)
    fused, ref = RSSM(**kw, backend="fused"), RSSM(**kw, backend="ref")
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def observe_loss(model: RSSM, dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """feat of a 3-step observe at B=16 and every parameter gradient of a scalar loss."""
    g = torch.Generator().manual_seed(1)
    B, T = 16, 3
    embed = torch.randn(B, T, 320, generator=g).to(dtype)
    action = torch.randn(B, T, 3, generator=g).to(dtype)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    noise = tuple(torch.rand(B, T, 8, generator=g).to(dtype) for _ in range(2))
    model.zero_grad(set_to_none=True)
    post, prior = model.observe(embed, action, is_first, noise=noise)
    feat = model.get_feat(post)
    kl, _, _ = model.kl_loss(post, prior)
    (feat.square().mean() + kl.mean()).backward()
    return feat.detach(), [p.grad.clone() for p in model.parameters()]


def op_names(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("cell", ["gru", "ln_gru"])
def test_float32_observe_uses_onednn_and_matches_reference(cell):
    fused, ref = make_pair(cell, torch.float32)
    names = op_names(lambda: observe_loss(fused, torch.float32))
    assert LINEAR in names and REORDER in names
    feat, grads = observe_loss(fused, torch.float32)
    feat_ref, grads_ref = observe_loss(ref, torch.float32)
    torch.testing.assert_close(feat, feat_ref, rtol=1e-4, atol=1e-4)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-5)


# torch.backends.mkldnn.flags also sets oneDNN's TF32 switch, which warns on CPU builds
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_onednn_and_aten_routes_agree():
    fused, _ = make_pair("ln_gru", torch.float32)
    feat, grads = observe_loss(fused, torch.float32)
    with torch.backends.mkldnn.flags(enabled=False):
        names = op_names(lambda: observe_loss(fused, torch.float32))
        feat_mm, grads_mm = observe_loss(fused, torch.float32)
    assert LINEAR not in names and REORDER not in names
    torch.testing.assert_close(feat, feat_mm, rtol=1e-4, atol=1e-4)
    for g, g_mm in zip(grads, grads_mm):
        torch.testing.assert_close(g, g_mm, rtol=1e-3, atol=1e-5)


def test_medium_precision_leaves_products_to_aten():
    """At "medium" at::mm runs float32 products with bf16 arithmetic itself; the
    IEEE oneDNN route would keep them at full precision (and speed)."""
    fused, _ = make_pair("ln_gru", torch.float32)
    with matmul_precision("medium"):
        names = op_names(lambda: observe_loss(fused, torch.float32))
    assert LINEAR not in names and REORDER not in names


def test_float64_keeps_aten_mm():
    fused, _ = make_pair("ln_gru", torch.float64)
    names = op_names(lambda: observe_loss(fused, torch.float64))
    assert LINEAR not in names and "aten::mm" in names


@pytest.mark.parametrize("grad", ["none", "dynamics"])
def test_float32_imagine_uses_onednn_and_matches_reference(grad):
    fused, ref = make_pair("ln_gru", torch.float32)
    torch.manual_seed(2)
    actor = Actor(fused.feat_size, 3, head="bounded_normal", units=256, layers=2,
                  norm="layer", act="silu")
    N, H = 128, 3
    g = torch.Generator().manual_seed(3)
    start = {"deter": torch.randn(N, 256, generator=g),
             "stoch": torch.zeros(N, 8, 16),
             "logit": torch.zeros(N, 8, 16)}
    noise = draw_imagine_noise(fused, actor, N, H, like=start["deter"])

    def run(model):
        actor.zero_grad(set_to_none=True)
        traj = imagine(model, actor, start, H, grad=grad, noise=noise)
        feat = traj["feat"]
        if grad == "dynamics":
            feat.square().mean().backward()
            return feat.detach(), [p.grad.clone() for p in actor.parameters()]
        return feat, []

    names = op_names(lambda: run(fused))
    assert LINEAR in names and REORDER in names
    feat, grads = run(fused)
    feat_ref, grads_ref = run(ref)
    torch.testing.assert_close(feat, feat_ref, rtol=1e-4, atol=1e-4)
    for g_, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g_, g_ref, rtol=1e-3, atol=1e-5)
