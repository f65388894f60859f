"""Benchmark case of a peer's full learner update next to ours, in one process
(``dreamer-fast bench --suite learner --peer nm512 --path CHECKOUT``).

Only NM512/dreamerv3-torch ("nm512") is supported. Its modules are imported from the
user's checkout (``--path``); nothing of it is bundled. What is timed per row, each
candidate once per interleaved round (:func:`dreamer_fast.bench.timing.interleaved`):

* ``nm512``: one training step of NM512's agent, run in place on its own modules: what
  its ``dreamer.py`` ``Dreamer._train`` calls, ``post, context, mets = wm._train(data)``
  then ``task_behavior._train(post, reward)`` with its reward function
  ``heads["reward"](dynamics.get_feat(s)).mode()`` (its world-model loss, backward, clip
  and Adam step; then its imagination rollout, λ-return, actor and critic losses, both
  backwards and Adam steps, and its slow-critic update), including the numpy-to-tensor
  conversion of its ``preprocess`` and the metrics it computes. Its ``Dreamer`` class
  itself is not built (it needs a logger, a dataset and ``exploration.py``'s imports);
  its ``_train`` is four lines and is replicated in :meth:`NM512Learner.update`, with the
  greedy behaviour (its ``expl_behavior`` default), so nothing else runs.
* ``fast`` / ``eager``: our :meth:`dreamer_fast.agents.agent.Agent.update` with the
  fused / reference backend on the same synthetic batch (``learner_cases``).

NM512's ``config`` is built like its ``dreamer.py`` builds it: the ``defaults`` section
of the checkout's ``configs.yaml`` (YAML 1.2 floats such as ``1e-4`` read as floats, as
ruamel reads them), then overrides (:func:`nm512_overrides`), each value through its
``tools.args_type``. The overrides match our sizes: ``dyn_deter``, ``dyn_hidden``,
``units``, ``dyn_stoch``, ``dyn_discrete``, the MLP encoder's and decoder's
``mlp_layers`` / ``mlp_units`` (our ``model.layers`` / ``model.units``),
``reward_head`` / ``cont_head`` / ``actor`` / ``critic`` layers, ``batch_size``,
``batch_length``, ``imag_horizon``, ``num_actions``, ``discount``, ``discount_lambda``,
``imag_gradient``; vector observations through its MLP encoder and decoder
(``mlp_keys: '.*'``, ``cnn_keys: '$^'``, as its ``dmc_proprio`` config); ``device:
cpu``, ``precision: 32``; ``compile: False`` (its ``Dreamer`` would wrap the modules in
``torch.compile``, which compiles ``forward`` only, never ``_train``, so the step runs
eagerly either way). Our side is our ``v3`` config with ``model.cell: ln_gru`` (NM512's
GRU: one linear over ``cat(input, deter)``, LayerNorm, no bias) and ``model.initial:
learned`` (NM512's ``initial: learned``); NM512 gets our discount and λ. The parameter
counts of both (world model, actor, critic) are in the notes and match exactly at the
debug and S sizes.

Two rows per size, one per actor gradient on both sides: ``reinforce`` (our v3's, and
NM512's ``imag_gradient`` in its discrete-action configs) and ``dynamics`` (NM512's
``configs.yaml`` default, which its continuous-action configs keep). Observations: 5-dim
vectors, one continuous action (NM512's ``normal`` actor = our ``bounded_normal``).

Environment-specific stubs, the smallest faithful ones: the observation space is an
object with ``.spaces`` mapping ``vector``, ``is_first``, ``is_last`` and
``is_terminal`` to objects with a ``.shape`` (what ``WorldModel`` reads of a gym
``Dict``); its ``preprocess`` divides ``data["image"]`` by 255 unconditionally, so the
batch carries a ``[B, T, 1, 1, 1]`` uint8 ``image`` placeholder that no encoder or
decoder reads (its encoder/decoder keys select ``vector`` only).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
import sys
import warnings
from pathlib import Path
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from dreamer_fast.agents.config import YAML11_STRING_FLOAT
from dreamer_fast.bench.timing import Prepare

#: Peers the learner suite can time.
PEERS = ("nm512",)

#: Files of a dreamerv3-torch checkout the nm512 rows need.
NM512_FILES = ("models.py", "networks.py", "tools.py", "configs.yaml")

def check_peer(peer: str | None, path: Path | None) -> None:
    """Raises ``SystemExit`` with a clear message for an unsupported ``peer``, a missing
    ``path``, or a ``path`` without the peer's files."""
    if peer is None:
        return
    if peer not in PEERS:
        raise SystemExit(f"dreamer-fast bench: --peer {peer} is not supported for the learner "
                         f"suite (supported: {', '.join(PEERS)})")
    if path is None:
        raise SystemExit(f"dreamer-fast bench: --suite learner --peer {peer} needs --path "
                         "(the peer's checkout, e.g. a clone of NM512/dreamerv3-torch)")
    check_checkout(path)


def check_checkout(path: Path) -> Path:
    """``path`` resolved, after checking it holds :data:`NM512_FILES`."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise SystemExit(f"dreamer-fast bench: --path {path} is not a directory (expected a "
                         "NM512/dreamerv3-torch checkout)")
    missing = [f for f in NM512_FILES if not (path / f).is_file()]
    if missing:
        raise SystemExit(f"dreamer-fast bench: --path {path} is not a NM512/dreamerv3-torch "
                         f"checkout: missing {', '.join(missing)}")
    return path


def _yaml12_floats(value):
    if isinstance(value, dict):
        return {k: _yaml12_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml12_floats(v) for v in value]
    if isinstance(value, str) and YAML11_STRING_FLOAT.fullmatch(value):
        return float(value)
    return value


def _recursive_update(base: dict, update: dict) -> None:
    """``dreamer.py``'s ``recursive_update``: nested dicts merged key by key."""
    for key, value in update.items():
        if isinstance(value, dict) and key in base:
            _recursive_update(base[key], value)
        else:
            base[key] = value


def build_config(path: Path, overrides: dict, args_type=None) -> SimpleNamespace:
    """NM512's ``config`` namespace: ``configs.yaml`` ``defaults`` updated with
    ``overrides`` as ``dreamer.py`` does, each value through ``args_type`` (its
    ``tools.args_type``; ``None``: values as they are), plus ``num_actions`` (which its
    ``main`` sets from the action space) when given in ``overrides``."""
    import yaml

    configs = _yaml12_floats(yaml.safe_load((Path(path) / "configs.yaml").read_text()))
    defaults = configs["defaults"]
    extra = {k: v for k, v in overrides.items() if k not in defaults}
    unknown = set(extra) - {"num_actions"}
    if unknown:
        raise KeyError(f"not in NM512's configs.yaml defaults: {sorted(unknown)}")
    _recursive_update(defaults, {k: v for k, v in overrides.items() if k in defaults})
    values = {}
    for key, value in defaults.items():
        values[key] = args_type(value)(value) if args_type is not None else value
    values.update(extra)
    return SimpleNamespace(**values)


def nm512_overrides(cfg, action_size: int, imag_gradient: str = "reinforce",
                    device: str = "cpu") -> dict:
    """NM512 config values that match our config ``cfg`` (module docstring)."""
    m, b, r = cfg.model, cfg.behavior, cfg.run
    if m.classes <= 0:
        raise ValueError("the nm512 rows need discrete latents (model.classes > 0)")
    mlp = {"mlp_keys": ".*", "cnn_keys": "$^", "mlp_layers": m.layers, "mlp_units": m.units}
    return {
        "device": device,
        "compile": False, "precision": 32,
        "dyn_deter": m.deter, "dyn_hidden": m.hidden, "dyn_stoch": m.stoch,
        "dyn_discrete": m.classes, "dyn_rec_depth": m.dynlayers, "units": m.units,
        "unimix_ratio": m.unimix, "kl_free": m.kl_free, "dyn_scale": m.kl_dyn,
        "rep_scale": m.kl_rep, "encoder": dict(mlp), "decoder": dict(mlp),
        "reward_head": {"layers": m.layers}, "cont_head": {"layers": m.layers},
        "actor": {"layers": m.layers}, "critic": {"layers": m.layers},
        "batch_size": r.batch_size, "batch_length": r.batch_length,
        "imag_horizon": b.horizon, "discount": b.discount, "discount_lambda": b.lambda_,
        "imag_gradient": imag_gradient, "num_actions": action_size,
    }


#: Our overrides for the rows next to NM512 (module docstring).
OUR_OVERRIDES = {"model.cell": "ln_gru", "model.initial": "learned"}


def nm512_batch(batch: dict[str, np.ndarray], obs_key: str = "vector") -> dict[str, np.ndarray]:
    """Our synthetic batch as NM512's dataset yields it: the same arrays (``reward``,
    ``is_*`` ``[B, T]``), observations under ``vector``, plus the ``image`` placeholder
    its ``preprocess`` divides by 255 (module docstring)."""
    B, T = batch["is_first"].shape
    out = {"vector": batch[obs_key], "action": batch["action"], "reward": batch["reward"]}
    for k in ("is_first", "is_last", "is_terminal"):
        out[k] = batch[k]
    out["image"] = np.zeros((B, T, 1, 1, 1), np.uint8)
    return out


def _space(obs_dim: int):
    shape = lambda *s: SimpleNamespace(shape=s)  # noqa: E731
    return SimpleNamespace(spaces={"vector": shape(obs_dim), "is_first": shape(),
                                   "is_last": shape(), "is_terminal": shape()})


class NM512Learner:
    """NM512's ``WorldModel`` and ``ImagBehavior`` built from a checkout, and one
    training step (``Dreamer._train``) on a batch."""

    def __init__(self, path: Path, overrides: dict, obs_dim: int, seed: int = 0) -> None:
        path = check_checkout(path)
        models, tools = _import_nm512(path)
        self.config = build_config(path, overrides, tools.args_type)
        torch.manual_seed(seed)
        # its constructors print shapes and parameter counts (parameter_counts has them)
        with _mlp_device_default(models.networks.MLP, self.config.device), \
                contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # its torch.cuda.amp.GradScaler
            self.wm = models.WorldModel(_space(obs_dim), None, 0, self.config)
            self.behavior = models.ImagBehavior(self.config, self.wm)
        self.wm.to(self.config.device)
        self.behavior.to(self.config.device)
        self.metrics: dict[str, list] = {}

    def update(self, data: dict[str, np.ndarray]) -> None:
        """``Dreamer._train(data)`` with the greedy behaviour (its default)."""
        with warnings.catch_warnings():  # its torch.cuda.amp calls are deprecated
            warnings.simplefilter("ignore", FutureWarning)
            self._train(data)

    def _train(self, data: dict[str, np.ndarray]) -> None:
        metrics = {}
        post, context, mets = self.wm._train(data)
        metrics.update(mets)
        wm = self.wm
        reward = lambda f, s, a: wm.heads["reward"](wm.dynamics.get_feat(s)).mode()  # noqa
        metrics.update(self.behavior._train(post, reward)[-1])
        for name, value in metrics.items():  # its _metrics, cleared like its log step
            self.metrics[name] = [value]

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of the world model, actor and critic (slow critic left out)."""
        count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
        return {"world model": count(self.wm), "actor": count(self.behavior.actor),
                "critic": count(self.behavior.value)}


@contextlib.contextmanager
def _mlp_device_default(mlp_class, device: str):
    """``networks.MLP``'s ``device`` default (``"cuda"``) set to ``device`` for the block:
    its encoder, decoder and actor MLPs are built without a device argument, and with the
    default one each makes a (never used) ``torch.tensor((std,), device="cuda")``, which
    fails on a torch without CUDA."""
    init = mlp_class.__init__
    names = inspect.signature(init).parameters
    defaults = init.__defaults__
    first = len(names) - len(defaults)
    index = list(names).index("device") - first
    init.__defaults__ = defaults[:index] + (device,) + defaults[index + 1:]
    try:
        yield
    finally:
        init.__defaults__ = defaults


def _import_nm512(path: Path):
    """``(models, tools)`` of the checkout at ``path`` (its top-level modules ``tools``,
    ``networks``, ``models``)."""
    sys.path.insert(0, str(path))
    try:
        mods = {name: importlib.import_module(name) for name in ("tools", "networks", "models")}
    except ImportError as e:
        raise SystemExit(f"dreamer-fast bench: importing NM512's modules from --path {path} "
                         f"failed ({e}); install the missing package") from e
    finally:
        sys.path.remove(str(path))
    for name, mod in mods.items():
        if Path(getattr(mod, "__file__", "") or "").resolve().parent != path:
            raise SystemExit(f"dreamer-fast bench: a module named {name!r} from "
                             f"{getattr(mod, '__file__', '?')} was imported before NM512's; "
                             "run the nm512 rows in a fresh process")
    return mods["models"], mods["tools"]


def our_parameter_counts(agent) -> dict[str, int]:
    """The same counts for our :class:`~dreamer_fast.agents.agent.Agent` (its slow
    critic, a separate module, left out)."""
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    return {"world model": count(agent.wm), "actor": count(agent.ac.actor),
            "critic": count(agent.ac.critic)}


def nm512_case(learner: NM512Learner, data: dict[str, np.ndarray]):
    def prepare():
        return lambda: learner.update(data)
    return prepare


#: Actor gradients of the nm512 rows: ``reinforce`` (our v3's; NM512's for its discrete
#: action configs) and ``dynamics`` (NM512's default, its continuous-action configs).
ACTOR_GRADS = ("reinforce", "dynamics")

#: Our observation and action sizes of the rows (``learner_cases``' defaults: 5-dim
#: vector observations, one continuous action, as Pendulum-v1).
OBS_DIM, ACTION_SIZE = 5, 1


@dataclass
class PeerRow:
    case: str
    candidates: dict[str, Prepare]
    notes: list[str]


def nm512_row(path: Path, size: str, actor_grad: str, device: torch.device) -> PeerRow:
    """The ``fast``, ``eager`` and ``nm512`` candidates of one row: our v3 at ``size``
    with :data:`OUR_OVERRIDES` and ``actor_grad``, and NM512's agent matched to it."""
    from dreamer_fast.bench import learner_cases

    pair = learner_cases.make_pair(
        "v3", size, device, obs_dim=OBS_DIM, action_size=ACTION_SIZE,
        overrides={**OUR_OVERRIDES, "behavior.actor_grad": actor_grad})
    cfg = pair["fast"].cfg
    batch = learner_cases.synthetic_batch(pair["fast"])
    dev = "cuda" if device.type == "cuda" else "cpu"
    peer = NM512Learner(path, nm512_overrides(cfg, ACTION_SIZE, actor_grad, dev), OBS_DIM)
    cands = {n: learner_cases.update_case(a, batch) for n, a in pair.items()}
    cands["nm512"] = nm512_case(peer, nm512_batch(batch))
    m, r = cfg.model, cfg.run
    case = (f"v3 vs nm512, size {size} (deter {m.deter}, units {m.units}, "
            f"{m.stoch}x{m.classes} latents) B{r.batch_size}xT{r.batch_length} "
            f"H{cfg.behavior.horizon}, actor grad {actor_grad}")
    ours, theirs = our_parameter_counts(pair["fast"]), peer.parameter_counts()
    fmt = lambda c: ", ".join(f"{k} {v:,}" for k, v in c.items())  # noqa: E731
    commit = checkout_commit(path)
    notes = [f"nm512 checkout: commit {commit or 'unknown (not a git work tree)'}",
             f"size {size}: parameters ours {fmt(ours)}; nm512 {fmt(theirs)}",
             DIFFERENCES]
    return PeerRow(case, cands, notes)


def checkout_commit(path: Path) -> str | None:
    """The commit checked out in the git work tree whose top is ``path``, else ``None``
    (also for a folder inside some other repository)."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel", "HEAD"],
                             check=True, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if len(lines) != 2 or Path(lines[0]).resolve() != Path(path).resolve():
        return None
    return lines[1] if re.fullmatch(r"[0-9a-f]{40}", lines[1]) else None


#: What is the same and what differs at matched sizes (a note under the table).
DIFFERENCES = (
    "nm512 rows: the same architecture and sizes on both sides (parameter counts above): "
    "SiLU + LayerNorm(eps 1e-3) MLPs without biases, symlog inputs, a GRU with one "
    "LayerNorm'd linear over cat(input, deter) and a learned initial state, 1% unimix "
    "categorical latents, 255 two-hot bins over symlog [-20, 20] for reward and critic, "
    "a symlog-MSE vector decoder, a Bernoulli continue head, the actor's tanh-mean normal "
    "with sigmoid std in [0.1, 1] and actions clipped to [-1, 1], KL free bits 1 with "
    "dyn 0.5 / rep 0.1, an EMA slow critic (0.02 each update) as a regulariser, "
    "percentile return normalisation, gradient clipping. What differs: our side uses "
    "model.cell ln_gru and model.initial learned (our v3 defaults are block_gru and "
    "zeros); the learning rates are each side's defaults (NM512 model 1e-4, actor and "
    "critic 3e-5; ours at debug 3e-4 / 1e-4 / 3e-4, at S the same as NM512's), which do "
    "not change the work; NM512 steps torch.optim.Adam in its default for-loop form on "
    "the CPU, ours the fused one; NM512's own code also runs what it computes each step "
    "by design: a second critic forward on the imagined features for the REINFORCE "
    "baseline, an extra actor forward for the entropy, the posterior and prior "
    "entropies, tensor statistics and host reads of its metrics, and in REINFORCE mode "
    "its rollout keeps the autograd graph through the RSSM steps (its actions are "
    "reparameterised samples); obs 5-dim vector, 1 continuous action, synthetic data")
