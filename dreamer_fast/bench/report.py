"""Formatting benchmark results as a Markdown table with its provenance."""

from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import dataclass, field

import torch


@dataclass
class Row:
    case: str          # e.g. "lambda_return T=15 B=4096"
    mode: str          # forward / backward / forward+backward
    times_us: dict[str, float] = field(default_factory=dict)  # implementation -> median µs


def markdown_table(rows: list[Row], baseline: str = "fast") -> str:
    impls: list[str] = []
    for row in rows:
        for name in row.times_us:
            if name not in impls:
                impls.append(name)
    others = [n for n in impls if n != baseline]
    header = (["case", "mode"] + [f"{n} (µs)" for n in impls]
              + [f"{n}/{baseline}" for n in others])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.case, row.mode]
        cells += [f"{row.times_us[n]:.1f}" if n in row.times_us else "–" for n in impls]
        base = row.times_us.get(baseline)
        for n in others:
            if base and n in row.times_us:
                cells.append(f"{row.times_us[n] / base:.2f}x")
            else:
                cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cross_precision_table(rows: list[Row], fast: str = "fast", eager: str = "eager",
                          reference: str = "highest") -> str:
    """``fast`` at each float32 matmul precision other than ``reference`` against ``eager``
    at ``reference``, from rows whose ``times_us`` are keyed ``"<impl>@<precision>"``; one
    line per case, mode and precision. Empty when there is nothing to compare."""
    ref_key = f"{eager}@{reference}"
    header = ["case", "mode", "comparison", "fast (µs)", "eager (µs)", "ratio"]
    lines = []
    for row in rows:
        if ref_key not in row.times_us:
            continue
        for key, us in row.times_us.items():
            name, _, precision = key.partition("@")
            if name != fast or precision in ("", reference):
                continue
            ratio = row.times_us[ref_key] / us if us else float("nan")
            lines.append("| " + " | ".join([
                row.case, row.mode, f"{ref_key} / {key}", f"{us:.1f}",
                f"{row.times_us[ref_key]:.1f}", f"{ratio:.2f}x"]) + " |")
    if not lines:
        return ""
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + lines)


def provenance(device_name: str, command: str) -> str:
    today = _dt.date.today().isoformat()
    return (f"- device: {device_name}\n- date: {today}\n- torch {torch.__version__}"
            f" (CUDA {torch.version.cuda or 'none'}), Python {platform.python_version()}\n"
            f"- command: `{command}`\n- medians of interleaved repeats in one process; "
            "ratios > 1 mean the fast op is faster")
