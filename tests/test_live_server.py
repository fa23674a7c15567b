"""The README's path, for real: manage.py commands, then daphne serving the gateway on a
loopback port, called with the official OpenAI SDK over TCP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import openai
import pytest

ROOT = Path(__file__).resolve().parent.parent
# The browser tests' Chromium (Debian's package; Playwright's own download is never used).
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = pytest.mark.live_server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_until_healthy(url: str, process: subprocess.Popen, log: Callable[[], str], *, within_s: float, what: str):
    """Until `url`/healthz answers 200; fails with the log's tail when the process exits first."""
    deadline = time.monotonic() + within_s
    while True:
        assert process.poll() is None, log()[-5000:]
        assert time.monotonic() < deadline, f"{what} did not serve in {within_s:g} s"
        try:
            if httpx2.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx2.TransportError:
            time.sleep(0.2)


class Gateway:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Its log goes to a file, not a pipe: a pipe nobody reads fills up (Django logs a
        # warning for every 4xx of its own views) and then blocks the server mid-request.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop(), with the server)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "llmops.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx2.get(f"{self.url}/healthz", timeout=15)
                return  # any answer, healthy or not, means the server is up
            except httpx2.ConnectError:
                assert self.process.poll() is None, self.log_text()
                time.sleep(0.1)
        raise AssertionError("daphne did not start")

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-5000:]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


def base_env(tmp_path: Path, database_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env["DATABASE_URL"] = database_url or f"sqlite:///{tmp_path / 'gateway.sqlite3'}"
    env["LLMOPS_ALLOW_INSECURE_SECRET_KEY"] = "true"  # DEBUG is off and SECRET_KEY is the development one
    return env


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    env = base_env(tmp_path_factory.mktemp("live"))
    env["LLMOPS_BATCH_START_WITH_SERVER"] = "true"  # as make run: batches run in the server
    manage(env, "migrate", "--noinput")
    manage(env, "seed_catalog")
    key = manage(env, "create_api_key", "live-test").strip().splitlines()[-1]
    server = Gateway(env)
    yield server, key
    server.stop()


def test_the_readme_path_works_with_the_openai_sdk(gateway):
    server, key = gateway
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    assert "smollm2-135m" in {m.id for m in client.models.list()}
    completion = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
    )
    assert completion.choices[0].message.content
    assert completion.usage.total_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": "Say hi."}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.completion_tokens > 0
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1


def test_a_key_created_beside_the_running_server_works_within_seconds(gateway):
    server, _ = gateway
    key = manage(server.env, "create_api_key", "added-later").strip().splitlines()[-1]
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        status = httpx2.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code
        if status == 200:
            break
        time.sleep(0.2)
    assert status == 200


def test_the_readme_monitoring_path_reports_the_requests_made(gateway):
    server, _ = gateway
    # A key of its own: a key sees its own requests, and the rows of the other tests' requests
    # are written up to a second after they ended.
    key = manage(server.env, "create_api_key", "monitoring-test").strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "Count me."}]}
    before = httpx2.get(f"{server.url}/api/metrics/summary?window=15m", headers=headers).json()["requests"]
    for _ in range(3):
        assert httpx2.post(f"{server.url}/v1/chat/completions", json=body, headers=headers).status_code == 200
    deadline = time.monotonic() + 15  # the server writes its metric rows every second
    summary: dict = {}
    while time.monotonic() < deadline:
        summary = httpx2.get(f"{server.url}/api/metrics/summary?window=15m", headers=headers).json()
        if summary["requests"] >= before + 3:
            break
        time.sleep(0.3)
    assert summary["requests"] == before + 3
    assert summary["cache"]["hits"] >= 2  # the same question twice more
    models = httpx2.get(f"{server.url}/api/metrics/models?window=15m", headers=headers).json()
    assert "sim-small" in {row["model"] for row in models["data"]}
    report = manage(server.env, "report", "--window", "15m", "--model", "sim-small")
    assert "Total queries" in report and "sim-small" in report


def test_tokens_arrive_as_they_are_generated_not_at_the_end(gateway):
    server, key = gateway
    body = {
        "model": "sim-small",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "simulate": {"ttft_ms": 0, "tokens_per_s": 10, "output_tokens": 12},
    }
    arrivals = []
    start = time.monotonic()
    with httpx2.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content": "' in line and '"content": ""' not in line:
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 12
    # 12 tokens at 10/s take over a second; the first must not wait for the last.
    assert arrivals[-1] - arrivals[0] > 0.8


def test_the_readme_batch_flow_works_with_the_sdk_and_a_curl_style_upload(gateway, tmp_path):
    server, key = gateway
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        "".join(
            json.dumps(
                {
                    "custom_id": f"doc-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": "sim-small", "messages": [{"role": "user", "content": f"Summarise {i}"}]},
                }
            )
            + "\n"
            for i in range(6)
        )
    )
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    with requests.open("rb") as handle:
        batch_file = client.files.create(file=handle, purpose="batch")
    # curl -F purpose=batch -F file=@requests.jsonl
    with requests.open("rb") as handle:
        uploaded = httpx2.post(
            f"{server.url}/v1/files",
            headers={"Authorization": f"Bearer {key}"},
            data={"purpose": "batch"},
            files={"file": ("requests.jsonl", handle)},
        )
    assert uploaded.status_code == 200 and uploaded.json()["bytes"] == batch_file.bytes
    batch = client.batches.create(
        input_file_id=batch_file.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "t"}
    )
    deadline = time.monotonic() + 30
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch.status
        time.sleep(0.1)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 6
    lines = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == [f"doc-{i}" for i in range(6)]


def test_health_is_503_when_the_database_is_unreachable(tmp_path):
    # A port nothing listens on: the database is down from the first request.
    server = Gateway(base_env(tmp_path, database_url="postgres://postgres@127.0.0.1:1/none"))
    try:
        response = httpx2.get(f"{server.url}/healthz", timeout=15)
        assert response.status_code == 503
        assert response.json()["database"]["ok"] is False
        assert response.json()["status"] == "down"
    finally:
        server.stop()


def test_requests_still_succeed_when_redis_is_unreachable(tmp_path):
    env = base_env(tmp_path)
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    manage(env, "migrate", "--noinput")
    manage(env, "seed_catalog")
    key = manage(env, "create_api_key", "no-redis").strip().splitlines()[-1]
    server = Gateway(env)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        completion = client.chat.completions.create(
            model="sim-small", messages=[{"role": "user", "content": "hi"}], extra_body={"simulate": {"ttft_ms": 0}}
        )
        assert completion.choices[0].message.content.startswith("Simulated")
        health = httpx2.get(f"{server.url}/healthz", timeout=15).json()
        assert health["status"] == "degraded"
        assert health["cache"] == {"ok": False, "backend": "redis"}
    finally:
        server.stop()
