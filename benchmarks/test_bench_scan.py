"""pytest-benchmark timings of the λ-return, fast op vs eager reference.

Run:  python -m pytest benchmarks -q --benchmark-only
(`dreamer-fast bench` prints the interleaved ratio table; this file gives the same
comparison in pytest-benchmark's format, e.g. for --benchmark-compare across commits.)
"""

import pytest
import torch

from dreamer_fast.bench import scan_cases

IMPLS = scan_cases.implementations(with_compile=False)


@pytest.mark.parametrize("T,B", [(15, 4096), (64, 1024)])
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_lambda_return(benchmark, impl, mode, T, B):
    inputs = scan_cases.ScanInputs.make(T, B, torch.device("cpu"), torch.float32)
    prepare = scan_cases.make_candidates(IMPLS[impl], inputs, mode)
    benchmark.group = f"lambda_return {mode} T={T} B={B}"
    benchmark(lambda: prepare()())
