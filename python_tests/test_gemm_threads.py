"""How many threads our CPU ops give their work under each OpenMP wait policy
(csrc/common/gemm.h: ``product_threads``, ``SequenceThreads``).

libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it, and so does the extension;
each policy is therefore checked in a child process of its own:

* with the policy unset (libgomp's default: idle workers spin), a product under 2^26
  multiply-adds runs on one thread, a larger one on all of torch's threads; with
  ``PASSIVE`` every product gets torch's count;
* a sequence op of few rows (the fused observe at B=16) runs on one thread while the
  waits spin, and gives torch's thread count back afterwards (also when it raises), with
  the same values and gradients as with two threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

CHILD = textwrap.dedent("""
    import json, torch
    import dreamer_fast._C as C
    from dreamer_fast.nn import RSSM
    torch.set_num_threads(2)
    out = {"small": C.gemm_product_threads(16, 1024, 1536),
           "large": C.gemm_product_threads(1024, 1024, 1536),
           "one_row_wide": C.gemm_product_threads(1, 4096, 4096)}
    torch.manual_seed(0)
    m = RSSM(stoch=4, classes=8, deter=64, hidden=64, action_size=2, embed_size=48,
             cell="ln_gru", norm="layer", act="silu", backend="fused")
    g = torch.Generator().manual_seed(1)
    B, T = 16, 5
    embed = torch.randn(B, T, 48, generator=g)
    action = torch.randn(B, T, 2, generator=g)
    first = torch.zeros(B, T, dtype=torch.bool)
    first[:, 0] = True
    torch.manual_seed(2)
    post, prior = m.observe(embed, action, first)
    loss = post["deter"].square().sum() + prior["deter"].sum()
    grads = torch.autograd.grad(loss, list(m.parameters()))
    out["threads_after"] = torch.get_num_threads()
    out["loss"] = loss.item()
    out["grad_sums"] = [x.double().abs().sum().item() for x in grads]
    print(json.dumps(out))
""")


def run_child(policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY",
                                                            "OMP_NUM_THREADS")}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    res = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def by_policy() -> dict:
    return {"default": run_child(None), "PASSIVE": run_child("PASSIVE"),
            "passive": run_child("passive")}


def test_spinning_waits_give_small_products_one_thread(by_policy):
    d = by_policy["default"]
    assert d["small"] == 1
    assert d["one_row_wide"] == 1  # 16.8M multiply-adds
    assert d["large"] == 2


@pytest.mark.parametrize("policy", ["PASSIVE", "passive"])
def test_passive_waits_keep_torch_thread_count(by_policy, policy):
    p = by_policy[policy]
    assert (p["small"], p["large"], p["one_row_wide"]) == (2, 2, 2)


@pytest.mark.parametrize("policy", ["default", "PASSIVE"])
def test_thread_count_is_given_back(by_policy, policy):
    p = by_policy[policy]
    assert p["threads_after"] == 2


def test_one_thread_gives_the_same_numbers(by_policy):
    d, p = by_policy["default"], by_policy["PASSIVE"]
    assert d["loss"] == pytest.approx(p["loss"], rel=1e-5)
    assert d["grad_sums"] == pytest.approx(p["grad_sums"], rel=1e-4)
