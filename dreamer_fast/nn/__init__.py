"""Modules built on the fused ops; each takes ``backend='auto'|'fused'|'ref'``."""

from dreamer_fast.nn.cells import GRUCell, LNGRUCell

__all__ = ["GRUCell", "LNGRUCell"]
