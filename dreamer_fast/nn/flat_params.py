"""The conversions between a module and the flat parameter list of its spec.

A module that feeds the spec-taking ops of :mod:`dreamer_fast.ops` (``RSSM``, ``Actor``)
defines ``spec_params()``: its own parameter tensors in the order of its spec. This
mixin derives the rest from that one method, so the order is written once per module.
"""

from __future__ import annotations

import torch


class FlatParams:
    """Mixin for an ``nn.Module`` that defines ``spec_params() -> list[Tensor]``."""

    def spec_params(self) -> list[torch.Tensor]:  # pragma: no cover - defined by the module
        raise NotImplementedError

    def spec_param_names(self) -> list[str]:
        """The ``state_dict`` key of each entry of :meth:`spec_params`."""
        names = {id(p): n for n, p in self.named_parameters()}
        return [names[id(p)] for p in self.spec_params()]

    def spec_state_dict(self, params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """A flat list (as :meth:`spec_params`) as a ``state_dict`` of this module."""
        names = self.spec_param_names()
        if len(params) != len(names):
            raise ValueError(f"{type(self).__name__}: `params` must hold {len(names)} "
                             f"tensors, got {len(params)}")
        return dict(zip(names, params))

    def spec_params_from_state_dict(self, state_dict) -> list[torch.Tensor]:
        """The flat list (as :meth:`spec_params`) of a ``state_dict`` of this module."""
        return [state_dict[n] for n in self.spec_param_names()]
