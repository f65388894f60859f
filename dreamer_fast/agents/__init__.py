"""The Dreamer trainer: config, replay, world model, actor-critic, training loop."""

from dreamer_fast.agents.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
