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
    sizes = scan_cases.QUICK_SIZES if args.quick else scan_cases.FULL_SIZES
    torch._dynamo.config.recompile_limit = 64  # one compiled graph per shape and mode

    impls = scan_cases.implementations(with_compile=not args.no_compile)
    dev_name = device_name(device)
    print(f"# dreamer-fast bench on {dev_name}, {args.dtype}", flush=True)
    rows: list[Row] = []
    for T, B in sizes:
        inputs = scan_cases.ScanInputs.make(T, B, device, dtype)
        for mode in scan_cases.MODES:
            cands = {name: scan_cases.make_candidates(fn, inputs, mode)
                     for name, fn in impls.items()}
            timings = interleaved(cands, device, warmup=3, repeats=repeats, min_time_s=0.2)
            row = Row(f"lambda_return T={T} B={B}", mode,
                      {name: t.median_us for name, t in timings.items()})
            rows.append(row)
            print(markdown_table([row]).splitlines()[-1], flush=True)

    command = "dreamer-fast bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"]
                                                else [])
    text = (f"## λ-return ({args.dtype})\n\n{provenance(dev_name, command.strip())}\n\n"
            f"{markdown_table(rows)}\n")
    print()
    print(text)
    out_dir = args.out if args.out is not None else (None if args.quick
                                                     else Path("benchmarks/results"))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", dev_name.lower()).strip("-")[:40]
        path = out_dir / f"{slug}-{_dt.date.today().isoformat()}-scan.md"
        path.write_text(text)
        print(f"wrote {path}")
    return 0
