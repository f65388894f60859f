"""Tests of the CUDA-graph imagination rollout (dreamer_fast.nn.ImagineGraph).

* Argument checks that need no device: run everywhere.
* The wrapper's plumbing (copy-in, noise drawn outside the graph, clone-out, parameter
  watch, input checks) with the capture replaced by an eager re-run on the CPU: runs
  everywhere, but says nothing about the capture itself.
* Capture and replay on a CUDA device against eager ``imagine``: skipped without one.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import ACTOR_HEADS as HEADS
from conftest import IMAGINE_RSSMS as RSSMS
from conftest import imagine_models, imagine_start, requires_cuda
from dreamer_fast.nn import ImagineGraph, draw_imagine_noise, imagine, imagine_ref
from dreamer_fast.nn import rollout_graph as ig


def _models(cfg="v3-block-cat", head="categorical", backend="auto", dtype=torch.float64,
            device="cpu"):
    return imagine_models(cfg, head, backend, dtype, device)


def _start(rssm, n, seed=0):
    return imagine_start(rssm, n, seed)


def _assert_same(got, want, **tol):
    assert set(got) == set(want)
    tol = tol or dict(rtol=0, atol=0)
    for k in want:
        torch.testing.assert_close(got[k], want[k], **tol, msg=k)


# ---- argument checks (no device needed) --------------------------------------------------

@pytest.mark.parametrize("backend", ["auto", "ref"])
def test_cpu_modules_are_rejected_with_a_clear_error(backend):
    rssm, actor = _models(backend=backend)
    with pytest.raises(RuntimeError, match="ImagineGraph needs CUDA tensors/modules, got cpu"):
        ImagineGraph(rssm, actor, 4, 3)


def test_meta_modules_are_rejected():
    rssm, actor = _models(device="meta")
    with pytest.raises(RuntimeError, match="needs CUDA tensors/modules, got meta"):
        ImagineGraph(rssm, actor, 4, 3)


def test_dynamics_mode_is_rejected_and_explained():
    rssm, actor = _models()
    with pytest.raises(ValueError, match=r"`grad` must be 'none'.*needs autograd"):
        ImagineGraph(rssm, actor, 4, 3, grad="dynamics")
    with pytest.raises(ValueError, match="`grad` must be 'none', got 'all'"):
        ImagineGraph(rssm, actor, 4, 3, grad="all")


@pytest.mark.parametrize("kw, exc, match", [
    (dict(n=0), ValueError, "`n` must be an int >= 1, got 0"),
    (dict(n=True), ValueError, "`n` must be an int >= 1, got True"),
    (dict(horizon=0), ValueError, "`horizon` must be an int >= 1, got 0"),
    (dict(horizon=2.0), ValueError, "`horizon` must be an int >= 1, got 2.0"),
    (dict(warmup=0), ValueError, "`warmup` must be an int >= 1"),
    (dict(clone="yes"), TypeError, "`clone` must be a bool"),
    (dict(check_params=1), TypeError, "`check_params` must be a bool"),
    (dict(capture_error_mode="strict"), ValueError, "`capture_error_mode` must be"),
])
def test_bad_arguments_are_named(kw, exc, match):
    rssm, actor = _models()
    args = dict(n=4, horizon=3)
    args.update(kw)
    with pytest.raises(exc, match=match):
        ImagineGraph(rssm, actor, **args)


def test_modules_of_different_dtypes_are_rejected():
    rssm, _ = _models(dtype=torch.float64)
    _, actor = _models(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"`actor\.net.*float32.*`rssm\..*float64.*one dtype"):
        ImagineGraph(rssm, actor, 4, 3)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("cfg", ["v1-gru-gauss", "v2-lngru-cat"])
def test_noise_drawn_in_place_equals_draw_imagine_noise(cfg, head):
    rssm, actor = _models(cfg, head)
    like = torch.empty(0, dtype=torch.float64)
    torch.manual_seed(7)
    want = draw_imagine_noise(rssm, actor, 6, 4, like=like)
    torch.manual_seed(7)
    got = ig._draw_noise_(rssm, actor, {k: torch.full_like(v, float("nan"))
                                        for k, v in want.items()})
    _assert_same(got, want)


def test_parameter_watch_sees_in_place_updates_and_rejects_replacements():
    rssm, actor = _models()
    watch = ig._ParameterWatch(rssm=rssm, actor=actor)
    opt = torch.optim.Adam([*rssm.parameters(), *actor.parameters()], lr=1e-3)
    sum(p.square().sum() for p in actor.parameters()).backward()
    opt.step()  # in place
    rssm.load_state_dict(rssm.state_dict())  # copies in place
    watch.check()

    w = actor.net[0].weight
    w.data = w.data.clone()
    with pytest.raises(RuntimeError, match=r"`actor\.net\.0\.weight` was replaced.*storage"):
        watch.check()

    rssm, actor = _models()
    watch = ig._ParameterWatch(rssm=rssm, actor=actor)
    rssm.img_out[0].weight = nn.Parameter(rssm.img_out[0].weight.detach().clone())
    with pytest.raises(RuntimeError, match=r"`rssm\.img_out\.0\.weight` .*Parameter object"):
        watch.check()

    rssm, actor = _models()
    watch = ig._ParameterWatch(rssm=rssm, actor=actor)
    actor.to(torch.float32)
    with pytest.raises(RuntimeError, match=r"`actor\..*` was replaced"):
        watch.check()


def test_input_checks_name_the_argument():
    static = {"deter": torch.zeros(4, 16, dtype=torch.float64),
              "stoch": torch.zeros(4, 5, 4, dtype=torch.float64)}
    ig._check_inputs("start", {**static, "extra": 1}, static, exact_keys=False)
    with pytest.raises(TypeError, match="`start` must be a dict"):
        ig._check_inputs("start", [1], static, exact_keys=False)
    with pytest.raises(ValueError, match=r"`start` must have the keys \['deter', 'stoch'\]"):
        ig._check_inputs("start", {"deter": static["deter"]}, static, exact_keys=False)
    with pytest.raises(ValueError, match="`noise` must have the keys"):
        ig._check_inputs("noise", {**static, "extra": 1}, static, exact_keys=True)
    with pytest.raises(TypeError, match=r"`start\['stoch'\]` must be a torch.Tensor"):
        ig._check_inputs("start", {**static, "stoch": 0.0}, static, exact_keys=False)
    for bad, what in [(torch.zeros(5, 16, dtype=torch.float64), r"\(5, 16\)"),
                      (torch.zeros(4, 16, dtype=torch.float32), "float32"),
                      (torch.zeros(4, 16, dtype=torch.float64, device="meta"), "on meta")]:
        with pytest.raises(ValueError, match=rf"`start\['deter'\]` is .*{what}.*captured for "
                                             r"\(4, 16\) torch.float64 on cpu"):
            ig._check_inputs("start", {**static, "deter": bad}, static, exact_keys=False)


# ---- the wrapper's plumbing, capture replaced by an eager re-run (CPU) -------------------

def _eager_capture(run, *, device, warmup, pool, capture_error_mode):
    outputs = run()

    class EagerGraph:
        def replay(self):
            for k, v in run().items():
                outputs[k].copy_(v)

        def pool(self):
            return None

    return EagerGraph(), outputs


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(ig, "_require_cuda", lambda device: None)
    monkeypatch.setattr(ig, "_capture", _eager_capture)


@pytest.mark.parametrize("backend", ["auto", "ref"])
@pytest.mark.parametrize("cfg, head", [("v1-gru-gauss", "tanh_normal"),
                                       ("v2-lngru-cat", "bounded_normal"),
                                       ("v3-block-cat", "categorical")])
def test_emulated_calls_match_eager_imagine(emulated, cfg, head, backend):
    rssm, actor = _models(cfg, head, backend=backend)
    g = ImagineGraph(rssm, actor, 6, 4)
    assert g.fused == (backend == "auto")
    for seed in (1, 2):
        start = _start(rssm, 6, seed)
        noise = draw_imagine_noise(rssm, actor, 6, 4, like=start["deter"])
        _assert_same(g(start, noise), imagine(rssm, actor, start, 4, noise=noise))
    # noise drawn into the static buffers: the same RNG use as imagine(noise=None)
    torch.manual_seed(3)
    got = g(start)
    torch.manual_seed(3)
    _assert_same(got, imagine(rssm, actor, start, 4))


def test_emulated_clone_and_static_outputs(emulated):
    rssm, actor = _models()
    g = ImagineGraph(rssm, actor, 6, 4)
    first = g(_start(rssm, 6, 1))
    kept = {k: v.clone() for k, v in first.items()}
    static = g(_start(rssm, 6, 2), clone=False)
    assert all(static[k] is g.static_outputs[k] for k in static)
    _assert_same(first, kept)  # clones survive the next call
    g(_start(rssm, 6, 3), clone=False)
    assert not torch.equal(static["feat"], first["feat"])  # static outputs were overwritten
    g2 = ImagineGraph(rssm, actor, 6, 4, clone=False)
    assert g2(_start(rssm, 6, 1))["feat"] is g2.static_outputs["feat"]


def test_emulated_start_requiring_grad_is_read_as_values(emulated):
    rssm, actor = _models()
    g = ImagineGraph(rssm, actor, 3, 2)
    start = {k: v.requires_grad_() for k, v in _start(rssm, 3).items()}
    out = g(start)
    assert not any(v.requires_grad for v in out.values())
    assert not any(v.requires_grad for v in g.static_start.values())


def test_emulated_in_place_updates_are_seen_and_replacements_raise(emulated):
    rssm, actor = _models()
    g = ImagineGraph(rssm, actor, 6, 4)
    start = _start(rssm, 6)
    noise = draw_imagine_noise(rssm, actor, 6, 4, like=start["deter"])
    before = g(start, noise)
    with torch.no_grad():
        for p in [*rssm.parameters(), *actor.parameters()]:
            p.mul_(1.5)
    after = g(start, noise)
    assert not torch.equal(before["feat"], after["feat"])
    _assert_same(after, imagine(rssm, actor, start, 4, noise=noise))
    rssm.cell.gru_weight.data = rssm.cell.gru_weight.data.clone()
    with pytest.raises(RuntimeError, match=r"`rssm\.cell\.gru_weight` was replaced"):
        g(start, noise)


def test_emulated_mismatched_inputs_raise_before_writing(emulated):
    rssm, actor = _models()
    g = ImagineGraph(rssm, actor, 6, 4)
    start = _start(rssm, 6)
    saved = {k: v.clone() for k, v in g.static_start.items()}
    with pytest.raises(ValueError, match=r"`start\['deter'\]` is \(7, 16\)"):
        g(_start(rssm, 7) | {"stoch": start["stoch"]})
    with pytest.raises(ValueError, match=r"`noise\['stoch'\]` is \(6, 3, 5\)"):
        g(start, {"action": torch.zeros(6, 4, 1, dtype=torch.float64),
                  "stoch": torch.zeros(6, 3, 5, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"`start\['logit'\]` is .*float32"):
        g({k: v.float() if k == "logit" else v for k, v in start.items()})
    _assert_same(g.static_start, saved)


# ---- capture and replay on a CUDA device -------------------------------------------------

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-6)}


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["fused", "ref"])
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("cfg", list(RSSMS))
def test_replay_matches_eager_imagine(cfg, head, backend):
    rssm, actor = _models(cfg, head, backend=backend, device="cuda")
    g = ImagineGraph(rssm, actor, 37, 15)
    assert g.fused == (backend == "fused")
    for seed in (1, 2):  # two calls: the static inputs are refilled
        start = _start(rssm, 37, seed)
        noise = draw_imagine_noise(rssm, actor, 37, 15, like=start["deter"])
        _assert_same(g(start, noise), imagine(rssm, actor, start, 15, noise=noise),
                     **TOL[torch.float64])
    torch.manual_seed(3)
    got = g(start)
    torch.manual_seed(3)
    _assert_same(got, imagine(rssm, actor, start, 15), **TOL[torch.float64])


@requires_cuda
@pytest.mark.cuda
def test_replay_float32_large_batch_and_shared_pool():
    rssm, actor = _models("v3-block-cat", "categorical", dtype=torch.float32, device="cuda")
    a = ImagineGraph(rssm, actor, 1024, 15)
    b = ImagineGraph(rssm, actor, 512, 15, pool=a.pool)
    for g, n in ((a, 1024), (b, 512)):
        start = _start(rssm, n)
        noise = draw_imagine_noise(rssm, actor, n, 15, like=start["deter"])
        _assert_same(g(start, noise), imagine(rssm, actor, start, 15, noise=noise),
                     **TOL[torch.float32])


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["fused", "ref"])
def test_replay_sees_in_place_updates_and_rejects_replaced_parameters(backend):
    rssm, actor = _models("v2-lngru-cat", "categorical", backend=backend, device="cuda")
    g = ImagineGraph(rssm, actor, 16, 5)
    start = _start(rssm, 16)
    noise = draw_imagine_noise(rssm, actor, 16, 5, like=start["deter"])
    before = g(start, noise)
    opt = torch.optim.Adam([*rssm.parameters(), *actor.parameters()], lr=1e-1)
    (sum(p.square().sum() for p in rssm.parameters())
     + sum(p.square().sum() for p in actor.parameters())).backward()
    opt.step()
    after = g(start, noise)
    assert not torch.equal(before["feat"], after["feat"])
    _assert_same(after, imagine(rssm, actor, start, 5, noise=noise), **TOL[torch.float64])
    actor.net[0].weight.data = actor.net[0].weight.data.clone()
    with pytest.raises(RuntimeError, match=r"`actor\.net\.0\.weight` was replaced"):
        g(start, noise)


@requires_cuda
@pytest.mark.cuda
def test_static_outputs_are_overwritten_unless_cloned():
    rssm, actor = _models(device="cuda")
    g = ImagineGraph(rssm, actor, 8, 4)
    first = g(_start(rssm, 8, 1))
    first_kept = first["feat"].clone()
    static = g(_start(rssm, 8, 1), clone=False)
    assert static["feat"] is g.static_outputs["feat"]
    kept = static["feat"].clone()
    g(_start(rssm, 8, 2), clone=False)
    assert not torch.equal(static["feat"], kept)  # overwritten by the next replay
    assert torch.equal(first["feat"], first_kept)  # the clone was not


@requires_cuda
@pytest.mark.cuda
def test_mismatched_inputs_raise_on_cuda():
    rssm, actor = _models(device="cuda")
    g = ImagineGraph(rssm, actor, 8, 4)
    start = _start(rssm, 8)
    with pytest.raises(ValueError, match=r"`start\['deter'\]` is \(9, 16\)"):
        g(_start(rssm, 9))
    with pytest.raises(ValueError, match=r"`start\['deter'\]` is .* on cpu"):
        g({k: v.cpu() for k, v in start.items()})
    with pytest.raises(ValueError, match=r"`start\['stoch'\]` is .*float32"):
        g({k: v.float() if k == "stoch" else v for k, v in start.items()})
    noise = draw_imagine_noise(rssm, actor, 8, 5, like=start["deter"])
    with pytest.raises(ValueError, match=r"`noise\['action'\]` is \(8, 5, 1\)"):
        g(start, noise)
    with pytest.raises(ValueError, match="needs autograd"):
        ImagineGraph(rssm, actor, 8, 4, grad="dynamics")


@requires_cuda
@pytest.mark.cuda
def test_ref_backend_matches_imagine_ref():
    rssm, actor = _models("v2-lngru-cat", "categorical", backend="ref", device="cuda")
    g = ImagineGraph(rssm, actor, 8, 6)
    start = _start(rssm, 8)
    noise = draw_imagine_noise(rssm, actor, 8, 6, like=start["deter"])
    _assert_same(g(start, noise), imagine_ref(rssm, actor, start, 6, noise=noise),
                 **TOL[torch.float64])
    # the range check is back after the capture
    with pytest.raises(ValueError, match="`uniform` must lie in"):
        imagine_ref(rssm, actor, start, 6, noise={**noise, "action": noise["action"] + 1})
