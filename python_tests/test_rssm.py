"""Tests of dreamer_fast.nn.RSSM: the fused backend against the reference backend over a
64-step observe and a 15-step imagination (values and gradients), and the KL losses."""

from __future__ import annotations

import pytest
import torch
import torch.distributions as td

from dreamer_fast.nn import RSSM
from conftest import DEVICES

CONFIGS = {
    "v1-gru-gauss": dict(cell="gru", classes=None, norm="none", act="elu"),
    "v2-lngru-cat": dict(cell="ln_gru", classes=8, norm="layer", act="elu"),
    "v3-block-cat": dict(cell="block_gru", classes=8, norm="rms", act="silu", blocks=4),
}


def _pair(cfg, device, dtype=torch.float64):
    torch.manual_seed(0)
    kw = dict(stoch=6, deter=32, hidden=24, action_size=3, embed_size=10, device=device,
              dtype=dtype, **CONFIGS[cfg])
    fused, ref = RSSM(**kw, backend="fused"), RSSM(**kw, backend="ref")
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def _sequence(model, B, T, device, dtype=torch.float64):
    g = torch.Generator().manual_seed(B * 1000 + T)
    embed = torch.randn(B, T, 10, generator=g, dtype=dtype).to(device)
    action = torch.randn(B, T, 3, generator=g, dtype=dtype).to(device)
    is_first = torch.rand(B, T, generator=g) < 0.05
    is_first[:, 0] = True
    noise = (model.draw_noise(B, T, like=embed), model.draw_noise(B, T, like=embed))
    return embed, action, is_first.to(device), noise


def _loss(model, post, prior, img):
    kl, _, _ = model.kl_loss(post, prior, free=0.0)
    return kl.mean() + model.get_feat(post).square().mean() + model.get_feat(img).tanh().mean()


@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("device", DEVICES)
def test_fused_matches_ref_observe_and_imagine(device, cfg):
    fused, ref = _pair(cfg, device)
    embed, action, is_first, noise = _sequence(fused, 4, 64, device)
    outs = []
    for model in (fused, ref):
        post, prior = model.observe(embed, action, is_first, noise=noise)
        start = {k: v[:, -1] for k, v in post.items()}
        img = model.imagine_with_action(action[:, :15], start, noise[0][:, :15])
        _loss(model, post, prior, img).backward()
        outs.append((post, prior, img))
    for (pf, qf, imf), (pr, qr, imr) in [outs]:
        for name, a, b in [("post", pf, pr), ("prior", qf, qr), ("imagine", imf, imr)]:
            for k in a:
                torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-10, msg=f"{name}.{k}")
    for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_float32_fused_close_to_ref(cfg):
    fused, ref = _pair(cfg, "cpu", torch.float32)
    embed, action, is_first, noise = _sequence(fused, 3, 16, "cpu", torch.float32)
    pf, _ = fused.observe(embed, action, is_first, noise=noise)
    pr, _ = ref.observe(embed, action, is_first, noise=noise)
    torch.testing.assert_close(pf["deter"], pr["deter"], rtol=1e-4, atol=1e-5)
    # One-hot samples agree except where a uniform draw sits within float32 rounding
    # of a class boundary (not expected with 3 x 16 x 6 draws).
    torch.testing.assert_close(pf["stoch"], pr["stoch"], rtol=1e-4, atol=1e-5)


def test_is_first_resets_state():
    model, _ = _pair("v2-lngru-cat", "cpu")
    embed, action, is_first, noise = _sequence(model, 2, 5, "cpu")
    is_first[:] = False
    is_first[:, 0] = True
    is_first[0, 3] = True
    post, _ = model.observe(embed, action, is_first, noise=noise)
    # Row 0 restarts at t=3: its steps 3.. equal a fresh observe of the tail.
    tail, _ = model.observe(embed[:1, 3:], action[:1, 3:], is_first[:1, 3:],
                            noise=(noise[0][:1, 3:], noise[1][:1, 3:]))
    torch.testing.assert_close(post["deter"][:1, 3:], tail["deter"])


def test_categorical_kl_matches_torch_distributions():
    model, _ = _pair("v2-lngru-cat", "cpu")
    g = torch.Generator().manual_seed(1)
    a = {"logit": torch.randn(5, 6, 8, generator=g, dtype=torch.float64)}
    b = {"logit": torch.randn(5, 6, 8, generator=g, dtype=torch.float64)}
    mix = lambda l: (1 - model.unimix) * l.softmax(-1) + model.unimix / 8  # noqa: E731
    expected = td.kl_divergence(td.Categorical(probs=mix(a["logit"])),
                                td.Categorical(probs=mix(b["logit"]))).sum(-1)
    torch.testing.assert_close(model.kl(a, b), expected)


def test_gaussian_kl_matches_torch_distributions():
    model, _ = _pair("v1-gru-gauss", "cpu")
    g = torch.Generator().manual_seed(2)
    r = lambda: torch.randn(5, 6, generator=g, dtype=torch.float64)  # noqa: E731
    a = {"mean": r(), "std": r().exp()}
    b = {"mean": r(), "std": r().exp()}
    expected = td.kl_divergence(td.Normal(a["mean"], a["std"]),
                                td.Normal(b["mean"], b["std"])).sum(-1)
    torch.testing.assert_close(model.kl(a, b), expected)


def test_kl_loss_free_bits_and_scales():
    model, _ = _pair("v3-block-cat", "cpu")
    g = torch.Generator().manual_seed(3)
    post = {"logit": torch.randn(7, 6, 8, generator=g, dtype=torch.float64) * 3}
    prior = {"logit": torch.randn(7, 6, 8, generator=g, dtype=torch.float64) * 3}
    loss, dyn, rep = model.kl_loss(post, prior, free=1.0, dyn_scale=0.5, rep_scale=0.1)
    kl = model.kl(post, prior)
    torch.testing.assert_close(dyn, kl.clamp(min=1.0))
    torch.testing.assert_close(loss, 0.6 * kl.clamp(min=1.0))
    bal, value = model.kl_balance_loss(post, prior, free=0.0, balance=0.8)
    torch.testing.assert_close(bal, kl)
    torch.testing.assert_close(value, kl)


@pytest.mark.parametrize("kwargs,match", [
    (dict(cell="lstm"), "`cell`"),
    (dict(cell="block_gru", blocks=5), "`blocks`"),
    (dict(unimix=1.0), "`unimix`"),
    (dict(min_std=-0.1), "`min_std`"),
    (dict(classes=0), "`classes`"),
])
def test_bad_config(kwargs, match):
    base = dict(stoch=6, deter=32, hidden=24, action_size=3, embed_size=10)
    with pytest.raises(ValueError, match=match):
        RSSM(**{**base, **kwargs})
