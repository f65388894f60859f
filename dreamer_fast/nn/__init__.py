"""Modules built on the fused ops; each takes ``backend='auto'|'fused'|'ref'``."""

from dreamer_fast.nn.cells import BlockGRUCell, GRUCell, LNGRUCell
from dreamer_fast.nn.dense import MLP, Dense
from dreamer_fast.nn.rssm import RSSM

__all__ = ["BlockGRUCell", "Dense", "GRUCell", "LNGRUCell", "MLP", "RSSM"]
