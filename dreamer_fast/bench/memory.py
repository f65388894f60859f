"""Memory that autograd keeps for a backward, as the benchmarks report it."""

from __future__ import annotations

from typing import Callable, Iterable

import torch


def saved_for_backward_bytes(run: Callable[[], object],
                             params: Iterable[torch.Tensor]) -> int:
    """Bytes of every tensor autograd saves while ``run()`` builds its graph(s) (an eager
    graph's saved activations, or a fused op's ``save_for_backward``), seen through
    ``torch.autograd.graph.saved_tensors_hooks``, counted by whole storage (a saved view
    keeps its storage alive) and once per storage; the storages of ``params`` are left
    out. ``run``'s result is dropped before returning."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in skip and st.nbytes():
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(storages.values())
