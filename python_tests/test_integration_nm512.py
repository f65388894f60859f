"""dreamer_fast.integrations.nm512 against modules laid out as NM512/dreamerv3-torch's
networks.RSSM (parameter names and shapes of its published layout, written here), and
an eager step-by-step run of that peer's published math with the same noise, float64."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dreamer_fast.integrations import UnsupportedPeerConfig, nm512
from dreamer_fast.integrations._common import spec_supports

# every test here runs with float64 as torch's default dtype (conftest.float64_default)
pytestmark = pytest.mark.usefixtures("float64_default")



# --------------------------------------------------------------------------------------
# A module with dreamerv3-torch's RSSM layout, and that peer's math step by step
# --------------------------------------------------------------------------------------

class PeerGRU(nn.Module):
    """Layout of dreamerv3-torch's networks.GRUCell: layers.GRU_linear [3D, U + D] over
    cat(x, h), optional layers.GRU_norm."""

    def __init__(self, inp, size, norm=True, update_bias=-1):
        super().__init__()
        self._size, self._act, self._update_bias = size, torch.tanh, update_bias
        self.layers = nn.Sequential()
        self.layers.add_module("GRU_linear", nn.Linear(inp + size, 3 * size, bias=False))
        if norm:
            self.layers.add_module("GRU_norm", nn.LayerNorm(3 * size, eps=1e-3))

    def forward(self, x, state):
        h = state[0]
        r, c, u = self.layers(torch.cat([x, h], -1)).split(self._size, -1)
        r = torch.sigmoid(r)
        c = self._act(r * c)
        u = torch.sigmoid(u + self._update_bias)
        out = u * c + (1 - u) * h
        return out, [out]


def _dense(fan_in, out, norm, act):
    layers = [nn.Linear(fan_in, out, bias=False)]
    if norm:
        layers.append(nn.LayerNorm(out, eps=1e-3))
    return nn.Sequential(*layers, act())


class PeerRSSM(nn.Module):
    """Attributes and parameters as dreamerv3-torch's networks.RSSM."""

    def __init__(self, stoch=3, deter=8, hidden=6, discrete=4, act=nn.SiLU, norm=True,
                 mean_act="none", std_act="softplus", min_std=0.1, unimix=0.01,
                 initial="learned", num_actions=2, embed=5, rec_depth=1):
        super().__init__()
        self._stoch, self._deter, self._hidden = stoch, deter, hidden
        self._min_std, self._rec_depth, self._discrete = min_std, rec_depth, discrete
        self._mean_act, self._std_act, self._unimix_ratio = mean_act, std_act, unimix
        self._initial, self._num_actions, self._embed = initial, num_actions, embed
        self._device = "cpu"
        z = stoch * discrete if discrete else stoch
        stats = stoch * discrete if discrete else 2 * stoch
        self._img_in_layers = _dense(z + num_actions, hidden, norm, act)
        self._cell = PeerGRU(hidden, deter, norm=norm)
        self._img_out_layers = _dense(deter, hidden, norm, act)
        self._obs_out_layers = _dense(deter + embed, hidden, norm, act)
        self._imgs_stat_layer = nn.Linear(hidden, stats)
        self._obs_stat_layer = nn.Linear(hidden, stats)
        if initial == "learned":
            self.W = nn.Parameter(torch.zeros(1, deter))
        with torch.no_grad():   # non-trivial values everywhere (norm gains, W)
            for p in self.parameters():
                p.add_(0.4 * torch.randn_like(p))

    # --- the peer's math, written out, with explicit noise ---------------------------

    def stats(self, name, x):
        x = (self._imgs_stat_layer if name == "ims" else self._obs_stat_layer)(x)
        if self._discrete:
            return {"logit": x.reshape(*x.shape[:-1], self._stoch, self._discrete)}
        mean, std = x.split(self._stoch, -1)
        mean = {"none": mean, "tanh5": 5.0 * torch.tanh(mean / 5.0)}[self._mean_act]
        std = {"softplus": F.softplus(std), "abs": torch.abs(std + 1),
               "sigmoid": torch.sigmoid(std), "sigmoid2": 2 * torch.sigmoid(std / 2)
               }[self._std_act]
        return {"mean": mean, "std": std + self._min_std}

    def probs(self, logit):
        p = torch.softmax(logit, -1)
        return p * (1 - self._unimix_ratio) + self._unimix_ratio / p.shape[-1]

    def sample(self, stats, noise):
        if not self._discrete:
            return stats["mean"] + stats["std"] * noise
        p = self.probs(stats["logit"])
        idx = (noise[..., None] >= p.cumsum(-1)).sum(-1).clamp(max=self._discrete - 1)
        return F.one_hot(idx, self._discrete).to(p.dtype) + p - p.detach()

    def mode(self, stats):
        if not self._discrete:
            return stats["mean"]
        lp = torch.log(self.probs(stats["logit"]))
        lp = lp - lp.logsumexp(-1, keepdim=True)
        return F.one_hot(lp.argmax(-1), self._discrete).detach() + lp - lp.detach()

    def initial(self, batch):
        z = torch.zeros
        state = {"deter": z(batch, self._deter)}
        if self._discrete:
            state.update(logit=z(batch, self._stoch, self._discrete),
                         stoch=z(batch, self._stoch, self._discrete))
        else:
            state.update(mean=z(batch, self._stoch), std=z(batch, self._stoch),
                         stoch=z(batch, self._stoch))
        if self._initial == "learned":
            state["deter"] = torch.tanh(self.W).repeat(batch, 1)
            state["stoch"] = self.mode(self.stats("ims", self._img_out_layers(state["deter"])))
        return {k: state[k] for k in ("stoch", "deter", *[k for k in state
                                                           if k not in ("stoch", "deter")])}

    def eager_img_step(self, state, action, noise, sample=True):
        stoch = state["stoch"]
        if self._discrete:
            stoch = stoch.reshape(*stoch.shape[:-2], -1)
        x = self._img_in_layers(torch.cat([stoch, action], -1))
        deter = self._cell(x, [state["deter"]])[1][0]
        stats = self.stats("ims", self._img_out_layers(deter))
        return {"stoch": self.sample(stats, noise) if sample else self.mode(stats),
                "deter": deter, **stats}

    def eager_obs_step(self, state, action, embed, first, noise, sample=True):
        if state is None or bool((first == 1).all()):
            state, action = self.initial(len(first)), torch.zeros_like(action)
        elif bool(first.any()):
            f = first[:, None]
            action = action * (1.0 - f)
            init = self.initial(len(first))
            state = {k: v * (1.0 - f.reshape(f.shape + (1,) * (v.dim() - 2)))
                     + init[k] * f.reshape(f.shape + (1,) * (v.dim() - 2))
                     for k, v in state.items()}
        prior = self.eager_img_step(state, action, noise[0])
        stats = self.stats("obs", self._obs_out_layers(torch.cat([prior["deter"], embed], -1)))
        stoch = self.sample(stats, noise[1]) if sample else self.mode(stats)
        return {"stoch": stoch, "deter": prior["deter"], **stats}, prior

    def eager_observe(self, embed, action, first, state, noise):
        posts, priors = [], []
        for t in range(embed.shape[1]):
            state, prior = self.eager_obs_step(state, action[:, t], embed[:, t], first[:, t],
                                               (noise[0][:, t], noise[1][:, t]))
            posts.append(state)
            priors.append(prior)
        stack = lambda xs: {k: torch.stack([x[k] for x in xs], 1) for k in xs[0]}  # noqa
        return stack(posts), stack(priors)


def _noise(m, *shape):
    s = (*shape, m._stoch)
    return torch.rand(s) if m._discrete else torch.randn(s)


def _grads(out, inputs):
    loss = sum((v * torch.randn_like(v)).sum() for d in out for v in d.values())
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def _check_observe(m, B=3, T=7, state=None, first=None, backend="auto", seed=0):
    torch.manual_seed(seed)
    embed = torch.randn(B, T, m._embed, requires_grad=True)
    action = torch.randn(B, T, m._num_actions, requires_grad=True)
    if first is None:
        first = torch.zeros(B, T)
        first[1, 3] = 1.0          # a partial reset
        first[:, 5] = 1.0          # an all-first step
    noise = (_noise(m, B, T), _noise(m, B, T))
    inputs = [embed, action, *m.parameters()]
    eager = m.eager_observe(embed, action, first, state, noise)
    torch.manual_seed(seed + 1)
    g_eager = _grads(eager, inputs)
    fast = nm512.accelerate(m, backend=backend)
    try:
        out = m.observe(embed, action, first, state, noise=noise)
        torch.manual_seed(seed + 1)
        g_fast = _grads(out, inputs)
    finally:
        nm512.restore(m)
    assert fast is m
    for e, o in zip(eager, out):
        assert list(e) == list(o)
        for k in e:
            assert o[k].shape == e[k].shape, k
            torch.testing.assert_close(o[k], e[k], rtol=1e-12, atol=1e-12, msg=k)
    for (name, _), ge, gf in zip([("embed", 0), ("action", 0), *m.named_parameters()],
                                 g_eager, g_fast):
        assert ge is not None and gf is not None, name
        torch.testing.assert_close(gf, ge, rtol=1e-10, atol=1e-11, msg=name)


@pytest.mark.parametrize("backend", ["fused", "ref"])
@pytest.mark.parametrize("initial", ["learned", "zeros"])
def test_observe_matches_peer_math_categorical(backend, initial):
    torch.manual_seed(1)
    _check_observe(PeerRSSM(initial=initial), backend=backend)


@pytest.mark.parametrize("initial", ["learned", "zeros"])
def test_observe_matches_peer_math_gaussian(initial):
    torch.manual_seed(2)
    _check_observe(PeerRSSM(discrete=False, initial=initial))


def test_observe_from_a_given_state_with_a_reset_at_the_first_step():
    torch.manual_seed(3)
    m = PeerRSSM()
    B = 3
    state = m.initial(B)
    state = {k: (v + 0.3 * torch.randn_like(v)).detach() for k, v in state.items()}
    first = torch.zeros(B, 6)
    first[0, 0] = first[2, 0] = 1.0
    first[1, 4] = 1.0
    _check_observe(m, B=B, T=6, state=state, first=first)


def test_observe_without_resets_is_one_call():
    torch.manual_seed(4)
    m = PeerRSSM()
    _check_observe(m, first=torch.zeros(3, 7))


@pytest.mark.parametrize("backend", ["fused", "auto"])   # auto: small single steps on ref
def test_steps_and_imagination_match_peer_math(backend):
    torch.manual_seed(5)
    m = PeerRSSM()
    B, H = 4, 5
    state = {k: v.detach() for k, v in m.initial(B).items()}
    state["stoch"] = F.one_hot(torch.randint(0, 4, (B, 3)), 4).double()
    action = torch.randn(B, H, 2, requires_grad=True)
    embed = torch.randn(B, 5)
    noise = _noise(m, B, H)
    # eager imagination: img_step per step
    s, eager = state, []
    for t in range(H):
        s = m.eager_img_step(s, action[:, t], noise[:, t])
        eager.append(s)
    eager = {k: torch.stack([x[k] for x in eager], 1) for k in eager[0]}
    on = [action, *m.parameters()]
    torch.manual_seed(9)
    ge = _grads([eager], on)
    nm512.accelerate(m, backend=backend)
    fast = m.imagine_with_action(action, state, noise=noise)
    torch.manual_seed(9)
    gf = _grads([fast], on)
    for k in eager:
        torch.testing.assert_close(fast[k], eager[k], rtol=1e-12, atol=1e-12)
    for a, b in zip(ge, gf):
        if a is None:
            assert b is None or not b.abs().any()
        else:
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-11)
    # img_step, sample and mode; obs_step with None state and sample=False
    for sample in (True, False):
        e = m.eager_img_step(state, action[:, 0], noise[:, 0], sample=sample)
        f = m.img_step(state, action[:, 0], sample, noise=noise[:, 0])
        for k in e:
            torch.testing.assert_close(f[k], e[k], rtol=1e-12, atol=1e-12)
    first = torch.tensor([1.0, 0.0, 0.0, 1.0])
    for prev in (None, state):
        n2 = (noise[:, 0], noise[:, 1])
        e_post, e_prior = m.eager_obs_step(prev, action[:, 0], embed, first, n2, sample=False)
        f_post, f_prior = m.obs_step(prev, action[:, 0], embed, first, sample=False, noise=n2)
        for e, f in ((e_post, f_post), (e_prior, f_prior)):
            for k in e:
                torch.testing.assert_close(f[k], e[k], rtol=1e-12, atol=1e-12)
        gp = torch.autograd.grad(f_post["stoch"].sum(), m._obs_stat_layer.weight)[0]
        ge_ = torch.autograd.grad(e_post["stoch"].sum(), m._obs_stat_layer.weight)[0]
        torch.testing.assert_close(gp, ge_)
    # the peer's policy starts with obs_step(None, None, embed, is_first)
    n2 = (noise[:, 0], noise[:, 1])
    e_post, _ = m.eager_obs_step(None, torch.zeros(B, 2), embed, first, n2)
    f_post, _ = m.obs_step(None, None, embed, first, noise=n2)
    for k in e_post:
        torch.testing.assert_close(f_post[k], e_post[k], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="prev_action"):
        m.obs_step(state, None, embed, first)
    nm512.restore(m)


def test_parameters_stay_in_place_optimizer_and_state_dict():
    torch.manual_seed(6)
    m = PeerRSSM()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)   # built before accelerate, as the peer does
    keys = list(m.state_dict())
    nm512.accelerate(m)
    assert list(m.state_dict()) == keys
    params = nm512.params_of(m)
    # each flat tensor is one of the module's parameters or a view of it (W [1, D])
    assert all(any(p is q or p._base is q for q in m.parameters()) for p in params)
    assert len(params) == len(list(m.parameters()))
    B, T = 2, 4
    embed, action = torch.randn(B, T, 5), torch.randn(B, T, 2)
    first = torch.zeros(B, T)
    noise = (_noise(m, B, T), _noise(m, B, T))
    post, _ = m.observe(embed, action, first, noise=noise)
    post["deter"].sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    before = m._cell.layers.GRU_linear.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, m._cell.layers.GRU_linear.weight)
    # the next call sees the stepped weights: equal to the peer's math with them
    new, _ = m.observe(embed, action, first, noise=noise)
    ref, _ = m.eager_observe(embed, action, first, None, noise)
    torch.testing.assert_close(new["deter"], ref["deter"], rtol=1e-12, atol=1e-12)
    # a checkpoint loads into the accelerated module and is used
    other = PeerRSSM()
    m.load_state_dict(other.state_dict())
    new, _ = m.observe(embed, action, first, noise=noise)
    ref, _ = other.eager_observe(embed, action, first, None, noise)
    torch.testing.assert_close(new["deter"], ref["deter"], rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="already accelerated"):
        nm512.accelerate(m)
    nm512.restore(m)
    assert "observe" not in m.__dict__


def test_drawn_noise_gives_one_hot_samples():
    torch.manual_seed(7)
    m = nm512.accelerate(PeerRSSM())
    post, prior = m.observe(torch.randn(2, 3, 5), torch.randn(2, 3, 2), torch.zeros(2, 3))
    for s in (post["stoch"], prior["stoch"]):
        torch.testing.assert_close(s.sum(-1), torch.ones(2, 3, 3))
        assert ((s - 0.5).abs() > 0.49).all()


@pytest.mark.parametrize("option,kw,field", [
    ("norm", dict(norm=False), "cell_norm"),
    ("std_act", dict(discrete=False, std_act="sigmoid2"), "std_act"),
    ("std_act", dict(discrete=False, std_act="abs"), "std_act"),
    ("std_act", dict(discrete=False, std_act="sigmoid"), "std_act"),
    ("mean_act", dict(discrete=False, mean_act="tanh5"), "mean_act"),
])
def test_options_the_ops_gained_later_match_or_are_refused(option, kw, field):
    torch.manual_seed(8)
    m = PeerRSSM(**kw)
    if spec_supports(field):
        _check_observe(m)
    else:
        with pytest.raises(UnsupportedPeerConfig, match=option):
            nm512.accelerate(m)
        assert "observe" not in m.__dict__


def test_refusals_name_the_option():
    with pytest.raises(UnsupportedPeerConfig, match="rec_depth"):
        nm512.accelerate(PeerRSSM(rec_depth=2))
    with pytest.raises(UnsupportedPeerConfig, match="activation"):
        nm512.accelerate(PeerRSSM(act=nn.Softplus))
    m = PeerRSSM()
    m._cell._act = torch.relu
    with pytest.raises(UnsupportedPeerConfig, match="GRUCell act"):
        nm512.accelerate(m)
    r2 = nn.Module()
    r2._deter_net, r2._img_net = nn.Linear(1, 1), nn.Sequential()
    with pytest.raises(UnsupportedPeerConfig, match="gumbel_softmax"):
        nm512.accelerate(r2)


# --------------------------------------------------------------------------------------
# λ-return
# --------------------------------------------------------------------------------------

def _peer_lambda_return(reward, value, pcont, bootstrap, lam):
    """dreamerv3-torch's tools.lambda_return math for [T, N, 1], written out."""
    nxt = torch.cat([value[1:], bootstrap[None]], 0)
    inputs = reward + pcont * nxt * (1 - lam)
    last, out = bootstrap, []
    for t in reversed(range(reward.shape[0])):
        last = inputs[t] + pcont[t] * lam * last
        out.append(last)
    return torch.stack(out[::-1], 0)   # [T, N, 1]


def test_lambda_return_drop_in_and_full_speed_install():
    torch.manual_seed(10)
    T, N = 6, 5
    r, v = torch.randn(T, N, 1, requires_grad=True), torch.randn(T, N, 1, requires_grad=True)
    c = torch.rand(T, N, 1, requires_grad=True)
    b = torch.randn(N, 1, requires_grad=True)
    ref = _peer_lambda_return(r, v, c, b, 0.95)
    out = nm512.lambda_return(r, v, c, b, 0.95, 0)
    assert type(out) is tuple and len(out) == N and out[0].shape == (T, 1)
    got = torch.stack(out, dim=1)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * w).sum(), [r, v, c, b])
    g_got = torch.autograd.grad((got * w).sum(), [r, v, c, b])
    for a, bb in zip(g_ref, g_got):
        torch.testing.assert_close(bb, a, rtol=1e-12, atol=1e-12)
    # a number pcont and a None bootstrap, as the peer allows
    ref0 = _peer_lambda_return(r, v, 0.9 * torch.ones_like(r), torch.zeros(N, 1), 0.5)
    torch.testing.assert_close(torch.stack(nm512.lambda_return(r, v, 0.9, None, 0.5, 0), 1),
                               ref0, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="axis"):
        nm512.lambda_return(r, v, c, b, 0.95, 1)
    with pytest.raises(ValueError, match=r"\[T, N, 1\]"):
        nm512.lambda_return(r[..., 0], v[..., 0], c[..., 0], b[..., 0], 0.95, 0)

    tools = types.ModuleType("tools")
    tools.lambda_return = _peer_lambda_return
    models = types.ModuleType("models")
    models.torch = torch
    nm512.install(tools, models)
    fast = tools.lambda_return(r, v, c, b, 0.95, 0)
    assert isinstance(fast, nm512.LambdaReturns) and len(fast) == N
    stacked = models.torch.stack(fast, dim=1)
    assert stacked is fast.stacked
    torch.testing.assert_close(stacked, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(models.torch.stack(fast, dim=0), ref.transpose(0, 1))
    torch.testing.assert_close(fast[2], ref[:, 2])
    assert models.torch.cat is torch.cat and models.torch.ones_like is torch.ones_like
    x = [torch.ones(2), torch.zeros(2)]
    torch.testing.assert_close(models.torch.stack(x, 1), torch.stack(x, 1))
    nm512.uninstall(tools, models)
    assert tools.lambda_return is _peer_lambda_return and models.torch is torch


# --------------------------------------------------------------------------------------
# The benchmark's cases, on a checkout laid out as the peer's (networks.py, tools.py)
# --------------------------------------------------------------------------------------

_FAKE_NETWORKS = '''
import torch
from torch import nn
from test_integration_nm512 import PeerRSSM, _noise


class RSSM(PeerRSSM):
    """The peer's constructor signature and its eager methods, over the test's layout."""

    def __init__(self, stoch, deter, hidden, rec_depth, discrete, act, norm, mean_act,
                 std_act, min_std, unimix_ratio, initial, num_actions, embed, device):
        super().__init__(stoch=stoch, deter=deter, hidden=hidden, discrete=discrete,
                         act=getattr(nn, act), norm=norm, mean_act=mean_act,
                         std_act=std_act, min_std=min_std, unimix=unimix_ratio,
                         initial=initial, num_actions=num_actions, embed=embed,
                         rec_depth=rec_depth)

    def observe(self, embed, action, is_first, state=None):
        B, T = action.shape[:2]
        return self.eager_observe(embed, action, is_first, state,
                                  (_noise(self, B, T), _noise(self, B, T)))

    def img_step(self, state, action, sample=True):
        return self.eager_img_step(state, action, _noise(self, action.shape[0]), sample)

    def imagine_with_action(self, action, state):
        outs = []
        for t in range(action.shape[1]):
            state = self.img_step(state, action[:, t])
            outs.append(state)
        return {k: torch.stack([o[k] for o in outs], 1) for k in outs[0]}
'''

_FAKE_TOOLS = '''
from test_integration_nm512 import _peer_lambda_return


def lambda_return(reward, value, pcont, bootstrap, lambda_, axis):
    return tuple(_peer_lambda_return(reward, value, pcont, bootstrap, lambda_).unbind(1))
'''


def test_bench_cases_run_on_a_checkout_with_the_peer_layout(tmp_path, capsys):
    import sys

    from dreamer_fast.bench import integration_cases
    from dreamer_fast.cli import main

    (tmp_path / "networks.py").write_text(_FAKE_NETWORKS)
    (tmp_path / "tools.py").write_text(_FAKE_TOOLS)
    for name in ("networks", "tools"):
        sys.modules.pop(name, None)
    try:
        cases = integration_cases.nm512_cases(
            tmp_path, torch.device("cpu"), torch.float32, B=2, T=5, N=6, H=3, embed=5,
            actions=2, deter=8, hidden=6, stoch=3, classes=4)
        names = [c[0] for c in cases]
        assert names == ["observe B2xT5", "imagine_with_action N=6 H=3", "img_step x3 N=6",
                         "lambda_return T=15 N=6"]
        for _, _, cands in cases:
            assert "fast" in cands and "eager" in cands
            for prepare in cands.values():
                prepare()()
    finally:
        for name in ("networks", "tools"):
            sys.modules.pop(name, None)
    with pytest.raises(SystemExit, match="--peer and --path"):
        main(["bench", "--suite", "integrations"])
    with pytest.raises(SystemExit, match="not a dreamerv3-torch checkout"):
        main(["bench", "--suite", "integrations", "--peer", "nm512", "--path",
              str(tmp_path / "nothing")])
