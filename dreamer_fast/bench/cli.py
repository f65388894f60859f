"""``dreamer-fast bench``: fast ops vs eager reference vs torch.compile(reference)."""

from __future__ import annotations

import argparse
import datetime as _dt
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dreamer_fast.bench import scan_cases
from dreamer_fast.bench.report import Row, cross_precision_table, markdown_table, provenance
from dreamer_fast.bench.timing import (MATMUL_PRECISIONS, at_precision, device_name,
                                       first_call_s, interleaved, matmul_precision)

#: Suites timed at each requested float32 matmul precision (the others have no GEMMs).
PRECISION_SUITES = ("rssm", "imagine", "learner")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time fast ops against the PyTorch references",
                       description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="one size (T=15, B=4096), few repeats; prints only unless --out is given")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16",
                                                          "float16"])
    p.add_argument("--no-compile", action="store_true",
                   help="skip the torch.compile(reference) column of the scan, rssm and "
                        "imagine suites (compiling is slow on CPU; each compiled candidate's "
                        "compile time is printed)")
    p.add_argument("--matmul-precision", type=_precision_list, default=["highest"],
                   metavar="P[,P...]",
                   help="comma-separated float32 matmul precisions (torch."
                        "set_float32_matmul_precision) to time the rssm, imagine and learner "
                        f"rows at, for every candidate alike: {', '.join(MATMUL_PRECISIONS)}; "
                        "default highest. With highest and another one, a table of fast@P vs "
                        "eager@highest is added")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per row")
    p.add_argument("--sizes", type=_size_list, default=["debug", "S"],
                   help="learner suite: comma-separated model sizes (debug, S, M)")
    p.add_argument("--suite", default="scan",
                   help="comma-separated: scan (λ-return), rssm (image step per cell at "
                        "B=1024, observe B16xT64), imagine (1024 starts x H=15, debug and S "
                        "sizes), learner (one full Dreamer update, world model + actor-critic, "
                        "per algo), integrations (a peer codebase's own module eager vs "
                        "accelerated, needs --peer and --path); default scan")
    p.add_argument("--peer", default=None, choices=["nm512", "sheeprl", "torchrl"],
                   help="integrations suite: the peer codebase (nm512: NM512/dreamerv3-torch; "
                        "sheeprl: its dreamer_v3, torchrl: its TD(λ); each with that peer's "
                        "own dependencies installed); learner suite: nm512 only, adds rows "
                        "with the peer's own full update at our matched sizes (an nm512 "
                        "column)")
    p.add_argument("--path", type=Path, default=None,
                   help="integrations and learner suites: the peer's checkout to import its "
                        "modules from")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the Markdown table (default benchmarks/results for a full "
                        "run, nothing for --quick)")
    p.set_defaults(run=run)


def _precision_list(text: str) -> list[str]:
    """``--matmul-precision`` value: a comma-separated list, duplicates dropped."""
    out: list[str] = []
    for item in (x.strip() for x in text.split(",")):
        if item not in MATMUL_PRECISIONS:
            raise argparse.ArgumentTypeError(
                f"unknown precision {item!r}; expected a comma-separated list of "
                f"{', '.join(MATMUL_PRECISIONS)}")
        if item not in out:
            out.append(item)
    return out


def _size_list(text: str) -> list[str]:
    """``--sizes`` value: a comma-separated list of the config's sizes."""
    out = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in out if x not in ("debug", "S", "M")]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"unknown size(s) {bad}; expected a comma-separated "
                                         "list of debug, S, M")
    return out


@dataclass
class _Section:
    """One suite's results: the title, the float32 matmul precisions its rows are timed
    at (``None``: left as it is, no precision in the rows), the table rows, the same
    timings keyed ``impl@precision`` for the cross-precision table, compile times, and
    other measured notes (printed as a list under the table)."""
    title: str
    precisions: list[str] | None = None
    rows: list[Row] = field(default_factory=list)
    by_precision: list[Row] = field(default_factory=list)
    compile_notes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def text(self, dev_name: str, command: str) -> str:
        parts = [f"## {self.title}", provenance(dev_name, command)]
        if self.precisions is not None:
            parts[-1] += ("\n- float32 matmul precision (torch.set_float32_matmul_precision) "
                          "in each row's mode, the same for every candidate of the row")
        parts.append(markdown_table(self.rows))
        if self.notes:
            parts.append("\n".join(f"- {n}" for n in self.notes))
        cross = cross_precision_table(self.by_precision)
        if cross:
            parts.append("### Across precisions: fast at a lower float32 matmul precision vs "
                         "eager at highest\n\nNot a same-precision comparison: the fast "
                         "candidate runs its GEMMs at the lower precision, the eager reference "
                         "at full float32. Timed in the same interleaved rounds as the table "
                         "above; ratios > 1 mean the fast op is faster.")
            parts.append(cross)
        if self.compile_notes:
            parts.append("torch.compile time of each compiled row (its first call less a median "
                         "run; not part of the timings; Inductor's on-disk cache makes repeat "
                         "runs compile faster):\n\n"
                         + "\n".join(f"- {n}" for n in self.compile_notes))
        return "\n\n".join(parts) + "\n"


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("dreamer-fast bench: --device cuda requested but no CUDA device is "
                         "available")
    return torch.device(name)


def run(args: argparse.Namespace) -> int:
    import dreamer_fast

    suites = [x.strip() for x in args.suite.split(",") if x.strip()]
    if "learner" in suites and args.peer is not None:
        from dreamer_fast.bench import peer_learner

        peer_learner.check_peer(args.peer, args.path)  # before any work
    if not dreamer_fast.has_extension():
        print(f"dreamer-fast bench: the native extension is missing "
              f"({dreamer_fast.extension_error()}); rebuild with "
              "pip install --no-build-isolation -e .", file=sys.stderr)
        return 2
    device = _resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit("dreamer-fast bench: --repeats must be >= 1")
    repeats = args.repeats or (10 if args.quick else 30)
    torch._dynamo.config.recompile_limit = 64  # one compiled graph per shape and mode

    unknown = set(suites) - {"scan", "rssm", "imagine", "learner", "integrations"}
    if unknown:
        raise SystemExit(f"dreamer-fast bench: unknown --suite {sorted(unknown)}; "
                         "expected scan, rssm, imagine, learner and/or integrations")
    if "integrations" in suites and (args.peer is None or args.path is None):
        raise SystemExit("dreamer-fast bench: --suite integrations needs --peer and --path "
                         "(the peer's checkout)")
    precisions = args.matmul_precision
    if precisions != ["highest"] and not set(suites) & set(PRECISION_SUITES):
        print("dreamer-fast bench: note: --matmul-precision applies to the "
              f"{', '.join(PRECISION_SUITES)} suites only", file=sys.stderr)
    dev_name = device_name(device)
    print(f"# dreamer-fast bench on {dev_name}, {args.dtype}", flush=True)
    compiled = "" if args.no_compile else " vs torch.compile(reference)"
    sections: list[_Section] = []
    if "scan" in suites:
        sections.append(_Section(f"λ-return ({args.dtype})"))
        _run_scan(args, device, dtype, repeats, sections[-1])
    if "rssm" in suites:
        sections.append(_Section(f"RSSM, fused vs reference backend{compiled} ({args.dtype})",
                                 precisions))
        _run_rssm(args, device, dtype, max(3, repeats // 3), sections[-1])
    if "imagine" in suites:
        sections.append(_Section(f"Imagination rollout, imagine vs imagine_ref{compiled} "
                                 f"({args.dtype})", precisions))
        _run_imagine(args, device, dtype, max(3, repeats // 3), sections[-1])
    if "learner" in suites:
        peer = (", and NM512/dreamerv3-torch's own update (nm512)"
                if args.peer is not None else "")
        sections.append(_Section("Learner update (world model + actor-critic), fused vs "
                                 f"reference backend{peer} (float32)", precisions))
        _run_learner(args, device, max(3, repeats // 5), sections[-1])

    if "integrations" in suites:
        sections.append(_Section(f"Integration {args.peer}: the peer's own module, eager vs "
                                 f"accelerated ({args.dtype})"))
        _run_integrations(args, device, dtype, max(3, repeats // 3), sections[-1])

    command = "dreamer-fast bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"]
                                                else [])
    if args.path is not None:  # a checkout's location is the user's, not a result
        command = command.replace(str(args.path), "CHECKOUT")
    text = "\n".join(sec.text(dev_name, command.strip()) for sec in sections)
    print()
    print(text)
    out_dir = args.out if args.out is not None else (None if args.quick
                                                     else Path("benchmarks/results"))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", dev_name.lower()).strip("-")[:40]
        with_peer = args.peer is not None and {"integrations", "learner"} & set(suites)
        name = "-".join(suites) + (f"-{args.peer}" if with_peer else "")
        path = out_dir / f"{slug}-{_dt.date.today().isoformat()}-{name}.md"
        path.write_text(text)
        print(f"wrote {path}")
    return 0


def _measure(cands, device, repeats, case, mode, sec: _Section) -> None:
    """Times ``cands`` (name -> Prepare) interleaved and appends a row to ``sec``. With
    ``sec.precisions``, every candidate runs at each precision within the same rounds
    (one row per precision, the precision in its mode) and a compiled candidate's compile
    time (its first call at each precision less the median run) is printed and noted.
    Dynamo guards on the matmul precision (global state), so a compiled candidate gets one
    graph per precision and never runs a graph traced at another one."""
    precisions = sec.precisions
    if precisions is None:
        timings = interleaved(cands, device, warmup=2, repeats=repeats, min_time_s=0.2)
        row = Row(case, mode, {name: t.median_us for name, t in timings.items()})
        sec.rows.append(row)
        print(markdown_table([row]).splitlines()[-1], flush=True)
        return
    with matmul_precision():
        first = {p: first_call_s(at_precision(cands["compiled"], p), device)
                 for p in precisions if "compiled" in cands}
        wide = {f"{name}@{p}": at_precision(c, p) for p in precisions
                for name, c in cands.items()}
        timings = interleaved(wide, device, warmup=2, repeats=repeats, min_time_s=0.2)
    us = {key: t.median_us for key, t in timings.items()}
    sec.by_precision.append(Row(case, mode, us))
    for p in precisions:
        row = Row(case, f"{mode}, {p}", {name: us[f"{name}@{p}"] for name in cands})
        sec.rows.append(row)
        if p in first:
            compile_s = max(0.0, first[p] - us[f"compiled@{p}"] * 1e-6)
            note = f"compiled {case}, {mode}, {p}: compile {compile_s:.1f} s"
            sec.compile_notes.append(note)
            print(f"  {note}", flush=True)
        print(markdown_table([row]).splitlines()[-1], flush=True)


def _run_scan(args, device, dtype, repeats, sec: _Section) -> None:
    impls = scan_cases.implementations(with_compile=not args.no_compile)
    sizes = scan_cases.QUICK_SIZES if args.quick else scan_cases.FULL_SIZES
    for T, B in sizes:
        inputs = scan_cases.ScanInputs.make(T, B, device, dtype)
        for mode in scan_cases.MODES:
            cands = {name: scan_cases.make_candidates(fn, inputs, mode)
                     for name, fn in impls.items()}
            _measure(cands, device, repeats, f"lambda_return T={T} B={B}", mode, sec)


def _run_rssm(args, device, dtype, repeats, sec: _Section) -> None:
    from dreamer_fast.bench import rssm_cases

    with_compile = not args.no_compile
    cells = ("ln_gru",) if args.quick else ("gru", "ln_gru", "block_gru")
    for cell in cells:
        models = rssm_cases.make_pair(cell, device, dtype, with_compile=with_compile)
        for mode in rssm_cases.MODES:
            cands = {n: rssm_cases.image_step_case(m, 1024, mode) for n, m in models.items()}
            _measure(cands, device, repeats, f"img_step {cell} B=1024 deter512", mode, sec)
    models = rssm_cases.make_pair("ln_gru", device, dtype, with_compile=with_compile)
    for mode in rssm_cases.MODES:
        cands = {n: rssm_cases.observe_case(m, 16, 64, mode) for n, m in models.items()}
        _measure(cands, device, max(3, repeats // 2), "observe ln_gru B16xT64 deter512",
                 mode, sec)


def _run_imagine(args, device, dtype, repeats, sec: _Section) -> None:
    from dreamer_fast.bench import rollout_cases

    impls = rollout_cases.implementations(with_compile=not args.no_compile)
    sizes = ("debug",) if args.quick else ("debug", "S")
    for size in sizes:
        models = rollout_cases.make_models(size, device, dtype,
                                           with_compile=not args.no_compile)
        for grad in rollout_cases.MODES:
            cands = {n: rollout_cases.rollout_case(models[n], fn, 1024, 15, grad)
                     for n, fn in impls.items()}
            if device.type == "cuda" and grad == "none":  # capture and replay (ImagineGraph)
                cands["fast graph"] = rollout_cases.graph_case(models["fast"], 1024, 15)
                cands["eager graph"] = rollout_cases.graph_case(models["eager"], 1024, 15)
            _measure(cands, device, repeats, f"imagine {size} ln_gru N=1024 H=15",
                     f"grad={grad}", sec)
        saved = {n: rollout_cases.saved_for_backward_bytes(models[n], impls[n], 1024, 15)
                 for n in ("fast", "eager")}
        note = (f"imagine {size} N=1024 H=15, grad=dynamics: memory kept for the backward "
                f"(saved activations, parameters excluded) fast {saved['fast'] / 2**20:.1f} "
                f"MiB, eager {saved['eager'] / 2**20:.1f} MiB")
        sec.notes.append(note)
        print(f"  {note}", flush=True)


def _run_learner(args, device, repeats, sec: _Section) -> None:
    from dreamer_fast.bench import learner_cases

    algos = ("v3",) if args.quick else ("v1", "v2", "v3")
    sizes = ["debug"] if args.quick else args.sizes
    for size in sizes:
        for algo in algos:
            pair = learner_cases.make_pair(algo, size, device)
            batch = learner_cases.synthetic_batch(pair["fast"])
            cfg = pair["fast"].cfg
            cands = {n: learner_cases.update_case(a, batch) for n, a in pair.items()}
            case = (f"{algo} size {size} B{cfg.run.batch_size}xT{cfg.run.batch_length} "
                    f"H{cfg.behavior.horizon}")
            _measure(cands, device, repeats, case, "update", sec)
            saved = {n: learner_cases.saved_for_backward_bytes(a, batch) / 2**20
                     for n, a in pair.items()}
            note = (f"{case}: saved for backward in one update (world-model and behaviour "
                    f"graphs, parameters excluded) fast {saved['fast']:.1f} MiB, eager "
                    f"{saved['eager']:.1f} MiB")
            sec.notes.append(note)
            print(f"  {note}", flush=True)
        if args.peer is not None:
            _run_peer_learner(args, size, device, repeats, sec)


def _run_peer_learner(args, size, device, repeats, sec: _Section) -> None:
    """Rows of ``size`` with the peer's own update next to ours (bench/peer_learner.py)."""
    from dreamer_fast.bench import peer_learner

    for grad in peer_learner.ACTOR_GRADS:
        row = peer_learner.nm512_row(args.path, size, grad, device)
        _measure(row.candidates, device, repeats, row.case, "update", sec)
        for note in row.notes:
            if note not in sec.notes:
                sec.notes.append(note)
                print(f"  {note}", flush=True)


def _run_integrations(args, device, dtype, repeats, sec: _Section) -> None:
    from dreamer_fast.bench import integration_cases

    import os

    sec.notes.append(f"peer {args.peer}; module built from its checkout "
                     "(the path is not recorded); see dreamer_fast/bench/integration_cases.py")
    sec.notes.append("OMP_WAIT_POLICY=" + os.environ.get("OMP_WAIT_POLICY", "(unset)")
                     + f", {torch.get_num_threads()} torch threads")
    for case, mode, cands in integration_cases.cases(args.peer, args.path, device, dtype):
        _measure(cands, device, repeats, case, mode, sec)
