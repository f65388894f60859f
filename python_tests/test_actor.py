"""Tests of dreamer_fast.nn.Actor: the three heads' equations, sampling with given
noise, log-probs against torch.distributions, and bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributions as td
import torch.nn.functional as F

from dreamer_fast.nn import Actor


def _actor(head, **kw):
    torch.manual_seed(0)
    return Actor(12, 3, head=head, units=16, layers=2, dtype=torch.float64, **kw)


def test_bounded_normal_equations_and_straight_through_clip():
    actor = _actor("bounded_normal", min_std=0.1, max_std=1.0)
    feat = torch.randn(5, 12, dtype=torch.float64)
    raw = actor.net(feat)
    mean, std = torch.tanh(raw[:, :3]), 0.9 * torch.sigmoid(raw[:, 3:] + 2) + 0.1
    dist = actor(feat)
    torch.testing.assert_close(dist.mean, mean)
    torch.testing.assert_close(dist.std, std)
    noise = torch.randn(5, 3, dtype=torch.float64) * 4  # large: many samples get clipped
    mean_leaf = dist.mean.detach().requires_grad_()
    from dreamer_fast.nn.actor import BoundedNormal
    a = BoundedNormal(mean_leaf, dist.std.detach()).sample(noise)
    torch.testing.assert_close(a, (mean + std * noise).clamp(-1, 1).detach())
    a.sum().backward()
    torch.testing.assert_close(mean_leaf.grad, torch.ones_like(mean_leaf))  # straight-through
    ref = td.Independent(td.Normal(mean, std), 1)
    x = torch.rand(5, 3, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(dist.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(dist.entropy(), ref.entropy())
    torch.testing.assert_close(dist.mode(), mean)


def test_tanh_normal_equations_and_log_prob():
    actor = _actor("tanh_normal", init_std=5.0, mean_scale=5.0)
    # At a zero MLP output the std is init_std + min_std.
    zero = actor.dist_from_raw(torch.zeros(2, 6, dtype=torch.float64))
    torch.testing.assert_close(zero.std, torch.full((2, 3), 5.0 + 1e-4, dtype=torch.float64))
    feat = torch.randn(5, 12, dtype=torch.float64)
    raw = actor.net(feat)
    mean = 5 * torch.tanh(raw[:, :3] / 5)
    std = F.softplus(raw[:, 3:] + math.log(math.expm1(5.0))) + 1e-4
    dist = actor(feat)
    torch.testing.assert_close(dist.mean, mean)
    torch.testing.assert_close(dist.std, std)
    noise = torch.randn(5, 3, dtype=torch.float64) * 0.1
    a = dist.sample(noise)
    torch.testing.assert_close(a, torch.tanh(mean + std * noise))
    ref = td.TransformedDistribution(td.Normal(mean, std), [td.TanhTransform()])
    torch.testing.assert_close(dist.log_prob(a), ref.log_prob(a).sum(-1))
    # the entropy estimate is -log p of the sample drawn from the same noise
    torch.testing.assert_close(dist.entropy(noise), -ref.log_prob(a).sum(-1))


def test_categorical_head_samples_with_given_uniform_noise():
    actor = _actor("categorical", unimix=0.01)
    feat = torch.randn(7, 12, dtype=torch.float64)
    dist = actor(feat)
    probs = 0.99 * torch.softmax(actor.net(feat), -1) + 0.01 / 3
    torch.testing.assert_close(dist.probs, probs)
    u = torch.rand(7, 1, dtype=torch.float64)
    a = dist.sample(u)
    index = (u > probs.cumsum(-1)).sum(-1).clamp(max=2)
    torch.testing.assert_close(a.detach(), F.one_hot(index, 3).double())
    torch.testing.assert_close(dist.log_prob(a), torch.log(probs.gather(-1, index[:, None]))[:, 0])
    torch.testing.assert_close(dist.entropy(), -(probs * probs.log()).sum(-1))
    # straight-through: the sample's gradient reaches the MLP
    a[:, 0].sum().backward()
    assert actor.net[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("head", ["tanh_normal", "bounded_normal", "categorical"])
def test_noise_shape_and_draw(head):
    actor = _actor(head)
    like = torch.zeros((), dtype=torch.float64)
    noise = actor.draw_noise(4, 2, like=like)
    assert noise.shape == (4, 2, 1 if head == "categorical" else 3)
    a = actor(torch.randn(4, 2, 12, dtype=torch.float64)).sample(noise)
    assert a.shape == (4, 2, 3) and a.abs().max() <= 1


@pytest.mark.parametrize("kw, match", [
    (dict(head="gauss"), "`head` must be one of"),
    (dict(head="bounded_normal", min_std=1.0, max_std=0.5), "min_std"),
    (dict(head="tanh_normal", init_std=0.0), "init_std"),
    (dict(head="categorical", unimix=1.0), "unimix"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        Actor(12, 3, **kw)
    with pytest.raises(ValueError, match="feat"):
        Actor(12, 3)(torch.randn(2, 11))
