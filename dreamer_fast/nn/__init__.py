"""Modules built on the fused ops; each takes ``backend='auto'|'fused'|'ref'``."""

from dreamer_fast.nn.actor import Actor, BoundedNormal, OneHotCategorical, TanhNormal
from dreamer_fast.nn.cells import BlockGRUCell, GRUCell, LNGRUCell
from dreamer_fast.nn.dense import MLP, Dense
from dreamer_fast.nn.rollout import draw_imagine_noise, imagine, imagine_ref
from dreamer_fast.nn.rollout_graph import ImagineGraph
from dreamer_fast.nn.rssm import RSSM

__all__ = [
    "Actor", "BoundedNormal", "OneHotCategorical", "TanhNormal", "BlockGRUCell", "Dense", "GRUCell",
    "LNGRUCell", "MLP", "RSSM", "imagine", "imagine_ref", "draw_imagine_noise", "ImagineGraph",
]
