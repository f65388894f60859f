"""Trainer configuration: presets, sizes, overrides and their error messages."""

from __future__ import annotations

import pytest

from dreamer_fast.agents.config import ConfigError, load_config, parse_override, read_defaults


def test_presets_pick_the_published_architectures():
    v1, v2, v3 = (load_config(a, "S") for a in ("v1", "v2", "v3"))
    assert (v1.model.cell, v1.model.classes, v1.model.stoch, v1.model.deter) == ("gru", 0, 30, 200)
    assert v1.model.kl == "balance" and v1.model.kl_free == 3.0 and v1.model.kl_balance == 0.5
    assert v1.behavior.actor_grad == "dynamics" and v1.behavior.actor_head == "tanh_normal"
    assert (v2.model.cell, v2.model.classes, v2.model.stoch) == ("ln_gru", 32, 32)
    assert v2.model.kl_balance == 0.8 and v2.model.kl_free == 1.0
    assert v2.behavior.slow_critic == "target"
    assert (v3.model.cell, v3.model.deter, v3.model.reward_head, v3.model.bins) == (
        "block_gru", 512, "twohot", 255)
    assert (v3.model.kl_free, v3.model.kl_dyn, v3.model.kl_rep) == (1.0, 0.5, 0.1)
    assert v3.behavior.actor_grad == "reinforce" and v3.behavior.return_norm
    assert v3.behavior.horizon == 15 and v3.behavior.lambda_ == 0.95


def test_defaults_and_sizes():
    cfg = load_config()
    assert (cfg.env, cfg.algo, cfg.size) == ("gym:Pendulum-v1", "v3", "debug")
    assert load_config("v3", "M").model.deter > load_config("v3", "S").model.deter
    assert load_config("v3", "debug").model.deter < 512


def test_overrides_apply_with_types():
    cfg = load_config(overrides={"model.deter": 256, "behavior.discount": 1, "run.progress":
                                 False, "algo": "v2"})
    assert cfg.algo == "v2" and cfg.model.cell == "ln_gru"  # algo override picks the preset
    assert cfg.model.deter == 256 and cfg.behavior.discount == 1.0
    assert isinstance(cfg.behavior.discount, float) and cfg.run.progress is False


def test_exponent_without_a_dot_is_a_number():
    # YAML 1.1 parses "1e-4" as a string; a number-valued key takes it as 1e-4
    cfg = load_config(overrides=dict([parse_override("behavior.entropy=1e-4"),
                                      parse_override("model.lr=+3E-4")]))
    assert cfg.behavior.entropy == 1e-4 and cfg.model.lr == 3e-4
    for bad in ("1e-4x", "e-4", "1e"):
        with pytest.raises(ConfigError, match="'behavior.entropy' expects a number"):
            load_config(overrides={"behavior.entropy": bad})


@pytest.mark.parametrize("overrides, needle", [
    ({"model.detr": 3}, "'model.detr'"),
    ({"nonsense": 1}, "'nonsense'"),
    ({"model.deter": "big"}, "'model.deter' expects an integer"),
    ({"model.deter": 2.5}, "'model.deter' expects an integer"),
    ({"run.progress": "yes"}, "'run.progress' expects true/false"),
    ({"model.cell": "lstm"}, "'model.cell' must be one of"),
    ({"behavior.discount": 1.5}, "'behavior.discount' must be in [0, 1]"),
    ({"envs": 0}, "'envs' must be >= 1"),
    ({"algo": "v4"}, "'algo' must be one of"),
    ({"matmul_precision": "bf16"}, "'matmul_precision' must be one of"),
    ({"size": "XL"}, "'size' must be one of"),
    ({"model": 3}, "'model' is a section"),
    ({"model.cell": "block_gru", "model.blocks": 3}, "'model.blocks'"),
    ({"model.std_act": "exp"}, "'model.std_act' must be one of"),
    ({"model.mean_act": "tanh"}, "'model.mean_act' must be one of"),
    ({"model.min_std_mode": "max"}, "'model.min_std_mode' must be one of"),
    ({"model.initial": "random"}, "'model.initial' must be one of"),
    ({"model.cell_norm": 0}, "'model.cell_norm' expects true/false"),
    ({"model.cell": "block_gru", "model.cell_norm": False}, "'model.cell_norm' must be true"),
    ({"model.cell": "gru", "model.cell_state_first": True}, "'model.cell_state_first'"),
])
def test_bad_config_names_the_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    assert needle in str(e.value)


def test_parse_override():
    assert parse_override("model.deter=256") == ("model.deter", 256)
    assert parse_override("behavior.discount=0.99") == ("behavior.discount", 0.99)
    assert parse_override("env=dmc:walker-walk") == ("env", "dmc:walker-walk")
    assert parse_override("run.progress=false") == ("run.progress", False)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("model.deter")


def _numeric_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if k in ("presets", "sizes") and not prefix:
            continue
        if isinstance(v, dict):
            out += _numeric_keys(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(f"{prefix}{k}")
    return out


NUMERIC_KEYS = _numeric_keys(read_defaults())


def test_every_numeric_key_has_a_range():
    from dreamer_fast.agents.config import RANGES
    assert NUMERIC_KEYS and set(NUMERIC_KEYS) == set(RANGES)


@pytest.mark.parametrize("key", NUMERIC_KEYS)
def test_numeric_keys_reject_nonfinite_and_out_of_range(key):
    from dreamer_fast.agents.config import RANGES
    default = load_config().get_path(key)
    bad = [-1e30]
    if isinstance(default, float):
        bad += [float("nan"), float("inf"), float("-inf")]
    low, high, *opened = RANGES[key]
    bad.append(low if opened else (low - 1 if isinstance(default, int) else low - 1e-3))
    if high != float("inf"):
        bad.append(high + 1)
    for value in bad:
        with pytest.raises(ConfigError, match=repr(key)):
            load_config(overrides={key: value})


@pytest.mark.parametrize("overrides, needle", [
    ({"seed": -1}, "'seed' must be in [0, "),
    ({"model.lr": float("nan")}, "'model.lr' must be a finite number"),
    ({"model.dynlayers": 0}, "'model.dynlayers'"),
    ({"model.min_std": -1.0}, "'model.min_std' must be > 0"),
    ({"behavior.min_std": -1.0}, "'behavior.min_std' must be > 0"),
    ({"model.kl_free": float("nan")}, "'model.kl_free' must be a finite number"),
    ({"model.grad_clip": -1.0}, "'model.grad_clip' must be > 0"),
    ({"model.classes": 1}, "'model.classes'"),
])
def test_issue_cases_are_rejected(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    assert needle in str(e.value)


def test_rssm_options_reach_the_world_model():
    """The peers' RSSM options as config keys, defaults unchanged (zeros initial state,
    softplus std, the LayerNorm GRU with cat(x, h))."""
    from dreamer_fast.agents.world_model import WorldModel
    spec = WorldModel(load_config("v2", "debug"), "vector", (3,), 2, "ref").rssm.spec()
    assert (spec.initial, spec.std_act, spec.mean_act, spec.cell_norm,
            spec.cell_state_first) == ("zeros", "softplus", "none", True, False)
    cfg = load_config("v2", "debug", {"model.initial": "learned", "model.classes": 0,
                                      "model.std_act": "sigmoid2", "model.mean_act": "tanh5",
                                      "model.cell_norm": False, "model.cell_state_first": True,
                                      "model.min_std_mode": "clamp"})
    rssm = WorldModel(cfg, "vector", (3,), 2, "ref").rssm
    spec = rssm.spec()
    assert (spec.initial, spec.std_act, spec.mean_act, spec.cell_norm,
            spec.cell_state_first) == ("learned", "sigmoid2", "tanh5", False, True)
    assert rssm.initial_weight is not None and spec.min_std_mode == "clamp"

