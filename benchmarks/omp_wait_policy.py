"""Our CPU ops under the two OpenMP wait policies, on a loaded machine.

libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it, so each policy runs in its
own child process. The parent first starts ``--load`` busy processes (pure-Python spin
loops, one core each) to stand for the other jobs of a shared machine, then runs every
case in a child with ``OMP_WAIT_POLICY`` unset (libgomp's default: idle workers spin
before they sleep) and with ``PASSIVE``, and prints the median times and their ratio.

    python benchmarks/omp_wait_policy.py [--load 1] [--repeats 30] [--threads 2] [--rounds 3]

Cases (float32, forward + backward with the outputs' gradients given):
  lambda_return   fused λ-return, T=15, B=4096
  lambda_ref      the reference λ-return (a Python loop of torch ops), same sizes
  observe         fused RSSM observe, B=16, T=64, deter/hidden 512, 32x32 latents
  observe_ref     the same observe on the reference backend
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

CASES = ("lambda_return", "lambda_ref", "observe", "observe_ref")


def _spin() -> None:  # one busy core
    while True:
        pass


def _prepare(case: str):
    import torch

    from dreamer_fast.ops import lambda_return, lambda_return_ref
    if case.startswith("lambda"):
        op = lambda_return if case == "lambda_return" else lambda_return_ref
        g = torch.Generator().manual_seed(0)
        T, B = 15, 4096
        reward, value = torch.randn(T, B, generator=g), torch.randn(T, B, generator=g)
        pcont = torch.rand(T, B, generator=g)
        boot = torch.randn(B, generator=g)

        grad = torch.randn(T, B, generator=g)

        def run():
            # the output's gradient is given (no .sum().backward()): a torch reduction of
            # 61k elements is itself a parallel region that costs milliseconds beside a
            # busy process under the default policy, and it is not our op
            v = value.detach().requires_grad_()
            torch.autograd.grad(op(reward, v, pcont, boot, 0.95), v, grad)
        return run
    from dreamer_fast.bench.rssm_cases import make_pair
    model = make_pair("ln_gru", torch.device("cpu"), torch.float32)[
        "fast" if case == "observe" else "eager"]
    B, T = 16, 64
    g = torch.Generator().manual_seed(0)
    embed = torch.randn(B, T, model.embed_size, generator=g)
    action = torch.randn(B, T, model.action_size, generator=g)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True

    params = list(model.parameters())

    def run():
        post, prior = model.observe(embed, action, is_first)
        outs = [post["deter"], prior["deter"]]
        torch.autograd.grad(outs, params, [torch.ones_like(o) for o in outs],
                            allow_unused=True)
    return run


def child(cases: list[str], repeats: int, threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    out = {}
    for case in cases:
        run = _prepare(case)
        for _ in range(3):
            run()
        n = repeats if case.startswith("lambda") else max(3, repeats // 6)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        out[case] = statistics.median(times) * 1e3
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load", type=int, default=1, help="busy processes started first")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in the children")
    ap.add_argument("--rounds", type=int, default=3, help="children per policy, alternating")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cases = args.cases.split(",")
    if args.child:
        child(cases, args.repeats, args.threads)
        return
    spinners = [mp.Process(target=_spin, daemon=True) for _ in range(args.load)]
    for p in spinners:
        p.start()
    # the two policies take turns, `--rounds` children each, so that a change in the
    # machine's other load falls on both alike; each case reports the median of the
    # children's medians
    rounds: dict[str, list[dict]] = {"default": [], "PASSIVE": []}
    try:
        for _ in range(args.rounds):
            for policy in rounds:
                env = dict(os.environ)
                env.pop("OMP_WAIT_POLICY", None)
                if policy != "default":
                    env["OMP_WAIT_POLICY"] = policy
                cmd = [sys.executable, __file__, "--child", "--cases", args.cases,
                       "--repeats", str(args.repeats), "--threads", str(args.threads)]
                res = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                     check=True)
                rounds[policy].append(json.loads(res.stdout.strip().splitlines()[-1]))
    finally:
        for p in spinners:
            p.terminate()
    print(f"{args.load} busy process(es), {args.threads} torch threads, median ms "
          f"(forward + backward), {args.rounds} alternating rounds per policy")
    print(f"{'case':<16}{'default':>12}{'PASSIVE':>12}{'default/PASSIVE':>18}")
    for case in cases:
        d = statistics.median(r[case] for r in rounds["default"])
        p = statistics.median(r[case] for r in rounds["PASSIVE"])
        print(f"{case:<16}{d:>12.3f}{p:>12.3f}{d / p:>18.2f}")


if __name__ == "__main__":
    main()
