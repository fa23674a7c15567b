"""The README's benchmark commands keep working: each runs end to end on tiny counts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.live_server,
    # Each benchmark builds its own gateway on the embedded default, whatever the profile.
    pytest.mark.skipif(bool(settings.REDIS_URL), reason="runs once, in the embedded profile"),
]


@pytest.mark.parametrize(
    "command",
    [
        ["benchmarks.gateway_overhead", "--sequential", "20", "--requests", "40", "--concurrency", "8",
         "--stream-sequential", "10", "--stream-requests", "20", "--warmup", "5"],
        ["benchmarks.inflight", "--requests", "32", "--latency-ms", "200", "--warmup", "5"],
        ["benchmarks.view_layer", "--requests", "16", "--warmup", "4", "--rounds", "1", "--concurrency", "4"],
    ],
    ids=["gateway_overhead", "inflight", "view_layer"],
)  # fmt: skip
def test_the_benchmark_runs_and_prints_its_ratios(command):
    done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ratio" in done.stdout.lower() or "x)" in done.stdout
