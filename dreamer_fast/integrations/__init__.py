"""Drop-in acceleration of other Dreamer codebases' own modules on dreamer_fast's ops.

One module per peer codebase; each maps the peer's parameters to the flat list of an
:class:`~dreamer_fast.ops.RSSMSpec` **in place** (the peer's own ``nn.Parameter``
objects, read at every call: its optimiser, checkpoints and ``.to()`` keep working) and
replaces the peer module's methods on that one instance, with the peer's signatures and
return types:

* :mod:`dreamer_fast.integrations.nm512` — NM512/dreamerv3-torch (``networks.RSSM``,
  ``tools.lambda_return``). NM512/r2dreamer has a different RSSM (a block GRU with a
  Gumbel-softmax sampler) and is refused with the reason, see that module.
* :mod:`dreamer_fast.integrations.sheeprl` — sheeprl's DreamerV3 ``RSSM`` and
  ``compute_lambda_values``.
* :mod:`dreamer_fast.integrations.torchrl` — TorchRL's Dreamer value estimator.

A peer configuration that the ops cannot reproduce exactly raises
:class:`UnsupportedPeerConfig` naming the option; nothing silently runs a different
model. Imports of the peers themselves are never made here: the integrations work on
the module objects the user passes in.
"""

from dreamer_fast.integrations._common import UnsupportedPeerConfig

__all__ = ["UnsupportedPeerConfig"]
