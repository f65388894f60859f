"""Training configuration: one YAML of defaults, presets per algorithm and sizes.

``load_config(algo, size, overrides)`` applies, in order: the top level of
``dreamer_fast/configs/defaults.yaml`` -> ``presets[algo]`` -> ``sizes[size]`` ->
``sizes[size].per_algo[algo]`` -> ``overrides`` (``{"model.deter": 256, ...}``; the CLI
flags and ``--set key=value`` end up here). Every layer may only name keys that exist in
the defaults, and every value must have the default's type (ints are accepted where a
float is expected) and, for enumerated keys, one of the allowed values. Violations raise
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import re
from importlib import resources
from typing import Any, Mapping

import yaml

ALGOS = ("v1", "v2", "v3")
SIZES = ("debug", "S", "M")

#: Enumerated keys and their allowed values (checked after all layers are applied).
CHOICES: dict[str, tuple] = {
    "algo": ALGOS,
    "size": SIZES,
    "device": ("auto", "cpu", "cuda"),
    "backend": ("auto", "fused", "ref"),
    "matmul_precision": ("highest", "high", "medium"),
    "env_opts.obs": ("auto", "proprio", "pixels"),
    "model.cell": ("gru", "ln_gru", "block_gru"),
    "model.std_act": ("softplus", "abs", "sigmoid", "sigmoid2"),
    "model.mean_act": ("none", "tanh5"),
    "model.min_std_mode": ("add", "clamp"),
    "model.initial": ("zeros", "learned"),
    "model.norm": ("layer", "rms", "none"),
    "behavior.norm": ("auto", "layer", "rms", "none"),
    "model.act": ("silu", "elu", "tanh", "gelu"),
    "model.decoder": ("mse", "symlog_mse"),
    "model.reward_head": ("mse", "twohot"),
    "model.kl": ("free_bits", "balance"),
    "behavior.actor_head": ("auto", "tanh_normal", "bounded_normal"),
    "behavior.actor_grad": ("auto", "reinforce", "dynamics"),
    "behavior.critic": ("mse", "symlog_mse", "twohot"),
    "behavior.slow_critic": ("ema", "target", "none"),
}

INF = float("inf")

#: The range of every numeric key: ``(low, high)``, both inclusive, or ``(low, high,
#: "open")`` for a lower bound that is excluded (a step size, a standard deviation).
#: NaN and infinities are rejected everywhere. tests check that every numeric key of
#: the defaults has an entry here.
RANGES: dict[str, tuple] = {
    "steps": (0, INF), "seed": (0, 2**32 - 1), "envs": (1, INF), "threads": (0, INF),
    "env_opts.action_repeat": (1, 1000), "env_opts.time_limit": (0, INF),
    "env_opts.image_size": (8, 1024), "env_opts.camera": (-1, 1000),
    "replay.capacity": (1, INF), "replay.chunk": (1, INF),
    "run.batch_size": (1, INF), "run.batch_length": (2, INF), "run.train_ratio": (0, INF),
    "run.prefill": (0, INF), "run.pretrain": (0, INF), "run.log_every": (1, INF),
    "run.checkpoint_every": (1, INF), "run.max_nonfinite": (1, INF),
    "model.deter": (1, INF), "model.hidden": (1, INF), "model.stoch": (1, INF),
    "model.classes": (0, INF), "model.blocks": (1, INF), "model.dynlayers": (1, 64),
    "model.unimix": (0.0, 1.0), "model.min_std": (0.0, INF, "open"),
    "model.units": (1, INF), "model.layers": (0, 64), "model.cnn_depth": (1, INF),
    "model.bins": (3, INF), "model.kl_free": (0.0, INF), "model.kl_dyn": (0.0, INF),
    "model.kl_rep": (0.0, INF), "model.kl_balance": (0.0, 1.0), "model.kl_scale": (0.0, INF),
    "model.reward_scale": (0.0, INF), "model.cont_scale": (0.0, INF),
    "model.lr": (0.0, INF), "model.eps": (0.0, INF, "open"),
    "model.grad_clip": (0.0, INF, "open"),
    "behavior.horizon": (1, INF), "behavior.discount": (0.0, 1.0),
    "behavior.lambda_": (0.0, 1.0), "behavior.actor_lr": (0.0, INF),
    "behavior.critic_lr": (0.0, INF), "behavior.eps": (0.0, INF, "open"),
    "behavior.grad_clip": (0.0, INF, "open"), "behavior.entropy": (0.0, INF),
    "behavior.min_std": (0.0, INF, "open"), "behavior.max_std": (0.0, INF, "open"),
    "behavior.slow_fraction": (0.0, 1.0), "behavior.slow_reg": (0.0, INF),
    "behavior.return_norm_decay": (0.0, 1.0), "behavior.return_norm_low": (0.0, 1.0),
    "behavior.return_norm_high": (0.0, 1.0),
}


def _num(x):
    return int(x) if float(x).is_integer() else x


def _check_range(key: str, value) -> None:
    import math
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}")
    low, high, *opened = RANGES[key]
    above = value > low if opened else value >= low
    if not (above and value <= high):
        lo, hi = _num(low), _num(high)
        if high == INF:
            what = f"> {lo}" if opened else f">= {lo}"
        else:
            what = f"in ({lo}, {hi}]" if opened else f"in [{lo}, {hi}]"
        raise ConfigError(f"config key {key!r} must be {what}, got {value!r}")


_LAYER_KEYS = ("presets", "sizes")

#: Keys that may differ from a saved run's config when resuming it.
RESUMABLE = frozenset({"steps", "device", "threads", "run.progress", "run.log_every",
                       "run.checkpoint_every", "run.max_nonfinite"})


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key."""


class Config(dict):
    """A nested dict with attribute access (``cfg.model.deter``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}

    def get_path(self, path: str) -> Any:
        node: Any = self
        for part in path.split("."):
            node = node[part]
        return node


def _wrap(d: Mapping) -> Config:
    return Config({k: _wrap(v) if isinstance(v, Mapping) else v for k, v in d.items()})


def read_defaults() -> dict:
    """The raw defaults file: top-level values plus ``presets`` and ``sizes``."""
    text = resources.files("dreamer_fast.configs").joinpath("defaults.yaml").read_text()
    return yaml.safe_load(text)


#: A number with an exponent and no dot (``1e-4``, ``3E+5``): YAML 1.2 reads it as a float,
#: YAML 1.1 (PyYAML) as a string. Also used for the peer configs the benchmarks read.
YAML11_STRING_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _check_type(key: str, default: Any, value: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} expects true/false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} expects an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, str) and YAML11_STRING_FLOAT.fullmatch(value.strip()):
            # YAML 1.1 reads exponents without a dot ("1e-4") as strings
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} expects a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} expects a string, got {value!r}")
        return value
    if default is None:
        return value
    raise ConfigError(f"config key {key!r}: unsupported default type {type(default).__name__}")


def _merge(base: dict, layer: Mapping, where: str, prefix: str = "") -> None:
    for key, value in layer.items():
        path = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key {path!r} (in {where}); known keys at this "
                              f"level: {sorted(base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {path!r} is a section; set its entries "
                                  f"({path}.<key>=...), got {value!r}")
            _merge(base[key], value, where, path + ".")
        else:
            if isinstance(value, Mapping):
                raise ConfigError(f"config key {path!r} is a value, not a section")
            base[key] = _check_type(path, base[key], value)


def nest(flat: Mapping[str, Any]) -> dict:
    """``{"model.deter": 3}`` -> ``{"model": {"deter": 3}}``."""
    out: dict = {}
    for path, value in flat.items():
        parts = path.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {path!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"model.deter=256"`` -> ``("model.deter", 256)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e}") from None
    return key, value


def validate(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        value = cfg.get_path(key)
        if value not in allowed:
            raise ConfigError(f"config key {key!r} must be one of {list(allowed)}, got {value!r}")
    for key in RANGES:
        _check_range(key, cfg.get_path(key))
    m = cfg.model
    if m.classes == 1:
        raise ConfigError("config key 'model.classes' must be 0 (Gaussian latents) or >= 2, "
                          "got 1")
    b = cfg.behavior
    if b.min_std > b.max_std:
        raise ConfigError(f"config key 'behavior.min_std' ({b.min_std}) must be <= "
                          f"'behavior.max_std' ({b.max_std})")
    if b.return_norm_low >= b.return_norm_high:
        raise ConfigError("config keys 'behavior.return_norm_low' must be < "
                          "'behavior.return_norm_high'")
    for key, default in (("cell_norm", True), ("cell_state_first", False)):
        if m.cell != "ln_gru" and m[key] != default:
            raise ConfigError(f"config key 'model.{key}' must be {str(default).lower()} unless "
                              f"'model.cell' is ln_gru, got cell {m.cell!r}")
    if m.cell == "block_gru" and m.deter % m.blocks:
        raise ConfigError(f"config key 'model.blocks' ({m.blocks}) must divide 'model.deter' "
                          f"({m.deter}) for the block_gru cell")
    if cfg.run.batch_size * cfg.run.batch_length > cfg.replay.capacity:
        raise ConfigError("config key 'replay.capacity' must hold at least one batch "
                          "(run.batch_size * run.batch_length steps)")


def load_config(algo: str | None = None, size: str | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """The merged, validated configuration (see the module docstring).

    ``algo``/``size`` None take the defaults' values; ``overrides`` is a flat mapping of
    dotted keys (it may also set ``algo`` and ``size``, which then pick the presets)."""
    raw = read_defaults()
    layers = {k: raw.pop(k) for k in _LAYER_KEYS}
    base = copy.deepcopy(raw)
    flat = dict(overrides or {})
    algo = flat.pop("algo", algo) or base["algo"]
    size = flat.pop("size", size) or base["size"]
    if algo not in ALGOS:
        raise ConfigError(f"config key 'algo' must be one of {list(ALGOS)}, got {algo!r}")
    if size not in SIZES:
        raise ConfigError(f"config key 'size' must be one of {list(SIZES)}, got {size!r}")
    base["algo"], base["size"] = algo, size
    _merge(base, layers["presets"].get(algo) or {}, f"preset {algo}")
    size_layer = dict(layers["sizes"].get(size) or {})
    per_algo = size_layer.pop("per_algo", {}) or {}
    _merge(base, size_layer, f"size {size}")
    _merge(base, per_algo.get(algo) or {}, f"size {size} for {algo}")
    _merge(base, nest(flat), "overrides")
    cfg = _wrap(base)
    validate(cfg)
    return cfg


def from_dict(d: Mapping) -> Config:
    """A config saved in a checkpoint, checked against today's defaults."""
    d = dict(d)
    algo, size = d.get("algo"), d.get("size")
    cfg = load_config(algo, size)
    base = cfg.to_dict()
    _merge(base, {k: v for k, v in d.items() if k not in ("algo", "size")}, "saved config")
    out = _wrap(base)
    validate(out)
    return out


def flatten(d: Mapping, prefix: str = "") -> dict:
    """``{"model": {"deter": 3}}`` -> ``{"model.deter": 3}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_differences(saved: Mapping, cfg: Mapping) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, new value)`` of every non-resumable key that differs."""
    a, b = flatten(saved), flatten(cfg)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in RESUMABLE and a.get(k) != b.get(k)]
