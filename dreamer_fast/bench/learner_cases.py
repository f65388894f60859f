"""Benchmark case of a full learner update (world model + actor-critic), fused vs
reference backend.

Both agents are built from the same config and hold the same initial parameters; each
timed run is one :meth:`dreamer_fast.agents.agent.Agent.update` on a fixed synthetic
batch (``B x T`` proprio steps). The parameters drift apart over the repeats (each agent
trains on its own), which does not change the work an update does.
"""

from __future__ import annotations

import numpy as np
import torch

from dreamer_fast.agents.agent import Agent
from dreamer_fast.agents.config import load_config
from dreamer_fast.bench import memory
from dreamer_fast.bench.timing import Prepare

MODES = ("update",)


def make_pair(algo: str, size: str, device: torch.device, *, obs_dim: int = 5,
              action_size: int = 1, discrete: bool = False,
              overrides: dict | None = None) -> dict[str, Agent]:
    agents = {}
    state = None
    for name, backend in (("fast", "fused"), ("eager", "ref")):
        cfg = load_config(algo, size, {"backend": backend, **(overrides or {})})
        torch.manual_seed(0)
        agent = Agent(cfg, "vector", (obs_dim,), action_size, discrete, device)
        if state is None:
            state = agent.state_dict()
        else:
            agent.load_state_dict(state)
        agents[name] = agent
    return agents


def synthetic_batch(agent: Agent, seed: int = 0) -> dict[str, np.ndarray]:
    cfg = agent.cfg
    B, T = cfg.run.batch_size, cfg.run.batch_length
    rng = np.random.default_rng(seed)
    obs_dim = agent.wm.encoder.net[0].in_features
    A = agent.action_size
    if agent.discrete:
        action = np.eye(A, dtype=np.float32)[rng.integers(0, A, (B, T))]
    else:
        action = rng.uniform(-1, 1, (B, T, A)).astype(np.float32)
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    return {"vector": rng.normal(size=(B, T, obs_dim)).astype(np.float32), "action": action,
            "reward": rng.normal(size=(B, T)).astype(np.float32), "is_first": is_first,
            "is_last": np.zeros((B, T), bool), "is_terminal": np.zeros((B, T), bool)}


def saved_for_backward_bytes(agent: Agent, batch: dict[str, np.ndarray]) -> int:
    """Bytes autograd keeps for the backward passes of one update: every tensor saved while
    :meth:`Agent.update` builds its graphs (the world model's, then the behaviour's; each
    is freed by its own backward), seen through ``saved_tensors_hooks``, counted once per
    storage (a saved view keeps its whole storage alive), parameters left out. The sum of
    both graphs: an upper bound of the peak, which is the larger of the two."""
    return memory.saved_for_backward_bytes(lambda: agent.update(batch), agent.parameters())


def update_case(agent: Agent, batch: dict[str, np.ndarray]) -> Prepare:
    def prepare():
        return lambda: agent.update(batch)
    return prepare
