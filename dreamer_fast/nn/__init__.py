"""Modules built on the fused ops; each takes ``backend='auto'|'fused'|'ref'``."""

from dreamer_fast.nn.cells import BlockGRUCell, GRUCell, LNGRUCell

__all__ = ["BlockGRUCell", "GRUCell", "LNGRUCell"]
