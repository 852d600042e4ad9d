"""The benchmarks still run: tiny sizes, no services (the figures themselves are not tested)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.collector import copy_rows, fill_spool
from bench.common import percentile, sample_lines
from tests.helpers import REPO_ROOT


def test_sample_lines_are_40_to_200_bytes() -> None:
    lines = sample_lines(500)
    assert all(40 <= len(line.encode()) <= 200 for line in lines)
    assert sample_lines(50, seed=3) == sample_lines(50, seed=3)


def test_percentile_by_nearest_rank() -> None:
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (50, 99, 100)] == [50, 99, 100]


def test_the_spool_is_written_by_the_shim_and_becomes_copy_rows(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    fill_spool(spool, files=4, lines=50)
    files = sorted(spool.iterdir())
    assert len(files) == 4
    records = [json.loads(raw) for raw in files[0].read_bytes().splitlines()]
    assert [r["k"] for r in (records[0], records[-1])] == ["start", "end"]
    days = copy_rows(spool, tmp_path / "rows.copy")
    rows = (tmp_path / "rows.copy").read_text().splitlines()
    assert len(rows) == 50 and len(days) >= 1
    assert all(len(row.split("\t")) == 6 for row in rows)


def test_the_shim_benchmark_runs_in_process(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "shim",
            "--direct",
            "--no-seed",
            "--lines",
            "2000",
            "--runs",
            "1",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "shim cost over no capture" in out and "floor" in out
