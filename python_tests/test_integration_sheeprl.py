"""dreamer_fast.integrations.sheeprl against modules laid out as sheeprl's dreamer_v3
RSSM (parameter names and shapes of its published layout, written here), and an eager
run of that peer's published math with the same noise, float64."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dreamer_fast.integrations import UnsupportedPeerConfig
from dreamer_fast.integrations import sheeprl as sh


# every test here runs with float64 as torch's default dtype (conftest.float64_default)
pytestmark = pytest.mark.usefixtures("float64_default")


class MLPLike(nn.Module):
    """sheeprl's MLP: ``_model = [Linear, LayerNorm, act] (+ Linear out)``."""

    def __init__(self, fan_in, units, out=None, norm=True):
        super().__init__()
        layers = [nn.Linear(fan_in, units, bias=not norm),
                  nn.LayerNorm(units, eps=1e-3) if norm else nn.Identity(), nn.SiLU()]
        if out is not None:
            layers.append(nn.Linear(units, out))
        self._model = nn.Sequential(*layers)

    def forward(self, x):
        return self._model(x)


class LNGRULike(nn.Module):
    """sheeprl's LayerNormGRUCell: ``linear [3D, D + U]`` over ``cat(h, x)``."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.linear = nn.Linear(input_size + hidden_size, 3 * hidden_size, bias=False)
        self.layer_norm = nn.LayerNorm(3 * hidden_size, eps=1e-3)

    def forward(self, x, h):
        h2 = h[0]
        r, c, u = torch.chunk(self.layer_norm(self.linear(torch.cat((h2, x[0]), -1))), 3, -1)
        r = torch.sigmoid(r)
        c = torch.tanh(r * c)
        u = torch.sigmoid(u - 1)
        return (u * c + (1 - u) * h2)[None]


class RecurrentLike(nn.Module):
    def __init__(self, fan_in, deter, units):
        super().__init__()
        self.mlp = MLPLike(fan_in, units)
        self.rnn = LNGRULike(units, deter)
        self.recurrent_state_size = deter

    def forward(self, x, h):
        return self.rnn(self.mlp(x), h)


class RSSMLike(nn.Module):
    """Attributes and parameters as sheeprl's dreamer_v3 RSSM, with its math and explicit
    noise."""

    def __init__(self, S=3, K=4, D=8, U=6, A=2, E=5, unimix=0.01, learnable=True):
        super().__init__()
        self.recurrent_model = RecurrentLike(S * K + A, D, U)
        self.representation_model = MLPLike(D + E, U, S * K)
        self.transition_model = MLPLike(D, U, S * K)
        self.discrete, self.unimix = K, unimix
        if learnable:
            self.initial_recurrent_state = nn.Parameter(torch.zeros(D))
        else:
            self.register_buffer("initial_recurrent_state", torch.zeros(D))
        with torch.no_grad():
            for p in self.parameters():
                p.add_(0.4 * torch.randn_like(p))

    def _uniform_mix(self, logits):
        logits = logits.view(*logits.shape[:-1], -1, self.discrete)
        probs = logits.softmax(-1)
        probs = (1 - self.unimix) * probs + self.unimix * torch.ones_like(probs) / self.discrete
        eps = torch.finfo(probs.dtype).eps
        return torch.log(probs.clamp(eps, 1 - eps)).view(*logits.shape[:-2], -1)

    def _stoch(self, logits, noise=None):
        lg = logits.view(*logits.shape[:-1], -1, self.discrete)
        p = torch.softmax(lg, -1)
        if noise is None:   # the mode, no gradient
            return F.one_hot(p.argmax(-1), self.discrete).to(p)
        idx = (noise[..., None] >= p.cumsum(-1)).sum(-1).clamp(max=self.discrete - 1)
        return F.one_hot(idx, self.discrete).to(p) + p - p.detach()

    def get_initial_states(self, batch_shape):
        assert len(batch_shape) == 2   # sheeprl's _uniform_mix takes 3-D logits only
        h = torch.tanh(self.initial_recurrent_state).expand(*batch_shape, -1)
        return h, self._stoch(self._uniform_mix(self.transition_model(h)))

    def eager_dynamic(self, posterior, h, action, embed, first, noise):
        action = (1 - first) * action
        h0, z0 = self.get_initial_states(h.shape[:2])
        h = (1 - first) * h + first * h0
        posterior = posterior.view(*posterior.shape[:-2], -1)
        posterior = (1 - first) * posterior + first * z0.view_as(posterior)
        h = self.recurrent_model(torch.cat((posterior, action), -1), h)
        prior_logits = self._uniform_mix(self.transition_model(h))
        prior = self._stoch(prior_logits, noise[0])
        post_logits = self._uniform_mix(self.representation_model(torch.cat((h, embed), -1)))
        post = self._stoch(post_logits, noise[1])
        return h, post, prior, post_logits, prior_logits

    def eager_imagination(self, prior, h, actions, noise):
        h = self.recurrent_model(torch.cat((prior, actions), -1), h)
        return self._stoch(self._uniform_mix(self.transition_model(h)), noise), h


def _loop(m, embed, actions, first, noise):
    T, B = actions.shape[:2]
    post = torch.zeros(1, B, 3, 4)
    h = torch.zeros(1, B, 8)
    outs = []
    for i in range(T):
        h, post, prior, pl, ql = m.eager_dynamic(post, h, actions[i:i + 1], embed[i:i + 1],
                                                 first[i:i + 1],
                                                 (noise[0][:, i][None], noise[1][:, i][None]))
        outs.append((h, post, prior, pl, ql))
    return tuple(torch.cat([o[k] for o in outs], 0) for k in range(5))


@pytest.mark.parametrize("backend", ["fused", "ref"])
@pytest.mark.parametrize("learnable", [True, False])
def test_observe_loop_matches_peer_math(backend, learnable):
    torch.manual_seed(0)
    m = RSSMLike(learnable=learnable)
    T, B = 6, 3
    embed = torch.randn(T, B, 5, requires_grad=True)
    actions = torch.randn(T, B, 2, requires_grad=True)
    first = torch.zeros(T, B, 1)
    first[0] = 1.0
    first[3, 1] = 1.0
    noise = (torch.rand(B, T, 3), torch.rand(B, T, 3))
    inputs = [embed, actions, *m.parameters()]
    eager = _loop(m, embed, actions, first, noise)
    w = [torch.randn_like(x) for x in eager]
    ge = torch.autograd.grad(sum((x * v).sum() for x, v in zip(eager, w)), inputs,
                             allow_unused=True)
    sh.accelerate(m, backend=backend)
    fast = sh.observe(m, embed, actions, first, noise=noise)
    gf = torch.autograd.grad(sum((x * v).sum() for x, v in zip(fast, w)), inputs,
                             allow_unused=True)
    for a, b in zip(eager, fast):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    for (name, _), a, b in zip([("embed", 0), ("actions", 0), *m.named_parameters()], ge, gf):
        assert a is not None and b is not None, name
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-11, msg=name)
    # one step through the patched `dynamic`, and the imagination step
    post0, h0 = eager[1][2:3].detach(), eager[0][2:3].detach()
    n1 = (noise[0][:, :1], noise[1][:, :1])
    e = m.eager_dynamic(post0, h0, actions[3:4], embed[3:4], first[3:4],
                        (n1[0][:, 0][None], n1[1][:, 0][None]))
    f = m.dynamic(post0, h0, actions[3:4], embed[3:4], first[3:4], noise=n1)
    for a, b in zip(e, f):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    prior = eager[2][2:3].reshape(1, B, -1).detach()
    e = m.eager_imagination(prior, h0, actions[3:4], noise[0][:, 0][None])
    f = m.imagination(prior, h0, actions[3:4], noise=noise[0][:, :1])
    for a, b in zip(e, f):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    ga = torch.autograd.grad(e[1].sum() + (e[0] * w[1][:1]).sum(),
                             m.recurrent_model.rnn.linear.weight)
    gb = torch.autograd.grad(f[1].sum() + (f[0] * w[1][:1]).sum(),
                             m.recurrent_model.rnn.linear.weight)
    torch.testing.assert_close(gb, ga, rtol=1e-10, atol=1e-11)
    sh.restore(m)
    assert "dynamic" not in m.__dict__


def test_parameters_in_place_and_refusals():
    torch.manual_seed(1)
    m = RSSMLike()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    keys = list(m.state_dict())
    sh.accelerate(m)
    assert list(m.state_dict()) == keys
    T, B = 3, 2
    out = sh.observe(m, torch.randn(T, B, 5), torch.randn(T, B, 2), torch.ones(T, B, 1))
    out[0].sum().backward()
    assert m.recurrent_model.rnn.linear.weight.grad is not None
    assert m.initial_recurrent_state.grad is not None
    opt.step()
    sh.restore(m)
    m2 = RSSMLike()
    m2.recurrent_model.rnn.linear = nn.Linear(6 + 8, 24, bias=True)
    with pytest.raises(UnsupportedPeerConfig, match="bias"):
        sh.accelerate(m2)
    m3 = RSSMLike()
    m3.transition_model._model = nn.Sequential(*list(m3.transition_model._model)[:3],
                                               nn.Linear(6, 6), nn.SiLU(), nn.Linear(6, 12))
    with pytest.raises(UnsupportedPeerConfig, match="transition_model"):
        sh.accelerate(m3)
    dec = type("DecoupledRSSM", (RSSMLike,), {})()
    with pytest.raises(UnsupportedPeerConfig, match="decoupled"):
        sh.accelerate(dec)


def test_compute_lambda_values_drop_in():
    torch.manual_seed(2)
    T, N = 7, 4
    r, v = torch.randn(T, N, 1, requires_grad=True), torch.randn(T, N, 1, requires_grad=True)
    c = (0.99 * torch.rand(T, N, 1)).requires_grad_()

    def peer(rewards, values, continues, lmbda=0.95):
        vals = [values[-1:]]
        interm = rewards + continues * values * (1 - lmbda)
        for t in reversed(range(len(continues))):
            vals.append(interm[t] + continues[t] * lmbda * vals[-1])
        return torch.cat(list(reversed(vals))[:-1])

    ref = peer(r, v, c, 0.9)
    got = sh.compute_lambda_values(r, v, c, 0.9)
    assert got.shape == ref.shape == (T, N, 1)
    torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-13)
    w = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((ref * w).sum(), [r, v, c]),
                    torch.autograd.grad((got * w).sum(), [r, v, c])):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    mod = types.ModuleType("dreamer_v3")
    mod.compute_lambda_values = peer
    sh.install(mod)
    assert mod.compute_lambda_values is sh.compute_lambda_values
    sh.uninstall(mod)
    assert mod.compute_lambda_values is peer
