"""Smoke tests of the `dreamer-fast` command line (the README's main command)."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "dreamer_fast", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "bench" in proc.stdout
