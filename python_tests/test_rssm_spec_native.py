"""The native sequence ops' spec strings (csrc/rssm/spec.h): a corrupted spec is a
RuntimeError that names the field, raised by the op itself (called directly)."""

import pytest
import torch

import dreamer_fast  # noqa: F401  (loads the extension)

pytestmark = pytest.mark.skipif(not dreamer_fast.has_extension(), reason="no extension")

S, D, U, E, A, B, T = 3, 4, 5, 2, 2, 2, 3
GOOD = ("cell=gru;classes=0;stoch=3;blocks=1;dynlayers=1;cell_act=silu;cell_bias=1;"
        "img_in=1:layer:silu;img_out=1:none:none;obs_out=0:rms:tanh,1:none:none;eps=0.001;"
        "cell_eps=0.001;cell_norm=1;cell_state_first=0;update_bias=-1.0;unimix=0.01;"
        "min_std=0.1;std_act=softplus;mean_act=none;min_std_mode=add")


def _params():
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * 0.3

    return [r(U, S + A), r(U), r(U), r(U),            # img_in: W, b, layer-norm w, b
            r(3 * D, U), r(3 * D, D), r(3 * D), r(3 * D),  # gru
            r(2 * S, D), r(2 * S),                     # img_out
            r(U, D + E), r(U),                         # obs_out layer 0 (rms, no bias)
            r(2 * S, U), r(2 * S)]                     # obs_out layer 1


def _observe(spec, params=None):
    g = torch.Generator().manual_seed(1)
    f64 = dict(dtype=torch.float64)
    return torch.ops.dreamer_fast.rssm_observe(
        _params() if params is None else params, spec, torch.randn(B, T, E, generator=g, **f64),
        torch.randn(B, T, A, generator=g, **f64), torch.ones(B, T, **f64),
        torch.zeros(B, D, **f64), torch.zeros(B, S, **f64),
        torch.randn(B, T, S, generator=g, **f64), torch.randn(B, T, S, generator=g, **f64),
        None, None, True)


def _with(field, value):
    items = [kv.split("=", 1) for kv in GOOD.split(";")]
    return ";".join(f"{k}={value if k == field else v}" for k, v in items)


def _without(field):
    return ";".join(kv for kv in GOOD.split(";") if not kv.startswith(field + "="))


def test_good_spec_runs():
    out = _observe(GOOD)
    assert out[0].shape == (B, T, D)


@pytest.mark.parametrize("field", ["cell", "classes", "img_out", "eps", "min_std", "cell_norm",
                                   "std_act"])
def test_missing_field(field):
    with pytest.raises(RuntimeError, match=f"spec field '{field}' is missing"):
        _observe(_without(field))


def test_unknown_and_repeated_field():
    with pytest.raises(RuntimeError, match="unknown spec field 'colour'"):
        _observe(GOOD + ";colour=blue")
    with pytest.raises(RuntimeError, match="spec field 'stoch' is given twice"):
        _observe(GOOD + ";stoch=3")


@pytest.mark.parametrize("field,value", [
    ("classes", "-1"), ("classes", "3.5"), ("stoch", "0"), ("stoch", ""), ("cell", "lstm"),
    ("cell_act", "relu"), ("cell_bias", "2"), ("eps", "0"), ("eps", "nan"), ("eps", "1e-3x"),
    ("unimix", "1.5"), ("min_std", "-0.1"), ("img_in", "1:layer"), ("img_in", "1:batch:silu"),
    ("obs_out", "0:rms:relu,1:none:none"), ("cell_norm", "2"), ("cell_state_first", "yes"),
    ("std_act", "exp"), ("mean_act", "tanh"), ("min_std_mode", "max"),
    # the LayerNorm and the column order are ln_gru's options (this spec is a gru)
    ("cell_norm", "0"), ("cell_state_first", "1"),
])
def test_bad_value(field, value):
    with pytest.raises(RuntimeError, match=f"spec field '{field}'"):
        _observe(_with(field, value))


def test_wrong_layer_count():
    # one posterior layer fewer: the parameter count no longer matches
    with pytest.raises(RuntimeError, match="describes 12 parameter tensors, got 14"):
        _observe(_with("obs_out", "1:none:none"))
    # gru needs exactly one input layer
    with pytest.raises(RuntimeError, match="spec field 'img_in'"):
        _observe(_with("img_in", ""))


def test_layer_shapes_checked_against_the_spec():
    # obs_out layer 0 declared with a bias: the tensors shift, layer 1's input no longer fits
    with pytest.raises(RuntimeError, match="spec field 'obs_out'"):
        _observe(_with("obs_out", "1:rms:tanh,1:none:none"), _params()[:11] + _params()[10:])
    # the stats width follows `stoch`
    with pytest.raises(RuntimeError, match="spec field 'img_out'.*'stoch'"):
        p = _params()
        p[8], p[9] = p[8][:4], p[9][:4]
        _observe(GOOD, p)


def test_floats_read_exactly():
    # repr() of a double reads back to the same double: min_std changes the output bits
    x = 0.1 + 2 ** -40
    a, b = _observe(_with("min_std", repr(0.1))), _observe(_with("min_std", repr(x)))
    assert not torch.equal(a[3], b[3])
    assert torch.equal(_observe(_with("min_std", "0.1"))[3], a[3])


def test_actor_spec_fields():
    params = _params()
    N, H = 2, 2
    f64 = dict(dtype=torch.float64)
    actor = [torch.randn(2 * A, S + D, **f64)]
    good = ("head=tanh_normal;actions=2;layers=0:none:none;eps=0.001;min_std=0.1;max_std=1.0;"
            "std_offset=0.0;mean_scale=1.0;unimix=0.01")

    def imagine(spec):
        return torch.ops.dreamer_fast.rssm_imagine(
            params, GOOD, actor, spec, torch.zeros(N, D, **f64), torch.zeros(N, S, **f64), None,
            torch.randn(N, H, A, **f64), torch.randn(N, H, S, **f64), H, True, False, True)

    assert imagine(good)[4].shape == (N, H, A)
    with pytest.raises(RuntimeError, match="spec field 'head'"):
        imagine(good.replace("tanh_normal", "gaussian"))
    with pytest.raises(RuntimeError, match="spec field 'layers'.*'actions' asks for 6"):
        imagine(good.replace("actions=2", "actions=3"))
    with pytest.raises(RuntimeError, match="spec field 'max_std' is missing"):
        imagine(good.replace("max_std=1.0;", ""))


@pytest.mark.parametrize("cell", ["gru", "ln_gru", "block_gru"])
@pytest.mark.parametrize("arg,embed_size,action_size", [
    ("embed", 9, 2), ("embed", 7, 2), ("action", 8, 3), ("action", 8, 1)])
def test_observe_input_sizes_checked_by_the_op(cell, arg, embed_size, action_size):
    """Called directly, the op checks embed and action against the parameters (a short
    embed was read as garbage; a long one hit an internal assert)."""
    from dreamer_fast.nn import RSSM
    from dreamer_fast.ops._native_spec import native_rssm_spec
    rssm = RSSM(stoch=4, classes=4, deter=16, hidden=16, action_size=2, embed_size=8,
                cell=cell, blocks=4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=f"rssm_observe: `{arg}` has"):
        torch.ops.dreamer_fast.rssm_observe(
            rssm.spec_params(), *native_rssm_spec(rssm.spec()),
            torch.zeros(B, T, embed_size, dtype=torch.float64),
            torch.zeros(B, T, action_size, dtype=torch.float64),
            torch.ones(B, T, dtype=torch.float64), torch.zeros(B, 16, dtype=torch.float64),
            torch.zeros(B, 16, dtype=torch.float64), torch.rand(B, T, 4, dtype=torch.float64),
            torch.rand(B, T, 4, dtype=torch.float64), None, None, False)


@pytest.mark.parametrize("cell", ["gru", "ln_gru", "block_gru"])
@pytest.mark.parametrize("action_size", [1, 3])
def test_imagine_action_size_checked_by_the_op(cell, action_size):
    from dreamer_fast.nn import RSSM
    from dreamer_fast.ops._native_spec import native_rssm_spec
    rssm = RSSM(stoch=4, classes=4, deter=16, hidden=16, action_size=2, embed_size=8,
                cell=cell, blocks=4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="rssm_imagine: `actions` has"):
        torch.ops.dreamer_fast.rssm_imagine(
            rssm.spec_params(), *native_rssm_spec(rssm.spec()), [], "",
            torch.zeros(B, 16, dtype=torch.float64), torch.zeros(B, 16, dtype=torch.float64),
            torch.zeros(B, 3, action_size, dtype=torch.float64), torch.empty(0),
            torch.rand(B, 3, 4, dtype=torch.float64), 3, False, False, False)


def test_initial_state_arguments_checked_by_the_op():
    """The reset state of a learned initial state: both or neither, [D] and [Z]."""
    def run(init_deter, init_stoch):
        g = torch.Generator().manual_seed(1)
        f64 = dict(dtype=torch.float64)
        return torch.ops.dreamer_fast.rssm_observe(
            _params(), GOOD, torch.randn(B, T, E, generator=g, **f64),
            torch.randn(B, T, A, generator=g, **f64), torch.ones(B, T, **f64),
            torch.zeros(B, D, **f64), torch.zeros(B, S, **f64),
            torch.randn(B, T, S, generator=g, **f64), torch.randn(B, T, S, generator=g, **f64),
            init_deter, init_stoch, False)

    f64 = dict(dtype=torch.float64)
    assert run(torch.zeros(D, **f64), torch.zeros(S, **f64))[0].shape == (B, T, D)
    with pytest.raises(RuntimeError, match="`init_deter` and `init_stoch` must both be given"):
        run(torch.zeros(D, **f64), None)
    with pytest.raises(RuntimeError, match="`init_deter`"):
        run(torch.zeros(D + 1, **f64), torch.zeros(S, **f64))
    with pytest.raises(RuntimeError, match="`init_stoch`"):
        run(torch.zeros(D, **f64), torch.zeros(S, dtype=torch.float32))
