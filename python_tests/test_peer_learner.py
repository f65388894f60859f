"""``dreamer-fast bench --suite learner --peer nm512 --path CHECKOUT``
(dreamer_fast/bench/peer_learner.py).

No NM512 checkout is needed: the CLI's errors, the config built from a ``configs.yaml``,
the overrides matched to our sizes, the batch, and the whole row (ours timed next to a
stand-in agent) run on a small checkout laid out as NM512's (``configs.yaml``,
``tools.py``, ``networks.py``, ``models.py``) written by the test. The last test runs
NM512's real modules when ``DREAMER_FAST_NM512`` names a checkout, and is skipped
otherwise.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamer_fast.agents.config import load_config
from dreamer_fast.bench import peer_learner
from dreamer_fast.cli import main

_MODULES = ("tools", "networks", "models")

_FAKE_CONFIGS = """\
defaults:
  device: 'cuda:0'
  compile: True
  precision: 32
  model_lr: 1e-4
  steps: 1e6
  dyn_hidden: 512
  dyn_deter: 512
  dyn_stoch: 32
  dyn_discrete: 32
  dyn_rec_depth: 1
  units: 512
  unimix_ratio: 0.01
  kl_free: 1.0
  dyn_scale: 0.5
  rep_scale: 0.1
  size: [64, 64]
  encoder:
    {mlp_keys: '$^', cnn_keys: 'image', mlp_layers: 5, mlp_units: 1024, symlog_inputs: True}
  decoder:
    {mlp_keys: '$^', cnn_keys: 'image', mlp_layers: 5, mlp_units: 1024}
  actor: {layers: 2, dist: 'normal', lr: 3e-5}
  critic: {layers: 2, dist: 'symlog_disc', lr: 3e-5}
  reward_head: {layers: 2, dist: 'symlog_disc'}
  cont_head: {layers: 2}
  batch_size: 16
  batch_length: 64
  imag_horizon: 15
  discount: 0.997
  discount_lambda: 0.95
  imag_gradient: 'dynamics'
other:
  units: 7
"""

_FAKE_TOOLS = '''
def args_type(default):
    def parse(x):
        return tuple(x) if isinstance(default, (list, tuple)) else x
    return parse
'''

# its MLP's signature: `device` defaults to "cuda" and is used at construction
_FAKE_NETWORKS = '''
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, inp_dim, shape, layers, units, act="SiLU", norm=True,
                 dist="normal", std=1.0, device="cuda", name="NoName"):
        super().__init__()
        self.device_arg = device
        self._std = torch.tensor((std,), device=device)
        self.net = nn.Linear(inp_dim, units)
'''

_FAKE_MODELS = '''
import torch
from torch import nn

import networks
import tools

CALLS = []


class Dynamics(nn.Module):
    def get_feat(self, state):
        return state["deter"]


class WorldModel(nn.Module):
    def __init__(self, obs_space, act_space, step, config):
        super().__init__()
        print("Encoder MLP shapes:", {k: v.shape for k, v in obs_space.spaces.items()})
        self.obs_shapes = {k: v.shape for k, v in obs_space.spaces.items()}
        self.encoder = networks.MLP(obs_space.spaces["vector"].shape[0], None, 1, 3)
        self.dynamics = Dynamics()
        self.heads = nn.ModuleDict({"reward": RewardHead()})
        self._config = config

    def _train(self, data):
        CALLS.append(("wm", sorted(data)))
        x = torch.tensor(data["vector"], dtype=torch.float32)
        deter = self.encoder.net(x).detach()
        return {"deter": deter}, {}, {"model_loss": 1.0}


class _Mode:
    def __init__(self, x):
        self.x = x

    def mode(self):
        return self.x


class RewardHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3, 1)

    def forward(self, feat):
        return _Mode(self.net(feat))


class ImagBehavior(nn.Module):
    def __init__(self, config, world_model):
        super().__init__()
        self._world_model = world_model
        self.actor = networks.MLP(3, (config.num_actions,), 1, 4)
        self.value = networks.MLP(3, (), 1, 5)

    def _train(self, start, objective):
        # the reward function is called as NM512's is: on (feat, state, action)
        reward = objective(None, start, None)
        CALLS.append(("behavior", tuple(reward.shape)))
        return None, None, None, None, {"actor_loss": 2.0}
'''


def _write_checkout(root: Path, files=("configs.yaml", "tools.py", "networks.py",
                                       "models.py")) -> Path:
    texts = {"configs.yaml": _FAKE_CONFIGS, "tools.py": _FAKE_TOOLS,
             "networks.py": _FAKE_NETWORKS, "models.py": _FAKE_MODELS}
    root.mkdir(parents=True, exist_ok=True)
    for name in files:
        (root / name).write_text(texts[name])
    return root


@pytest.fixture
def fresh_modules():
    """Top-level ``tools``/``networks``/``models`` imported by a test are dropped after it
    (and before: none of another checkout may leak in)."""
    saved = {m: sys.modules.pop(m) for m in _MODULES if m in sys.modules}
    yield
    for m in _MODULES:
        sys.modules.pop(m, None)
    sys.modules.update(saved)


# --------------------------------------------------------------------------------------
# CLI errors (raised before any work, also without the native extension)
# --------------------------------------------------------------------------------------

def test_learner_peer_without_path_is_an_error():
    with pytest.raises(SystemExit, match="--peer nm512 needs --path"):
        main(["bench", "--suite", "learner", "--peer", "nm512"])


@pytest.mark.parametrize("peer", ["sheeprl", "torchrl"])
def test_other_peers_are_not_supported_for_the_learner_suite(peer, tmp_path):
    with pytest.raises(SystemExit, match=f"--peer {peer} is not supported for the learner "
                                         "suite"):
        main(["bench", "--suite", "learner", "--peer", peer, "--path", str(tmp_path)])


def test_a_path_without_nm512_files_names_the_path_and_the_missing_file(tmp_path):
    root = _write_checkout(tmp_path / "co", files=("configs.yaml", "tools.py",
                                                    "networks.py"))
    with pytest.raises(SystemExit) as e:
        main(["bench", "--suite", "learner", "--peer", "nm512", "--path", str(root)])
    msg = str(e.value)
    assert str(root.resolve()) in msg and "missing models.py" in msg
    assert "configs.yaml" not in msg.split("missing")[1]
    with pytest.raises(SystemExit, match="missing models.py, networks.py, tools.py, "
                                         "configs.yaml"):
        main(["bench", "--suite", "learner", "--peer", "nm512", "--path", str(tmp_path)])
    with pytest.raises(SystemExit, match="is not a directory"):
        main(["bench", "--suite", "learner", "--peer", "nm512", "--path",
              str(tmp_path / "nothing")])


def test_peer_check_applies_to_the_learner_suite_only():
    peer_learner.check_peer(None, None)  # no peer: nothing to check
    # the integrations suite keeps its own message for a missing --path
    with pytest.raises(SystemExit, match="--suite integrations needs --peer and --path"):
        main(["bench", "--suite", "integrations", "--peer", "sheeprl"])


# --------------------------------------------------------------------------------------
# config, overrides and batch
# --------------------------------------------------------------------------------------

def test_build_config_reads_yaml12_floats_and_merges_overrides(tmp_path):
    root = _write_checkout(tmp_path)
    cfg = peer_learner.build_config(root, {"units": 64, "encoder": {"mlp_keys": ".*"},
                                           "num_actions": 3})
    assert cfg.model_lr == 1e-4 and isinstance(cfg.model_lr, float)
    assert cfg.steps == 1e6 and cfg.actor["lr"] == 3e-5
    assert cfg.units == 64 and cfg.num_actions == 3
    # nested dicts merged key by key, as dreamer.py's recursive_update
    assert cfg.encoder == {"mlp_keys": ".*", "cnn_keys": "image", "mlp_layers": 5,
                           "mlp_units": 1024, "symlog_inputs": True}
    assert cfg.size == [64, 64]
    with_type = peer_learner.build_config(root, {}, lambda d: (
        lambda x: tuple(x) if isinstance(d, list) else x))
    assert with_type.size == (64, 64)
    with pytest.raises(KeyError, match="not_a_key"):
        peer_learner.build_config(root, {"not_a_key": 1})


@pytest.mark.parametrize("size", ["debug", "S"])
@pytest.mark.parametrize("grad", ["reinforce", "dynamics"])
def test_overrides_match_our_sizes(size, grad):
    cfg = load_config("v3", size, dict(peer_learner.OUR_OVERRIDES))
    o = peer_learner.nm512_overrides(cfg, 2, grad)
    m = cfg.model
    assert (o["dyn_deter"], o["dyn_hidden"], o["units"]) == (m.deter, m.hidden, m.units)
    assert (o["dyn_stoch"], o["dyn_discrete"]) == (m.stoch, m.classes)
    assert (o["batch_size"], o["batch_length"], o["imag_horizon"]) == (
        cfg.run.batch_size, cfg.run.batch_length, cfg.behavior.horizon)
    assert o["imag_gradient"] == grad and o["num_actions"] == 2
    assert o["device"] == "cpu" and o["compile"] is False and o["precision"] == 32
    for part in ("encoder", "decoder"):
        assert o[part] == {"mlp_keys": ".*", "cnn_keys": "$^", "mlp_layers": m.layers,
                           "mlp_units": m.units}
    for part in ("reward_head", "cont_head", "actor", "critic"):
        assert o[part] == {"layers": m.layers}
    assert o["discount"] == cfg.behavior.discount
    if size == "debug":
        assert (m.deter, m.units, m.stoch, m.classes) == (64, 64, 8, 8)
    else:
        assert (m.deter, m.hidden, m.units, m.stoch, m.classes) == (512, 512, 512, 32, 32)
        assert cfg.run.batch_length == 64
    with pytest.raises(ValueError, match="discrete latents"):
        peer_learner.nm512_overrides(load_config("v1", size), 1)


def test_nm512_batch_carries_our_arrays_and_an_image_placeholder():
    B, T = 3, 4
    batch = {"vector": np.ones((B, T, 5), np.float32), "action": np.zeros((B, T, 1)),
             "reward": np.zeros((B, T)), "is_first": np.zeros((B, T), bool),
             "is_last": np.zeros((B, T), bool), "is_terminal": np.zeros((B, T), bool)}
    out = peer_learner.nm512_batch(batch)
    assert sorted(out) == ["action", "image", "is_first", "is_last", "is_terminal",
                           "reward", "vector"]
    for k in batch:
        assert out[k] is batch[k]
    assert out["image"].shape == (B, T, 1, 1, 1) and out["image"].dtype == np.uint8


# --------------------------------------------------------------------------------------
# the learner on a checkout laid out as NM512's
# --------------------------------------------------------------------------------------

def test_learner_builds_on_the_config_device_and_runs_dreamers_train(tmp_path, capsys,
                                                                     fresh_modules):
    root = _write_checkout(tmp_path)
    cfg = load_config("v3", "debug", dict(peer_learner.OUR_OVERRIDES))
    learner = peer_learner.NM512Learner(root, peer_learner.nm512_overrides(cfg, 1), 5)
    models, networks = sys.modules["models"], sys.modules["networks"]
    # MLPs built without a device argument got the config's device, not "cuda" ...
    assert learner.wm.encoder.device_arg == "cpu"
    assert learner.behavior.actor._std.device.type == "cpu"
    # ... and the class's default is restored afterwards
    assert networks.MLP(2, None, 1, 3, device="cpu").device_arg == "cpu"
    assert networks.MLP.__init__.__defaults__[-2] == "cuda"
    assert "Encoder MLP shapes" not in capsys.readouterr().out  # its prints are held back
    assert learner.wm.obs_shapes == {"vector": (5,), "is_first": (), "is_last": (),
                                     "is_terminal": ()}
    B, T = 2, 3
    data = peer_learner.nm512_batch({
        "vector": np.ones((B, T, 5), np.float32), "action": np.zeros((B, T, 1), np.float32),
        "reward": np.zeros((B, T), np.float32), "is_first": np.zeros((B, T), bool),
        "is_last": np.zeros((B, T), bool), "is_terminal": np.zeros((B, T), bool)})
    learner.update(data)
    assert models.CALLS == [("wm", sorted(data)), ("behavior", (B, T, 1))]
    assert learner.metrics == {"model_loss": [1.0], "actor_loss": [2.0]}
    counts = learner.parameter_counts()
    assert counts == {"world model": 5 * 3 + 3 + 3 * 1 + 1, "actor": 3 * 4 + 4,
                      "critic": 3 * 5 + 5}


def test_a_module_of_the_same_name_from_elsewhere_is_refused(tmp_path, fresh_modules):
    other = _write_checkout(tmp_path / "other")
    root = _write_checkout(tmp_path / "co")
    sys.path.insert(0, str(other))
    try:
        import tools  # noqa: F401  (the other checkout's)
    finally:
        sys.path.remove(str(other))
    with pytest.raises(SystemExit, match="'tools' from .*other.* was imported before"):
        peer_learner.NM512Learner(root, {}, 5)


def test_a_missing_dependency_is_named(tmp_path, fresh_modules):
    root = _write_checkout(tmp_path)
    (root / "tools.py").write_text("import not_a_package_of_anyone\n")
    with pytest.raises(SystemExit, match="not_a_package_of_anyone"):
        peer_learner.NM512Learner(root, {}, 5)


def test_bench_learner_with_peer_adds_an_nm512_column(tmp_path, monkeypatch, capsys,
                                                      fresh_modules):
    import dreamer_fast

    if not dreamer_fast.has_extension():
        pytest.fail(f"native extension missing: {dreamer_fast.extension_error()}")
    root = _write_checkout(tmp_path / "checkout")
    monkeypatch.setattr(peer_learner, "ACTOR_GRADS", ("reinforce",))
    out = tmp_path / "out"
    argv = ["bench", "--suite", "learner", "--quick", "--device", "cpu", "--repeats", "1",
            "--peer", "nm512", "--path", str(root), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["dreamer-fast", *argv])  # the recorded command
    assert main(argv) == 0
    files = list(out.iterdir())
    assert len(files) == 1 and files[0].name.endswith("-learner-nm512.md")
    text = files[0].read_text()
    assert str(root) not in text and "--path CHECKOUT" in text
    header = next(line for line in text.splitlines() if line.startswith("| case"))
    assert "nm512 (µs)" in header and "nm512/fast" in header
    row = next(line for line in text.splitlines() if "v3 vs nm512, size debug" in line)
    assert "actor grad reinforce" in row and "–" not in row
    assert "size debug: parameters ours world model 109,445" in text
    assert "nm512 world model 22, actor 16, critic 20" in text  # the stand-in's
    assert "nm512 checkout: commit unknown (not a git work tree)" in text


def test_checkout_commit_of_a_git_work_tree(tmp_path):
    import subprocess

    assert peer_learner.checkout_commit(tmp_path) is None
    try:
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c",
                        "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
                       check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no usable git")
    commit = peer_learner.checkout_commit(tmp_path)
    assert commit is not None and len(commit) == 40
    (tmp_path / "sub").mkdir()
    assert peer_learner.checkout_commit(tmp_path / "sub") is None  # not the work tree's top


# --------------------------------------------------------------------------------------
# NM512's real modules (skipped without a checkout; not counted as coverage)
# --------------------------------------------------------------------------------------

_CHECKOUT = os.environ.get("DREAMER_FAST_NM512")


@pytest.mark.skipif(not _CHECKOUT, reason="DREAMER_FAST_NM512 names no NM512 checkout")
@pytest.mark.parametrize("grad", ["reinforce", "dynamics"])
def test_real_nm512_matches_our_parameter_counts_and_trains(grad, fresh_modules):
    row = peer_learner.nm512_row(Path(_CHECKOUT), "debug", grad, torch.device("cpu"))
    ours, theirs = row.notes[1].split("; nm512 ")
    assert ours.split("ours ")[1] == theirs
    row.candidates["nm512"]()()
