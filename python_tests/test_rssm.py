"""Tests of the rssm family: the sequence ops ``rssm_observe`` / ``rssm_imagine``
(functional, over flat tensors and specs) against their references, the specs, the ops as
torch.library ops, and the :class:`dreamer_fast.nn.RSSM` module on them.

* Fast vs reference through the functional API in float64 (every cell × latent kind,
  resets mid-sequence, T = 1, given and actor-drawn actions, ``feat_out``): values and
  the gradients of every parameter and input.
* The module: fused vs reference backend over a 64-step observe and a 15-step
  imagination (values and gradients), its reference is the functional one, KL losses.
* The raw ops: their Meta kernels (the C++ op bodies, launching nothing on the meta
  device) give FakeTensor every output shape, so ``opcheck`` passes and the fused
  ``RSSM.observe`` / ``imagine`` trace under ``torch.compile(fullgraph=True)`` with
  static shapes (``dynamic=False``) and give the eager numbers. No output shares memory
  with an input or with another output, at every batch and sequence length including 1
  (an aliased input would let the fused ``obs_step`` zero the caller's ``action`` rows
  in place where ``is_first``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributions as td

from conftest import DEVICES, assert_both_raise
from dreamer_fast.bench.timing import matmul_precision
from dreamer_fast.nn import RSSM, Actor, draw_imagine_noise, imagine, imagine_ref
from dreamer_fast.ops import (ActorSpec, DenseSpec, RSSMSpec, rssm_imagine, rssm_imagine_ref,
                              rssm_observe, rssm_observe_ref)
from dreamer_fast.ops._native_spec import native_actor_spec, native_rssm_spec
from dreamer_fast.ops.rssm import rssm_initial
from rssm_variants import VARIANTS, variant

CELLS = ("gru", "ln_gru", "block_gru")
LATENTS = {"cat": 4, "gauss": None}
HEADS = ("tanh_normal", "bounded_normal", "categorical")


# ==== the functional ops: fast vs reference ============================================

F64 = torch.float64


def _spec_model(cell: str, classes: int | None, dtype=F64, **kw) -> RSSM:
    """A small seeded RSSM whose spec and flat parameters feed the functional ops: two
    prior and posterior hidden layers, two block-GRU hidden layers."""
    torch.manual_seed(0)
    return RSSM(stoch=3, classes=classes, deter=12, hidden=10, action_size=2, embed_size=5,
                cell=cell, norm="rms" if cell == "block_gru" else "layer",
                act="silu" if cell == "block_gru" else "elu", blocks=3, dynlayers=2,
                img_layers=2, obs_layers=2, dtype=dtype, backend="fused", **kw)


def _leaves(xs):
    return [x.detach().clone().requires_grad_() for x in xs]


def _observe_inputs(spec: RSSMSpec, B: int, T: int, dtype=F64):
    g = torch.Generator().manual_seed(10 * B + T)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    keep = torch.ones(B, T, dtype=dtype)
    keep[:, 0] = 0
    if T > 2:
        keep[0, T // 2] = 0  # a reset mid-sequence
    u = lambda: torch.rand(B, T, spec.stoch, generator=g, dtype=dtype)  # noqa: E731
    if spec.classes is None:
        u = lambda: r(B, T, spec.stoch)  # noqa: E731
    return dict(embed=r(B, T, spec.embed_size), action=r(B, T, spec.action_size), keep=keep,
                deter=r(B, spec.deter), stoch=r(B, spec.flat_stoch).tanh(), prior_noise=u(),
                post_noise=u())


def _weighted_loss(outs, seed: int):
    """A scalar reading every non-empty output through fixed random weights."""
    g = torch.Generator().manual_seed(seed)
    loss = 0
    for o in outs:
        if o.numel():
            loss = loss + (o * torch.randn(o.shape, generator=g, dtype=o.dtype)).tanh().sum()
    return loss


def _run_and_grad(fn, params, kwargs, grad_names):
    """``fn`` on fresh leaves; its outputs and the gradients of the params and the
    ``grad_names`` inputs of a weighted loss on all outputs."""
    params = _leaves(params)
    kwargs = dict(kwargs)
    for n in grad_names:
        kwargs[n] = kwargs[n].detach().clone().requires_grad_()
    outs = fn(params, **kwargs)
    wrt = params + [kwargs[n] for n in grad_names]
    grads = torch.autograd.grad(_weighted_loss(outs, 0), wrt, allow_unused=True)
    return outs, grads


def _assert_same(fast, ref, what, rtol=1e-10, atol=1e-11):
    assert len(fast) == len(ref)
    for i, (a, b) in enumerate(zip(fast, ref)):
        assert (a is None) == (b is None), f"{what}[{i}]: one is None"
        if a is not None:
            assert a.shape == b.shape, f"{what}[{i}]: {tuple(a.shape)} != {tuple(b.shape)}"
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=f"{what}[{i}]")


@pytest.mark.parametrize("B,T", [(3, 5), (2, 1)])
@pytest.mark.parametrize("latent", list(LATENTS))
@pytest.mark.parametrize("cell", CELLS)
def test_observe_fast_matches_ref_values_and_gradients(cell, latent, B, T):
    m = _spec_model(cell, LATENTS[latent])
    spec = m.spec()
    kw = dict(spec=spec, **_observe_inputs(spec, B, T))
    names = ("embed", "action", "deter", "stoch")
    fast, g_fast = _run_and_grad(rssm_observe, m.spec_params(), kw, names)
    ref, g_ref = _run_and_grad(rssm_observe_ref, m.spec_params(), kw, names)
    _assert_same(fast, ref, "outputs")
    assert all(g is not None for g in g_ref), "every parameter and input gets a gradient"
    _assert_same(g_fast, g_ref, "grads", rtol=1e-9, atol=1e-10)
    if LATENTS[latent] is None:
        assert fast[3].shape == (B, T, spec.stoch)
    else:
        assert fast[3].shape == ref[3].shape == (0,)


def _actor(spec: RSSMSpec, head: str, dtype=F64) -> Actor:
    torch.manual_seed(1)
    return Actor(spec.feat_size, spec.action_size, head=head, units=8, layers=2, dtype=dtype,
                 backend="fused")


def _imagine_inputs(spec, N, H, actor=None, dtype=F64):
    g = torch.Generator().manual_seed(10 * N + H)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g, dtype=dtype)  # noqa: E731
    kw = dict(deter=r(N, spec.deter), stoch=r(N, spec.flat_stoch).tanh(),
              stoch_noise=u(N, H, spec.stoch) if spec.classes else r(N, H, spec.stoch),
              horizon=H)
    if actor is None:
        kw.update(actions=r(N, H, spec.action_size).tanh(), action_noise=None)
    else:
        a = actor.spec()
        kw.update(actions=None, actor_spec=a,
                  action_noise=(u if a.head == "categorical" else r)(N, H, a.noise_size))
    return kw


@pytest.mark.parametrize("mode,feat_out", [("given", False), ("given", True),
                                           ("tanh_normal", True), ("bounded_normal", False),
                                           ("categorical", True)])
@pytest.mark.parametrize("latent", list(LATENTS))
@pytest.mark.parametrize("cell", CELLS)
def test_imagine_fast_matches_ref_values_and_gradients(cell, latent, mode, feat_out):
    m = _spec_model(cell, LATENTS[latent])
    spec = m.spec()
    actor = None if mode == "given" else _actor(spec, mode)
    N, H = (4, 3) if feat_out else (3, 1)
    kw = dict(spec=spec, feat_out=feat_out, **_imagine_inputs(spec, N, H, actor))
    names = ("deter", "stoch") + (("actions",) if actor is None else ())
    results = []
    for fn in (rssm_imagine, rssm_imagine_ref):
        if actor is None:
            results.append(_run_and_grad(fn, m.spec_params(), kw, names))
            continue
        # the actor parameters are leaves too: appended to the RSSM's, split back here
        n = len(m.spec_params())

        def call(params, **k):
            return fn(params[:n], actor_params=params[n:], **k)
        results.append(_run_and_grad(call, m.spec_params() + actor.spec_params(), kw, names))
    (fast, g_fast), (ref, g_ref) = results
    _assert_same(fast, ref, "outputs")
    obs = spec.param_slices()["obs_out"]
    for i, (a, b) in enumerate(zip(g_fast, g_ref)):
        posterior = obs.start <= i < obs.stop
        assert (a is None) == (b is None) == posterior, (
            f"grad {i}: the posterior MLP (only) takes no part in imagination")
    _assert_same(g_fast, g_ref, "grads", rtol=1e-9, atol=1e-10)
    deter, stoch, a, b, action, feat = fast
    assert action.shape == (N, H, spec.action_size)
    if feat_out:
        assert deter.shape == stoch.shape == (0,) and feat.shape == (N, H + 1, spec.feat_size)
        torch.testing.assert_close(feat[:, 0], torch.cat([kw["stoch"], kw["deter"]], -1),
                                   rtol=0, atol=0)
    else:
        assert deter.shape == (N, H, spec.deter) and feat.shape == (0,)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("cfg", ["v1-gru-gauss", "v3-block-cat"])
def test_functional_ref_is_the_module_rollout_exactly(cfg, head):
    """rssm_imagine_ref with the actor (its MLP and action head) gives the module loop
    ``imagine_ref`` (Actor + RSSM.img_step) bit for bit in float64."""
    torch.manual_seed(0)
    rssm = RSSM(stoch=4, deter=16, hidden=12, action_size=3, embed_size=5, dtype=F64,
                backend="ref", **{k: v for k, v in CONFIGS[cfg].items()})
    actor = Actor(rssm.feat_size, 3, head=head, units=10, layers=2, dtype=F64, backend="ref")
    start = {k: v + 0.3 * torch.randn_like(v) for k, v in rssm.initial(5).items()}
    start["stoch"] = start["stoch"].tanh()
    noise = draw_imagine_noise(rssm, actor, 5, 4, like=start["deter"])
    want = imagine_ref(rssm, actor, start, 4, noise=noise)
    _, _, a, b, action, feat = rssm_imagine_ref(
        rssm.spec_params(), rssm.spec(), start["deter"], rssm.flatten_stoch(start["stoch"]),
        None, noise["action"], noise["stoch"], 4, actor.spec_params(), actor.spec(),
        feat_out=True)
    assert torch.equal(feat, want["feat"]) and torch.equal(action, want["action"])
    got = rssm.state_from_flat(None, a, a, b)
    for k in ("logit",) if rssm.classes else ("mean", "std"):
        assert torch.equal(got[k], want[k][:, 1:]), k


def test_float32_fast_close_to_ref():
    m = _spec_model("ln_gru", 4, dtype=torch.float32)
    kw = _observe_inputs(m.spec(), 3, 6, dtype=torch.float32)
    fast = rssm_observe(m.spec_params(), m.spec(), **kw)
    ref = rssm_observe_ref(m.spec_params(), m.spec(), **kw)
    _assert_same(fast, ref, "outputs", rtol=1e-5, atol=1e-6)


# ---- argument checks, shared by fast and reference ---------------------------------------

@pytest.mark.parametrize("edit,exc,match", [
    (lambda kw: kw.update(spec="ln_gru"), TypeError, "`spec` must be a RSSMSpec"),
    (lambda kw: kw.update(embed=kw["embed"][0]), ValueError,
     r"`embed` must be 3-D \[B, T, E\]"),
    (lambda kw: kw.update(action=kw["action"][:, :, :1]), ValueError,
     r"`action` must have shape \[B, T, A\] = \(2, 3, 2\)"),
    (lambda kw: kw.update(keep=kw["keep"][:, :2]), ValueError,
     r"`keep` must have shape \[B, T\]"),
    (lambda kw: kw.update(stoch=kw["stoch"][:, :3]), ValueError,
     r"`stoch` must have shape \[B, Z\]"),
    (lambda kw: kw.update(post_noise=kw["post_noise"].float()), TypeError,
     "`post_noise` has dtype"),
    (lambda kw: kw.update(params=kw["params"][:-1]), ValueError,
     r"`params` must hold 22 tensors for this spec \(img_in\[0\].weight, "),
    (lambda kw: kw.update(params=[kw["params"][0][:, :1], *kw["params"][1:]]), ValueError,
     r"`params\[0\]` \(img_in\[0\].weight\) must have shape \(10, 14\)"),
    (lambda kw: kw.update(params=[p.float() for p in kw["params"]]), TypeError,
     r"`params\[0\]` has dtype torch.float32"),
])
def test_observe_arguments_are_named(edit, exc, match):
    m = _spec_model("ln_gru", 4)
    kw = dict(params=m.spec_params(), spec=m.spec(), **_observe_inputs(m.spec(), 2, 3))
    edit(kw)
    assert_both_raise(rssm_observe, rssm_observe_ref, kw, exc, match)


@pytest.mark.parametrize("edit,exc,match", [
    (lambda kw, a: kw.update(horizon=0), ValueError, "`horizon` must be an int >= 1"),
    (lambda kw, a: kw.update(horizon=2), ValueError, r"`stoch_noise` must have shape \[N, H, S\]"),
    (lambda kw, a: kw.update(deter=kw["deter"][None]), ValueError, r"`deter` must be 2-D \[N, D\]"),
    (lambda kw, a: kw.update(actions=None), ValueError, "give `actions` or an actor"),
    (lambda kw, a: kw.update(actor_spec=a.spec(), actor_params=a.spec_params()), ValueError,
     "must be left out when `actions` are given"),
    (lambda kw, a: kw.update(action_noise=kw["stoch_noise"]), ValueError,
     "`action_noise` must be None when `actions` are given"),
    (lambda kw, a: kw.update(actions=None, actor_spec=a.spec(), actor_params=a.spec_params()),
     ValueError, "`action_noise` is needed"),
    (lambda kw, a: kw.update(actions=None, actor_spec=a.spec(), actor_params=a.spec_params()[1:],
                             action_noise=kw["actions"]),
     ValueError, "`actor_params` must hold 8 tensors"),
    (lambda kw, a: kw.update(actions=None, actor_spec=dataclasses.replace(a.spec(), feat_size=3),
                             actor_params=a.spec_params(), action_noise=kw["actions"]),
     ValueError, r"`actor_spec.feat_size`=3"),
    (lambda kw, a: kw.update(feat_out=1), TypeError, "`feat_out` must be a bool"),
])
def test_imagine_arguments_are_named(edit, exc, match):
    m = _spec_model("block_gru", None)
    actor = _actor(m.spec(), "bounded_normal")
    kw = dict(params=m.spec_params(), spec=m.spec(), **_imagine_inputs(m.spec(), 3, 3))
    edit(kw, actor)
    assert_both_raise(rssm_imagine, rssm_imagine_ref, kw, exc, match)


# ---- the specs ---------------------------------------------------------------------------

def _rssm_spec(**change) -> RSSMSpec:
    d = DenseSpec(False, "layer", "silu")
    out = DenseSpec(True)
    kw = dict(cell="ln_gru", deter=8, stoch=2, classes=3, hidden=6, action_size=2,
              embed_size=4, img_in=(d,), img_out=(d, out), obs_out=(out,), cell_bias=False)
    return RSSMSpec(**{**kw, **change})


@pytest.mark.parametrize("change,exc,match", [
    (dict(cell="lstm"), ValueError, "RSSMSpec: `cell` must be one of"),
    (dict(deter=0), ValueError, "RSSMSpec: `deter` must be an int >= 1"),
    (dict(stoch=2.0), TypeError, "RSSMSpec: `stoch` must be an int"),
    (dict(classes=0), ValueError, "RSSMSpec: `classes` must be an int >= 1"),
    (dict(img_in=()), ValueError, "RSSMSpec: `img_in` must be exactly 1 DenseSpec"),
    (dict(img_out=()), ValueError, "RSSMSpec: `img_out` must be at least 1 DenseSpec"),
    (dict(obs_out=("dense",)), TypeError, "RSSMSpec: `obs_out` must be a tuple of DenseSpec"),
    (dict(cell_bias=True), ValueError, "RSSMSpec: `cell_bias` must be False for cell 'ln_gru'"),
    (dict(blocks=2), ValueError, "RSSMSpec: `blocks` must be 1 for cell 'ln_gru'"),
    (dict(cell="block_gru", img_in=(), blocks=3, cell_bias=True), ValueError,
     "RSSMSpec: `blocks` must be a divisor of `deter`=8"),
    (dict(cell="block_gru", cell_bias=True), ValueError, "RSSMSpec: `img_in` must be exactly 0"),
    (dict(cell_act="relu"), ValueError, "RSSMSpec: `cell_act` must be one of"),
    (dict(eps=0.0), ValueError, "RSSMSpec: `eps` must be a finite float > 0"),
    (dict(cell_eps=float("nan")), ValueError, "RSSMSpec: `cell_eps` must be a finite float"),
    (dict(unimix=1.0), ValueError, r"RSSMSpec: `unimix` must be a finite float in \[0, 1\)"),
    (dict(min_std=-1.0), ValueError, "RSSMSpec: `min_std` must be a finite float >= 0"),
    (dict(update_bias="1"), TypeError, "RSSMSpec: `update_bias` must be a float"),
    (dict(cell_norm=0), TypeError, "RSSMSpec: `cell_norm` must be a bool"),
    (dict(cell="gru", img_in=(DenseSpec(True),), cell_norm=False), ValueError,
     "RSSMSpec: `cell_norm` must be True for cell 'gru'"),
    (dict(cell="gru", cell_state_first=True), ValueError,
     "RSSMSpec: `cell_state_first` must be False for cell 'gru'"),
    (dict(std_act="exp"), ValueError, "RSSMSpec: `std_act` must be one of"),
    (dict(mean_act="tanh"), ValueError, "RSSMSpec: `mean_act` must be one of"),
    (dict(min_std_mode="max"), ValueError, "RSSMSpec: `min_std_mode` must be one of"),
    (dict(initial="random"), ValueError, "RSSMSpec: `initial` must be one of"),
    (dict(initial_stoch_grad=None), TypeError, "RSSMSpec: `initial_stoch_grad` must be a bool"),
])
def test_rssm_spec_errors_name_the_field(change, exc, match):
    with pytest.raises(exc, match=match):
        _rssm_spec(**change)


@pytest.mark.parametrize("make,exc,match", [
    (lambda: DenseSpec(1), TypeError, "DenseSpec: `has_bias` must be a bool"),
    (lambda: DenseSpec(True, norm="batch"), ValueError, "DenseSpec: `norm` must be one of"),
    (lambda: DenseSpec(True, act="relu"), ValueError, "DenseSpec: `act` must be one of"),
    (lambda: ActorSpec("gauss", 2, 8, 4, (DenseSpec(True),)), ValueError,
     "ActorSpec: `head` must be one of"),
    (lambda: ActorSpec("categorical", 0, 8, 4, (DenseSpec(True),)), ValueError,
     "ActorSpec: `action_size` must be an int >= 1"),
    (lambda: ActorSpec("categorical", 2, 8, 4, ()), ValueError,
     "ActorSpec: `layers` must be at least 1 DenseSpec"),
    (lambda: ActorSpec("bounded_normal", 2, 8, 4, (DenseSpec(True),), min_std=1.0),
     ValueError, "ActorSpec: `max_std` must be > `min_std`=1.0"),
    (lambda: ActorSpec("tanh_normal", 2, 8, 4, (DenseSpec(True),), mean_scale=0.0),
     ValueError, "ActorSpec: `mean_scale` must be a finite float > 0"),
    (lambda: ActorSpec("categorical", 2, 8, 4, (DenseSpec(True),), unimix=-0.1),
     ValueError, "ActorSpec: `unimix` must be a finite float in"),
])
def test_dense_and_actor_spec_errors_name_the_field(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_spec_layout_counts_and_names():
    spec = _rssm_spec()
    counts = spec.param_counts()
    # img_in: weight, norm weight and bias; ln_gru: 3; img_out: 3 + (weight, bias); obs_out: 2
    assert counts == {"img_in": 3, "cell": 3, "img_out": 5, "obs_out": 2, "initial": 0}
    assert spec.param_slices()["obs_out"] == slice(11, 13) and spec.param_count() == 13
    # the learned initial state: W [D] last; no LayerNorm on the cell: its weight alone
    learned = _rssm_spec(initial="learned", cell_norm=False)
    assert learned.param_counts() == {"img_in": 3, "cell": 1, "img_out": 5, "obs_out": 2,
                                      "initial": 1}
    assert learned.param_shapes()[-1] == ("initial", (8,)) and learned.param_count() == 12
    assert spec.param_names()[:4] == ["img_in[0].weight", "img_in[0].norm_weight",
                                      "img_in[0].norm_bias", "cell.weight"]
    assert dict(spec.param_shapes())["obs_out[0].weight"] == (6, 12)  # stats 2·3 from D + E
    assert spec.flat_stoch == 6 and spec.stats_size == 6 and spec.feat_size == 14
    assert isinstance(_rssm_spec(img_out=[DenseSpec(True)]).img_out, tuple)
    hash(spec)  # frozen: usable as a cache key


@pytest.mark.parametrize("cell", CELLS)
def test_module_spec_matches_its_parameters(cell):
    m = _spec_model(cell, None)
    spec, params = m.spec(), m.spec_params()
    assert [tuple(p.shape) for p in params] == [s for _, s in spec.param_shapes()]
    assert len({id(p) for p in params}) == len(params) == len(list(m.parameters()))
    names = m.spec_param_names()
    sd = m.state_dict()
    assert all(torch.equal(sd[n], p) for n, p in zip(names, params))
    assert [t is p for t, p in zip(m.spec_params_from_state_dict(m.spec_state_dict(params)),
                                   params)] == [True] * len(params)
    actor = _actor(spec, "categorical")
    a_params = actor.spec_params()
    assert [tuple(p.shape) for p in a_params] == [s for _, s in actor.spec().param_shapes()]
    assert list(actor.spec_state_dict(a_params)) == actor.spec_param_names()
    with pytest.raises(ValueError, match="must share one eps"):
        m.obs_out[0].eps = 0.5
        m._build_spec()


# ==== the RSSM module ================================================================

CONFIGS = {
    "v1-gru-gauss": dict(cell="gru", classes=None, norm="none", act="elu"),
    "v2-lngru-cat": dict(cell="ln_gru", classes=8, norm="layer", act="elu"),
    "v3-block-cat": dict(cell="block_gru", classes=8, norm="rms", act="silu", blocks=4),
    # dreamerv3-torch with norm: False, its Gaussian options and its learned initial state
    "nm512-gauss": dict(cell="ln_gru", classes=None, norm="none", act="silu", cell_norm=False,
                        std_act="sigmoid2", mean_act="tanh5", initial="learned"),
    # sheeprl: cat(h, x), a learned initial state whose categorical mode has no gradient
    "sheeprl-cat": dict(cell="ln_gru", classes=8, norm="layer", act="silu",
                        cell_state_first=True, initial="learned", initial_stoch_grad=False),
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


@pytest.mark.parametrize("cfg", ["v2-lngru-cat", "nm512-gauss", "sheeprl-cat"])
def test_is_first_resets_state(cfg):
    """A reset mid-sequence restarts from RSSM.initial: zeros, or the learned state."""
    model, _ = _pair(cfg, "cpu")
    if model.initial_weight is not None:
        with torch.no_grad():
            model.initial_weight.normal_(generator=torch.Generator().manual_seed(8))
    embed, action, is_first, noise = _sequence(model, 2, 5, "cpu")
    is_first[:] = False
    is_first[:, 0] = True
    is_first[0, 3] = True
    post, _ = model.observe(embed, action, is_first, noise=noise)
    # Row 0 restarts at t=3: its steps 3.. equal a fresh observe of the tail.
    tail, _ = model.observe(embed[:1, 3:], action[:1, 3:], is_first[:1, 3:],
                            noise=(noise[0][:1, 3:], noise[1][:1, 3:]))
    torch.testing.assert_close(post["deter"][:1, 3:], tail["deter"])
    torch.testing.assert_close(post["stoch"][:1, 3:], tail["stoch"])


@pytest.mark.parametrize("backend", ["fused", "ref"])
@pytest.mark.parametrize("cfg", ["nm512-gauss", "sheeprl-cat", "v1-gru-gauss"])
def test_obs_step_loop_is_observe(cfg, backend):
    """obs_step step by step (from RSSM.initial, resets where is_first) gives observe's
    states and gradients, the learned initial state's included."""
    fused, ref = _pair(cfg, "cpu")
    model = fused if backend == "fused" else ref
    if model.initial_weight is not None:
        with torch.no_grad():
            model.initial_weight.normal_(generator=torch.Generator().manual_seed(9))
    embed, action, is_first, noise = _sequence(model, 3, 6, "cpu")
    is_first[1, 3] = True
    post, _ = model.observe(embed, action, is_first, noise=noise)
    loss = model.get_feat(post).tanh().sum()
    params = list(model.parameters())
    # (the prior MLP feeds no posterior feature unless a learned initial state reads it:
    # the reference leaves its gradient None, the fused op gives zeros)
    zero = lambda gs: [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]  # noqa: E731
    want = zero(torch.autograd.grad(loss, params, allow_unused=True))
    state, feats = model.initial(3), []
    for t in range(6):
        state, _ = model.obs_step(state, action[:, t], embed[:, t], is_first[:, t],
                                  noise=(noise[0][:, t], noise[1][:, t]))
        feats.append(model.get_feat(state))
    feat = torch.stack(feats, 1)
    torch.testing.assert_close(feat, model.get_feat(post), rtol=1e-12, atol=1e-12)
    got = zero(torch.autograd.grad(feat.tanh().sum(), params, allow_unused=True))
    for (name, _), g, w in zip(model.named_parameters(), got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-11, msg=name)


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

# ==== the raw torch.library ops ======================================================


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
    """Arguments of torch.ops.dreamer_fast.rssm_observe (save=True)."""
    embed, action, is_first, noise = observe_inputs(B, T)
    keep = (~is_first).to(F64)
    deter = torch.randn(B, 16, dtype=F64)
    stoch = torch.zeros(B, m.stoch * (m.classes or 1), dtype=F64)
    return (m.spec_params(), *native_rssm_spec(m.spec()), embed.requires_grad_(), action, keep,
            deter, stoch, noise[0], noise[1], None, None, True)


def raw_imagine_args(m: RSSM, actor: Actor, N: int, H: int, feat_out: bool = False):
    """Arguments of torch.ops.dreamer_fast.rssm_imagine (save=True, save_wm_inputs=True)."""
    g = torch.Generator().manual_seed(N * 100 + H)
    deter = torch.randn(N, 16, generator=g, dtype=F64).requires_grad_()
    stoch = torch.zeros(N, m.stoch * (m.classes or 1), dtype=F64)
    a_noise = torch.rand(N, H, actor.noise_size(), generator=g, dtype=F64)
    s_noise = torch.rand(N, H, m.stoch, generator=g, dtype=F64)
    return (m.spec_params(), *native_rssm_spec(m.spec()), actor.spec_params(),
            *native_actor_spec(actor.spec()), deter, stoch, None, a_noise, s_noise, H, True,
            feat_out, True)


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


@pytest.mark.parametrize("name,cell,classes", [("nm512-gauss", "ln_gru", None),
                                               ("sheeprl", "ln_gru", 4),
                                               ("learned", "block_gru", 4)])
def test_opcheck_rssm_observe_variants(name, cell, classes):
    """The peers' options, the learned initial state passed to the op (its gradient is
    one of the op's outputs)."""
    m = make_rssm(cell, classes)
    spec, params = variant(m.spec(), m.spec_params(), torch.Generator().manual_seed(3),
                           **VARIANTS[name])
    args = list(raw_observe_args(m, 2, 3))
    deter0, stoch0 = rssm_initial(params, spec)
    args[0] = params[:-1]  # the op takes the initial state, not W
    args[1:2] = native_rssm_spec(spec)
    args[-3:-1] = [deter0.detach().requires_grad_(), stoch0.detach().requires_grad_()]
    torch.library.opcheck(torch.ops.dreamer_fast.rssm_observe.default, tuple(args),
                          test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("name,cell,classes", [("nm512-gauss", "ln_gru", None),
                                               ("learned", "ln_gru", 4),
                                               ("sheeprl", "ln_gru", 4)])
def test_compiled_fused_observe_variant_matches_eager(name, cell, classes):
    """torch.compile(fullgraph=True) of the functional observe with a peer's options,
    the learned initial state included (no start state: t = 0 starts from it)."""
    m = make_rssm(cell, classes)
    spec, params = variant(m.spec(), m.spec_params(), torch.Generator().manual_seed(4),
                           **VARIANTS[name])
    params = _leaves(params)
    embed, action, is_first, noise = observe_inputs(3, 5)
    if classes is None:
        noise = tuple(torch.randn_like(n) for n in noise)
    keep = (~is_first).to(F64)

    weights = [torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(i), dtype=F64)
               for i in range(7)]

    def loss_fn(embed, action, keep, noise0, noise1):
        outs = rssm_observe(params, spec, embed, action, keep, None, None, noise0, noise1)
        # every non-empty output through fixed weights (made outside the compiled region)
        outs = [o for o in outs if o.numel()]
        return sum((o * w[..., :o.shape[-1]]).tanh().sum() for o, w in zip(outs, weights))

    eager = loss_fn(embed, action, keep, *noise)
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")(
        embed, action, keep, *noise)
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)
    g_eager, g_compiled = _grads(eager, params), _grads(compiled, params)
    for ge, gc in zip(g_eager, g_compiled):
        assert (ge is None) == (gc is None)
        if ge is not None:
            torch.testing.assert_close(gc, ge, rtol=1e-12, atol=1e-12)
    # the learned initial state (t = 0 and the reset at is_first[1, 2]) gets a gradient
    assert g_eager[-1].abs().sum() > 0


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


@pytest.mark.parametrize("backend", ["fused", "ref"])
@pytest.mark.parametrize("cell", ["gru", "ln_gru", "block_gru"])
def test_module_transitions_reject_wrong_input_sizes(backend, cell):
    """observe / obs_step / img_step / imagine_with_action on both backends: an embed or
    action of the wrong size, or embed and action of different B or T, is an error naming
    the argument (the fused path read a short embed as garbage, the reference truncated
    to the shorter T)."""
    rssm = RSSM(stoch=4, classes=4, deter=16, hidden=16, action_size=2, embed_size=8,
                cell=cell, blocks=4, backend=backend, dtype=torch.float64)
    B, T = 3, 5
    f64 = dict(dtype=torch.float64)
    first = torch.zeros(B, T, dtype=torch.bool)
    bad_observe = {
        "embed": [(torch.zeros(B, T, 7, **f64), torch.zeros(B, T, 2, **f64)),
                  (torch.zeros(B, T, 9, **f64), torch.zeros(B, T, 2, **f64))],
        "action": [(torch.zeros(B, T, 8, **f64), torch.zeros(B, T, 3, **f64)),
                   (torch.zeros(B, T, 8, **f64), torch.zeros(B, T - 1, 2, **f64)),
                   (torch.zeros(B, T, 8, **f64), torch.zeros(B + 1, T, 2, **f64))],
    }
    for arg, cases in bad_observe.items():
        for embed, action in cases:
            with pytest.raises(ValueError, match=f"`{arg}`"):
                rssm.observe(embed, action, first)
            if action.shape[1] != T:
                continue  # one step has no T
            with pytest.raises(ValueError, match=f"`{arg}`"):
                rssm.obs_step(rssm.initial(B), action[:, 0], embed[:, 0], first[:, 0])
    with pytest.raises(ValueError, match="`actions?`"):
        rssm.img_step(rssm.initial(B), torch.zeros(B, 3, **f64))
    with pytest.raises(ValueError, match="`actions?`"):
        rssm.imagine_with_action(torch.zeros(B, 4, 1, **f64), rssm.initial(B))


# ==== the learned initial state against its definition =================================

@pytest.mark.parametrize("classes,stoch_grad,mean_act", [(4, True, "none"), (4, False, "none"),
                                                        (None, True, "tanh5"),
                                                        (None, False, "none")])
def test_rssm_initial_is_tanh_w_and_the_prior_mode(classes, stoch_grad, mean_act):
    """deter0 = tanh(W); stoch0 = the prior's mode at deter0, computed here from the
    module's own prior MLP: the Gaussian mean_act(mean), or the one-hot of the argmax
    whose gradient is that of the normalised unimix log-probs (straight-through) or
    none."""
    m = make_rssm("ln_gru", classes)
    spec, params = variant(m.spec(), m.spec_params(), torch.Generator().manual_seed(5),
                           initial="learned", initial_stoch_grad=stoch_grad, mean_act=mean_act)
    params = _leaves(params)
    deter0, stoch0 = rssm_initial(params, spec)
    W = params[-1]
    torch.testing.assert_close(deter0, torch.tanh(W), rtol=0, atol=0)
    sd = m.img_out.state_dict()
    stats = torch.func.functional_call(
        m.img_out, dict(zip(sd, params[spec.param_slices()["img_out"]])), (torch.tanh(W),))
    w = torch.randn(stoch0.shape, generator=torch.Generator().manual_seed(6), dtype=F64)
    if classes is None:
        mean = stats[:4] if mean_act == "none" else 5 * torch.tanh(stats[:4] / 5)
        torch.testing.assert_close(stoch0, mean, rtol=1e-14, atol=1e-14)
        target = (mean * w).sum()
    else:
        logits = stats.view(4, classes)
        lp = torch.log(torch.softmax(logits, -1) * 0.99 + 0.01 / classes)
        lp = lp - torch.logsumexp(lp, -1, keepdim=True)
        onehot = torch.nn.functional.one_hot(logits.argmax(-1), classes).to(F64).reshape(-1)
        torch.testing.assert_close(stoch0, onehot, rtol=0, atol=1e-15)
        target = (lp.reshape(-1) * w).sum()  # the straight-through gradient's
    if not stoch_grad:
        assert not stoch0.requires_grad
        return
    got = torch.autograd.grad((stoch0 * w).sum(), params, allow_unused=True)
    want = torch.autograd.grad(target, params, allow_unused=True)
    for g, e in zip(got, want):
        assert (g is None) == (e is None)
        if g is not None:
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fn", [rssm_observe, rssm_observe_ref], ids=["fused", "ref"])
@pytest.mark.parametrize("cell,classes", [("ln_gru", 4), ("block_gru", None), ("gru", 4)])
def test_learned_start_is_the_initial_state_given_as_start(fn, cell, classes):
    """No start state with initial='learned' (and a reset at t = 0) is the same sequence,
    values and every gradient (W's included), as the zeros spec started from
    rssm_initial's state with no reset at t = 0."""
    m = make_rssm(cell, classes)
    spec, params = variant(m.spec(), m.spec_params(), torch.Generator().manual_seed(7),
                           initial="learned")
    embed, action, _, noise = observe_inputs(3, 4)
    if classes is None:
        noise = tuple(torch.randn_like(n) for n in noise)
    keep = torch.ones(3, 4, dtype=F64)
    leaves = _leaves(params)
    a = fn(leaves, spec, embed, action, keep, None, None, *noise)
    ga = torch.autograd.grad(_weighted_loss(a, 2), leaves, allow_unused=True)
    leaves = _leaves(params)
    deter0, stoch0 = rssm_initial(leaves, spec)
    act0 = action.clone()
    act0[:, 0] = 0  # a reset masks the action before the first step
    b = fn(leaves[:-1], m.spec(), embed, act0, keep, deter0.expand(3, -1),
           stoch0.expand(3, -1), *noise)
    gb = torch.autograd.grad(_weighted_loss(b, 2), leaves, allow_unused=True)
    _assert_same(a, b, "outputs", rtol=1e-13, atol=1e-13)
    _assert_same(ga, gb, "grads", rtol=1e-11, atol=1e-12)
    assert ga[-1].abs().sum() > 0


def test_module_options_reach_the_spec_and_default_to_ours():
    """The RSSM module's peer options: in its spec and parameters (the learned initial
    state a parameter ``initial_weight``, last in spec_params); the defaults unchanged."""
    default = RSSM(stoch=3, deter=8, hidden=6, action_size=2, embed_size=4, cell="ln_gru")
    spec = default.spec()
    assert (spec.cell_norm, spec.cell_state_first, spec.std_act, spec.mean_act,
            spec.initial, spec.min_std_mode) == (True, False, "softplus", "none", "zeros", "add")
    assert default.initial_weight is None and default.cell.norm_weight is not None
    m = RSSM(stoch=3, deter=8, hidden=6, action_size=2, embed_size=4, cell="ln_gru",
             cell_norm=False, cell_state_first=True, std_act="abs", mean_act="tanh5",
             initial="learned")
    spec = m.spec()
    assert (spec.cell_norm, spec.cell_state_first, spec.std_act, spec.mean_act,
            spec.initial) == (False, True, "abs", "tanh5", "learned")
    assert m.spec_param_names()[-1] == "initial_weight" and m.cell.norm_weight is None
    assert [tuple(p.shape) for p in m.spec_params()] == [s for _, s in spec.param_shapes()]
    state = m.initial(5)
    deter0, stoch0 = rssm_initial(m.spec_params(), spec)
    torch.testing.assert_close(state["deter"], deter0.expand(5, -1), rtol=0, atol=0)
    torch.testing.assert_close(state["stoch"], stoch0.expand(5, -1), rtol=0, atol=0)
    with pytest.raises(ValueError, match="`initial`"):
        RSSM(stoch=3, deter=8, hidden=6, action_size=2, embed_size=4, initial="random")
    with pytest.raises(ValueError, match="`cell_norm=False`"):
        RSSM(stoch=3, deter=8, hidden=6, action_size=2, embed_size=4, cell="gru",
             cell_norm=False)
    with pytest.raises(ValueError, match="`std_act`"):
        RSSM(stoch=3, deter=8, hidden=6, action_size=2, embed_size=4, std_act="exp")

