"""The benchmark in quick mode, so that the README's test command proves it still runs.

Only that it completes and prints its table: timings on a shared CI machine prove nothing, so
nothing here asserts on them.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_benchmark_runs_in_quick_mode_and_prints_its_table() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("Machine: ")
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert rows[0] == "| | mcp-modelgates | minimal forwarder | ratio | budget |"
    for metric in ("cold start", "sequential call p50", "in flight: calls/s", "peak RSS", "TCP connections"):
        assert any(metric in row for row in rows), metric
    http_rows = rows[rows.index("| over HTTP | mcp-modelgates | minimal HTTP forwarder | ratio | budget |") :]
    for metric in ("sequential call p50", "in flight: calls/s", "two processes, round-robin", "calls/s, median of"):
        assert any(metric in row for row in http_rows), metric
    sign_in = rows.index("| sign-in | OAuth, memory store | per-caller keys | ratio | budget |")
    assert any("sequential call p50" in row and "<= 1.05x" in row for row in rows[sign_in:])
    assert any("in flight: calls/s" in row and ">= 0.95x" in row for row in rows[sign_in:])
    redis_rows = [row for row in rows if row.startswith("| sign-in | OAuth, Redis store |")]
    assert redis_rows or "OAuth with the Redis store: not run, no redis-server here" in out.stdout
    burst_rows = [row for row in rows if row.startswith("| one caller's burst") or "refused at once" in row]
    assert len(burst_rows) == 2 and any(row.startswith("| succeeded |") and "B >= 90%" in row for row in rows)
    assert "Budget " in out.stdout
