"""Smoke tests of the `dreamer-fast` command line (the README's main command)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dreamer_fast.cli import main


def test_bench_quick_runs_and_prints_ratios(capsys):
    assert main(["bench", "--quick", "--no-compile", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "lambda_return T=15 B=4096" in out
    assert "eager/fast" in out


def test_bench_writes_table(tmp_path):
    assert main(["bench", "--quick", "--no-compile", "--repeats", "1", "--out",
                 str(tmp_path)]) == 0
    files = list(tmp_path.glob("*-scan.md"))
    assert len(files) == 1 and "| case | mode |" in files[0].read_text()


def test_bench_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        main(["bench", "--suite", "nope", "--quick"])
    with pytest.raises(SystemExit):
        main(["bench", "--repeats", "0", "--quick"])


def test_bench_learner_sizes_are_checked(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--suite", "learner", "--sizes", "debug,XL"])
    assert "unknown size(s) ['XL']" in capsys.readouterr().err


def test_learner_saved_memory_counts_both_graphs():
    from dreamer_fast.agents.config import load_config
    from dreamer_fast.bench.learner_cases import (make_pair, saved_for_backward_bytes,
                                                  synthetic_batch)
    over = {"model.deter": 16, "model.hidden": 16, "model.units": 16, "model.stoch": 4,
            "model.classes": 4, "run.batch_size": 2, "run.batch_length": 4,
            "behavior.horizon": 3}
    pair = make_pair("v3", "debug", torch.device("cpu"), overrides=over)
    batch = synthetic_batch(pair["fast"])
    sizes = {n: saved_for_backward_bytes(a, batch) for n, a in pair.items()}
    # at least the behaviour graph's two-hot critic logits [N, H+1, bins] in float32
    cfg = load_config("v3", "debug", over)
    n = cfg.run.batch_size * cfg.run.batch_length
    floor = n * (cfg.behavior.horizon + 1) * cfg.model.bins * 4
    assert all(v >= floor for v in sizes.values()), (sizes, floor)


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "dreamer_fast", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "bench" in proc.stdout


# --------------------------------------------------------------------------------------
# bench: --matmul-precision and the torch.compile(reference) column
# --------------------------------------------------------------------------------------

def test_bench_rejects_unknown_matmul_precision(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--suite", "rssm", "--quick", "--matmul-precision", "highest,low"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--matmul-precision" in err and "'low'" in err and "medium" in err


def test_bench_measure_runs_each_candidate_at_its_precision(capsys):
    from dreamer_fast.bench.cli import _measure, _Section

    seen: dict[str, set[str]] = {"fast": set(), "eager": set()}

    def case(name):
        def prepare():
            def run():
                seen[name].add(torch.get_float32_matmul_precision())
            return run
        return prepare

    sec = _Section("test", ["medium", "highest"])
    before = torch.get_float32_matmul_precision()
    _measure({n: case(n) for n in seen}, torch.device("cpu"), 2, "tiny", "forward", sec)
    assert torch.get_float32_matmul_precision() == before
    assert seen == {"fast": {"medium", "highest"}, "eager": {"medium", "highest"}}
    assert [r.mode for r in sec.rows] == ["forward, medium", "forward, highest"]
    assert all(set(r.times_us) == {"fast", "eager"} for r in sec.rows)
    text = sec.text("cpu", "dreamer-fast bench")
    assert "| tiny | forward | eager@highest / fast@medium |" in text
    assert "Not a same-precision comparison" in text
    # Only the default precision: no cross-precision table.
    sec = _Section("test", ["highest"])
    _measure({n: case(n) for n in seen}, torch.device("cpu"), 1, "tiny", "forward", sec)
    assert [r.mode for r in sec.rows] == ["forward, highest"]
    assert "eager@highest /" not in sec.text("cpu", "dreamer-fast bench")


def test_bench_imagine_quick_with_two_precisions(capsys):
    assert main(["bench", "--suite", "imagine", "--quick", "--no-compile", "--repeats", "1",
                 "--matmul-precision", "medium,highest"]) == 0
    out = capsys.readouterr().out
    for mode in ("grad=none", "grad=dynamics"):
        for p in ("medium", "highest"):
            assert f"| imagine debug ln_gru N=1024 H=15 | {mode}, {p} |" in out
        assert f"| {mode} | eager@highest / fast@medium |" in out
    assert "| case | mode | fast (µs) | eager (µs) | eager/fast |" in out
    assert "compiled" not in out  # --no-compile skips the torch.compile column


@pytest.mark.compile
def test_bench_compiled_candidates_match_eager():
    """The compiled candidates' wiring (per-step RSSM methods, per-mode imagine_ref entry
    points), traced with the aot_eager backend to stay fast."""
    from torch._dynamo.utils import counters

    from dreamer_fast.bench import rollout_cases, rssm_cases
    from dreamer_fast.nn import draw_imagine_noise

    def graphs():
        return counters["stats"]["unique_graphs"]

    cpu = torch.device("cpu")
    models = rssm_cases.make_pair("ln_gru", cpu, torch.float32, deter=32, hidden=32, embed=16,
                                  stoch=4, classes=4, with_compile=True,
                                  compile_backend="aot_eager")
    assert set(models) == {"fast", "eager", "compiled"}
    assert "img_step" not in vars(models["eager"])  # the eager model stays eager
    g = torch.Generator().manual_seed(0)
    embed, action = torch.randn(3, 5, 16, generator=g), torch.randn(3, 5, 6, generator=g)
    is_first = torch.zeros(3, 5, dtype=torch.bool)
    is_first[:, 0] = True
    noise = (torch.rand(3, 5, 4, generator=g), torch.rand(3, 5, 4, generator=g))
    outs = {}
    for name in ("eager", "compiled"):
        m = models[name]
        before = graphs()
        post, prior = m.observe(embed, action, is_first, noise=noise)
        (m.get_feat(post).square().mean() + prior["logit"].square().mean()).backward()
        outs[name] = (post["deter"], {n: p.grad for n, p in m.named_parameters()})
        assert (graphs() > before) == (name == "compiled")
    torch.testing.assert_close(outs["compiled"][0], outs["eager"][0])
    assert all(g is not None for g in outs["eager"][1].values())
    torch.testing.assert_close(outs["compiled"][1], outs["eager"][1])

    pairs = rollout_cases.make_models("debug", cpu, torch.float32, with_compile=True)
    impls = rollout_cases.implementations(True, backend="aot_eager")
    assert set(impls) == {"fast", "eager", "compiled"}
    rssm, actor = pairs["eager"]
    start = {k: v.normal_(generator=g) for k, v in rssm.initial(4).items()}
    nz = draw_imagine_noise(rssm, actor, 4, 3, like=start["deter"])
    for grad in rollout_cases.MODES:
        feats = {}
        for name in ("eager", "compiled"):
            rssm, actor = pairs[name]
            actor.zero_grad(set_to_none=True)
            before = graphs()
            traj = impls[name](rssm, actor, start, 3, grad=grad, noise=nz)
            assert (graphs() > before) == (name == "compiled")
            if grad == "dynamics":
                traj["feat"].square().mean().backward()
                feats[name] = (traj["feat"], next(actor.parameters()).grad)
            else:
                feats[name] = (traj["feat"],)
        for a, b in zip(feats["compiled"], feats["eager"]):
            torch.testing.assert_close(a, b)


def test_bench_graph_case_needs_cuda():
    """The CUDA-graph candidates of the imagine suite are added on CUDA only; built on
    CPU modules their first prepare() raises ImagineGraph's device error."""
    from dreamer_fast.bench import rollout_cases

    models = rollout_cases.make_models("debug", torch.device("cpu"), torch.float32)
    prepare = rollout_cases.graph_case(models["fast"], 8, 2)
    with pytest.raises((ValueError, RuntimeError), match="CUDA"):
        prepare()
