"""The README's benchmark commands keep working: each runs end to end on tiny counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
# The cache benchmark's workload reads the project's shared dataset; a clone without it uses generated texts.
CACHE_TEXTS = [] if (ROOT.parent / "shared" / "data" / "sentiment3.tsv").is_file() else ["--generated"]
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
        ["benchmarks.gateway_overhead", "--upstream", "http", "--sequential", "20", "--requests", "40",
         "--concurrency", "8", "--stream-sequential", "10", "--stream-requests", "20", "--warmup", "5"],
        ["benchmarks.proxy", "--litellm", "off", "--sequential", "20", "--requests", "60", "--stream-sequential",
         "10", "--stream-requests", "20", "--warmup", "10", "--passes", "2"],
        ["benchmarks.upstream_clients", "--requests", "60", "--streams", "40"],
        ["benchmarks.metric_path", "--requests", "600", "--rounds", "2"],
        ["benchmarks.inflight", "--requests", "32", "--latency-ms", "200", "--warmup", "5"],
        ["benchmarks.view_layer", "--requests", "16", "--warmup", "4", "--rounds", "1", "--concurrency", "4"],
        ["benchmarks.cache", "--requests", "20", "--concurrency", "4", "--slow-requests", "4", "--slow-latency-ms",
         "50", "--warmup", "5", "--workload-requests", "40", "--distinct", "16", "--workload-concurrency", "4",
         "--no-sequential", *CACHE_TEXTS],
        ["benchmarks.streaming", "--ttft-requests", "5", "--baseline-ttft-requests", "3", "--ttft-ms", "20",
         "--levels", "4,8", "--stream-tokens", "8", "--tokens-per-s", "20", "--ramp-s", "0.1", "--warmup", "2",
         "--chats-per-socket", "2"],
        ["benchmarks.failover", "--requests", "60", "--concurrency", "8", "--warmup", "5", "--breaker-window-s", "2",
         "--cooldown-s", "0.5", "--lead-in-s", "1"],
        ["benchmarks.routing", "--calls", "200", "--requests", "20", "--rounds", "2"],
        ["benchmarks.batches", "--items", "1000", "--sequential", "5", "--interactive", "20", "--rate", "20",
         "--seed-items", "100"],
    ],
    ids=["gateway_overhead", "gateway_overhead_http", "proxy", "upstream_clients",
         "metric_path", "inflight", "view_layer", "cache", "streaming",
         "failover", "routing", "batches"],
)  # fmt: skip
def test_the_benchmark_runs_and_prints_its_ratios(command):
    done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ratio" in done.stdout.lower() or "x)" in done.stdout


def test_the_metrics_scale_benchmark_runs_tiny_and_names_each_figure(tmp_path):
    # A database of its own: the benchmark empties the metric tables of the one it is given.
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'metrics-bench.sqlite3'}"}
    command = [sys.executable, "-m", "benchmarks.metrics_scale", "--tiny"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for figure in ("fill:", "metrics_summary", "metrics_timeseries", "metrics_models", "percentile error", "writes:"):
        assert figure in done.stdout
    assert "ratio" in done.stdout and "equal the raw rows" in done.stdout


def test_the_alerts_detection_benchmark_runs_a_tiny_replay():
    command = ["benchmarks.alerts_detection", "--tiny"]
    done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "false alerts over 0.125 days: " in done.stdout and "(goal <= 1)" in done.stdout
    assert done.stdout.count("(goal <= 15)") == 2


@pytest.mark.skipif(
    not (ROOT.parent / "shared" / "data" / "mrpc_dev.tsv").is_file(),
    reason="measures on the paraphrase sets in ../shared/data, which a clone of the project alone lacks",
)
def test_the_semantic_threshold_benchmark_runs_on_a_subset():
    command = ["benchmarks.semantic_threshold", "--data", str(ROOT.parent / "shared" / "data"), "--pairs", "40"]
    done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Recommended default similarity threshold" in done.stdout


@pytest.mark.local_model
@pytest.mark.skipif(
    not (ROOT.parent / "shared" / "data" / "sst2_dev.tsv").is_file(),
    reason="measures on the sentiment sets in ../shared/data, which a clone of the project alone lacks",
)
def test_the_cascade_quality_benchmark_runs_on_a_few_rows():
    command = ["benchmarks.cascade_quality", "--limit", "6", "--only", "local", "--only", "openai"]
    done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("stand-in") >= 2
    assert "openai: skipped, OPENAI_API_KEY is not set" in done.stdout or "sentiment-openai on" in done.stdout
