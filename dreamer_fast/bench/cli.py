"""``dreamer-fast bench``: fast ops vs eager reference vs torch.compile(reference)."""

from __future__ import annotations

import argparse
import datetime as _dt
import re
import sys
from pathlib import Path

import torch

from dreamer_fast.bench import scan_cases
from dreamer_fast.bench.report import Row, markdown_table, provenance
from dreamer_fast.bench.timing import device_name, interleaved


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time fast ops against the PyTorch references",
                       description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="one size (T=15, B=4096), few repeats; prints only unless --out is given")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16",
                                                          "float16"])
    p.add_argument("--no-compile", action="store_true",
                   help="skip the torch.compile(reference) column (compiling is slow on CPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per row")
    p.add_argument("--suite", default="scan",
                   help="comma-separated: scan (λ-return), rssm (image step per cell at "
                        "B=1024, observe B16xT64), imagine (1024 starts x H=15, debug and S "
                        "sizes), learner (one full Dreamer update, world model + actor-critic, "
                        "per algo); default scan")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the Markdown table (default benchmarks/results for a full "
                        "run, nothing for --quick)")
    p.set_defaults(run=run)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("dreamer-fast bench: --device cuda requested but no CUDA device is "
                         "available")
    return torch.device(name)


def run(args: argparse.Namespace) -> int:
    import dreamer_fast

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

    suites = [x.strip() for x in args.suite.split(",") if x.strip()]
    unknown = set(suites) - {"scan", "rssm", "imagine", "learner"}
    if unknown:
        raise SystemExit(f"dreamer-fast bench: unknown --suite {sorted(unknown)}; "
                         "expected scan, rssm, imagine and/or learner")
    dev_name = device_name(device)
    print(f"# dreamer-fast bench on {dev_name}, {args.dtype}", flush=True)
    sections = []
    if "scan" in suites:
        rows = _run_scan(args, device, dtype, repeats)
        sections.append((f"λ-return ({args.dtype})", rows))
    if "rssm" in suites:
        rows = _run_rssm(args, device, dtype, max(3, repeats // 3))
        sections.append((f"RSSM, fused vs reference backend ({args.dtype})", rows))
    if "imagine" in suites:
        rows = _run_imagine(args, device, dtype, max(3, repeats // 3))
        sections.append((f"Imagination rollout, imagine vs imagine_ref ({args.dtype})", rows))
    if "learner" in suites:
        rows = _run_learner(args, device, max(3, repeats // 5))
        sections.append(("Learner update (world model + actor-critic), fused vs reference "
                         "backend (float32)", rows))

    command = "dreamer-fast bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"]
                                                else [])
    text = "\n".join(f"## {title}\n\n{provenance(dev_name, command.strip())}\n\n"
                     f"{markdown_table(rows)}\n" for title, rows in sections)
    print()
    print(text)
    out_dir = args.out if args.out is not None else (None if args.quick
                                                     else Path("benchmarks/results"))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", dev_name.lower()).strip("-")[:40]
        path = out_dir / f"{slug}-{_dt.date.today().isoformat()}-{'-'.join(suites)}.md"
        path.write_text(text)
        print(f"wrote {path}")
    return 0


def _measure(cands, device, repeats, case, mode, rows):
    timings = interleaved(cands, device, warmup=2, repeats=repeats, min_time_s=0.2)
    row = Row(case, mode, {name: t.median_us for name, t in timings.items()})
    rows.append(row)
    print(markdown_table([row]).splitlines()[-1], flush=True)


def _run_scan(args, device, dtype, repeats) -> list[Row]:
    impls = scan_cases.implementations(with_compile=not args.no_compile)
    sizes = scan_cases.QUICK_SIZES if args.quick else scan_cases.FULL_SIZES
    rows: list[Row] = []
    for T, B in sizes:
        inputs = scan_cases.ScanInputs.make(T, B, device, dtype)
        for mode in scan_cases.MODES:
            cands = {name: scan_cases.make_candidates(fn, inputs, mode)
                     for name, fn in impls.items()}
            _measure(cands, device, repeats, f"lambda_return T={T} B={B}", mode, rows)
    return rows


def _run_rssm(args, device, dtype, repeats) -> list[Row]:
    from dreamer_fast.bench import rssm_cases

    rows: list[Row] = []
    cells = ("ln_gru",) if args.quick else ("gru", "ln_gru", "block_gru")
    for cell in cells:
        pair = rssm_cases.make_pair(cell, device, dtype)
        for mode in rssm_cases.MODES:
            cands = {n: rssm_cases.image_step_case(m, 1024, mode) for n, m in pair.items()}
            _measure(cands, device, repeats, f"img_step {cell} B=1024 deter512", mode, rows)
    pair = rssm_cases.make_pair("ln_gru", device, dtype)
    for mode in rssm_cases.MODES:
        cands = {n: rssm_cases.observe_case(m, 16, 64, mode) for n, m in pair.items()}
        _measure(cands, device, max(3, repeats // 2), "observe ln_gru B16xT64 deter512",
                 mode, rows)
    return rows


def _run_imagine(args, device, dtype, repeats) -> list[Row]:
    from dreamer_fast.bench import imagine_cases

    rows: list[Row] = []
    sizes = ("debug",) if args.quick else ("debug", "S")
    for size in sizes:
        models = imagine_cases.make_models(size, device, dtype)
        for grad in imagine_cases.MODES:
            cands = {n: imagine_cases.rollout_case(models[n], fn, 1024, 15, grad)
                     for n, fn in imagine_cases.IMPLS.items()}
            _measure(cands, device, repeats, f"imagine {size} ln_gru N=1024 H=15",
                     f"grad={grad}", rows)
    return rows


def _run_learner(args, device, repeats) -> list[Row]:
    from dreamer_fast.bench import learner_cases

    rows: list[Row] = []
    algos = ("v3",) if args.quick else ("v1", "v2", "v3")
    size = "debug" if args.quick or device.type == "cpu" else "S"
    for algo in algos:
        pair = learner_cases.make_pair(algo, size, device)
        batch = learner_cases.synthetic_batch(pair["fast"])
        cfg = pair["fast"].cfg
        cands = {n: learner_cases.update_case(a, batch) for n, a in pair.items()}
        case = (f"{algo} size {size} B{cfg.run.batch_size}xT{cfg.run.batch_length} "
                f"H{cfg.behavior.horizon}")
        _measure(cands, device, repeats, case, "update", rows)
    return rows
