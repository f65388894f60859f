"""The ``dreamer-fast`` command line (also ``python -m dreamer_fast``)."""

from __future__ import annotations

import argparse
import sys


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamer-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from dreamer_fast.agents import cli as agents_cli
    from dreamer_fast.bench import cli as bench_cli

    agents_cli.add_parsers(sub)
    bench_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
