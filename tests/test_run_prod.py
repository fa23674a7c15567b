"""The production profile, tried as docs/operations.md tells a reader to try it: its
`make run-prod` block runs in bash against this machine's PostgreSQL (a database of its own,
created by the block's createdb and dropped after) and Redis (database 13, emptied before and
after), on a free port. Then one request of each kind, chat completion, Server-Sent Events,
WebSocket chat and batch, goes straight to the gateway and again through nginx running
docs/examples/nginx.conf (the listing on the page is that file); the batch is run by the
Celery worker. Last, a SIGTERM stops the server processes, the worker and beat, and no
process of theirs is left.

nginx is Debian's package (`make test` installs it as root); without it the nginx half is
skipped, except under CI=true, where that fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
import httpx2
import openai
import psycopg
import pytest
import redis
from django.conf import settings

from tests.test_docs import BLOCKS, NOT_CODE, SHELL
from tests.test_live_server import base_env, free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "operations.md"
NGINX_CONF = ROOT / "docs" / "examples" / "nginx.conf"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
DATABASE = "llmops_run_prod_test"
REDIS_DB = 13  # the other tests use 15 (the services profile) and 14 (tests/batches/test_celery_worker.py)
PROCESSES = 2
START_S = 240  # make may first bring .venv up to date

pytestmark = [
    pytest.mark.services,
    pytest.mark.live_server,
    pytest.mark.skipif(
        settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
        reason="runs on the PostgreSQL and Redis of the services profile",
    ),
]


def run_prod_block() -> str:
    found = [b for b in BLOCKS if b.page == PAGE and b.language in SHELL and "make run-prod" in b.code]
    assert len(found) == 1, f"docs/operations.md should have one shell block running make run-prod: {found}"
    return found[0].code


def replaced(text: str, old: str, new: str) -> str:
    assert old in text, f"the docs changed: {old!r} is not in\n{text}"
    return text.replace(old, new)


def processes_under(root: int) -> dict[int, str]:
    """Every process descended from `root`, with its command line."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The parent is the fourth field, after the command name in parentheses.
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                try:
                    found[pid] = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                frontier.append(pid)
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class RunProd:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    key: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def run_prod(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run-prod")
    db = settings.DATABASES["default"]
    server = psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], password=db["PASSWORD"] or None,
        dbname="postgres", autocommit=True,
    )  # fmt: skip
    server.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    broker = urlparse(settings.REDIS_URL)._replace(path=f"/{REDIS_DB}").geturl()
    redis_db = redis.Redis.from_url(broker)
    redis_db.flushdb()

    port = free_port()
    # The page's commands, for this test's database, Redis database, port and Prometheus
    # directory; `exec`, so that the SIGTERM below reaches make as it would from a terminal.
    block = run_prod_block()
    assert block.count(" llmops\n") == 1 and block.count("/llmops\n") == 1, block  # createdb's and the URL's
    block = block.replace("llmops\n", f"{DATABASE}\n")
    block = replaced(block, "REDIS_URL=redis://127.0.0.1:6379/0", f"REDIS_URL={broker}")
    block = replaced(block, "CELERY_BROKER_URL=redis://127.0.0.1:6379/1", f"CELERY_BROKER_URL={broker}")
    block = replaced(block, "make run-prod\n", f"exec make run-prod PORT={port} PROCESSES={PROCESSES} "
                                               f"PROMETHEUS_DIR={workdir / 'prometheus'}\n")  # fmt: skip
    env = base_env(workdir)
    for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY", "LLMOPS_ALLOW_INSECURE_SECRET_KEY",
                 "PROMETHEUS_MULTIPROC_DIR", "DJANGO_SETTINGS_MODULE", "DEBUG"):  # fmt: skip
        env.pop(name, None)
    log = workdir / "run-prod.log"
    with log.open("wb") as out:
        process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    started = RunProd(process, f"http://127.0.0.1:{port}", port, "", log)
    try:
        wait_until_healthy(started.url, process, started.log_text, within_s=START_S, what="make run-prod")
        # The key, as the README makes one, with the page's settings.
        key_env = env | {
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DATABASE}",
            "REDIS_URL": broker,
            "CELERY_BROKER_URL": broker,
            "LLMOPS_ALLOW_INSECURE_SECRET_KEY": "true",  # the key's hash does not depend on SECRET_KEY
        }
        made = subprocess.run([sys.executable, "manage.py", "create_api_key", "run-prod"], cwd=ROOT, env=key_env,
                              capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
        started.key = made.stdout.strip().splitlines()[-1]
        yield started
    finally:
        # Unless test_sigterm_stops_every_process stopped it already.
        left = processes_under(process.pid)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        server.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        server.close()
        redis_db.flushdb()
        redis_db.close()


@pytest.fixture(scope="module")
def nginx(run_prod, tmp_path_factory):
    """nginx with docs/examples/nginx.conf in its http block, in front of run_prod."""
    if NGINX is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed (make test installs it as root)")
        pytest.skip("needs nginx (apt-get install nginx; make test installs it as root)")
    workdir = tmp_path_factory.mktemp("nginx")
    port = free_port()
    site = NGINX_CONF.read_text()
    site = replaced(site, "server 127.0.0.1:8000;", f"server 127.0.0.1:{run_prod.port};")
    site = replaced(site, "listen 80;", f"listen 127.0.0.1:{port};")
    (workdir / "llmops.conf").write_text(site)
    temp_paths = [
        f"{kind}_temp_path {workdir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    ]
    main = [
        # As root, nginx's workers run as nobody, who may not enter this private directory.
        "user root;" if os.geteuid() == 0 else "",
        "worker_processes 1;",
        f"pid {workdir / 'nginx.pid'};",
        f"error_log {workdir / 'error.log'};",
        "events { worker_connections 256; }",
        "http {",
        f"access_log {workdir / 'access.log'};",
        *temp_paths,
        f"include {workdir / 'llmops.conf'};",
        "}",
    ]
    (workdir / "nginx.conf").write_text("\n".join(main) + "\n")
    process = subprocess.Popen(
        [NGINX, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(workdir / "nginx.conf"),
         "-g", "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, (workdir / "error.log").read_text, within_s=15, what="nginx")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.fixture(params=["gateway", "nginx"])
def entry(request, run_prod) -> str:
    """Where a client sends its request: the gateway's port, or nginx in front of it."""
    return run_prod.url if request.param == "gateway" else request.getfixturevalue("nginx")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_nginx_example_is_the_one_on_the_page():
    listings = [b.code for b in BLOCKS if b.page == PAGE and b.language in NOT_CODE]
    assert NGINX_CONF.read_text() in listings


def test_every_server_process_answers_on_the_one_port(run_prod):
    seen = set()
    for _ in range(60):  # a new connection each: the kernel spreads them over the processes
        process = httpx2.get(f"{run_prod.url}/healthz", timeout=10).json()["process"]
        assert process["count"] == PROCESSES
        seen.add(process["pid"])
        if len(seen) == PROCESSES:
            break
    assert len(seen) == PROCESSES


def test_a_chat_completion(run_prod, entry):
    client = openai.OpenAI(base_url=f"{entry}/v1", api_key=run_prod.key, max_retries=0)
    reply = client.chat.completions.with_raw_response.create(
        model="sim-small",
        messages=[{"role": "user", "content": f"Hello through {entry}"}],
        extra_body={"simulate": {"ttft_ms": 0}},
    )
    assert reply.headers["x-llmops-model"] == "sim-small"
    completion = reply.parse()
    assert completion.choices[0].message.content.startswith("Simulated")
    assert completion.usage.total_tokens > 0


def test_a_stream_of_server_sent_events_arrives_token_by_token(run_prod, entry):
    body = {
        "model": "sim-small",
        "messages": [{"role": "user", "content": f"Stream through {entry}"}],
        "stream": True,
        "simulate": {"ttft_ms": 0, "tokens_per_s": 10, "output_tokens": 20},
    }
    arrivals, events = [], []
    start = time.monotonic()
    with httpx2.stream("POST", f"{entry}/v1/chat/completions", json=body, headers=auth(run_prod.key),
                       timeout=30) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if '"content": "' in line and '"content": ""' not in line:
                    arrivals.append(time.monotonic() - start)
    assert events[-1] == "[DONE]"
    assert len(arrivals) == 20
    # 20 tokens at 10 a second, paced by the clock (1.9 s): a proxy that buffered the stream
    # would hand them over at once.
    assert arrivals[-1] - arrivals[0] > 1.0


async def test_a_websocket_chat(run_prod, entry):
    url = entry.replace("http://", "ws://") + "/ws/v1/chat"
    chat = {"type": "chat", "id": "q1", "model": "sim-small", "messages": [{"role": "user", "content": "Hello"}],
            "simulate": {"ttft_ms": 0}}  # fmt: skip
    deltas: list[str] = []
    done: dict = {}
    async with asyncio.timeout(30), aiohttp.ClientSession() as session:
        async with session.ws_connect(url, headers=auth(run_prod.key)) as ws:
            await ws.send_json(chat)
            async for message in ws:
                event = json.loads(message.data)
                assert event["type"] in ("delta", "done"), event
                if event["type"] == "delta":
                    deltas.append(event["text"])
                else:
                    done = event
                    break
        assert ws.close_code == 1000
    assert "".join(deltas).startswith("Simulated")
    assert done["id"] == "q1" and done["model"] == "sim-small" and done["usage"]["completion_tokens"] > 0


def test_a_batch_is_run_by_the_celery_worker(run_prod, entry, tmp_path):
    requests = tmp_path / "requests.jsonl"
    items = [
        {
            "custom_id": f"item-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "sim-small",
                "messages": [{"role": "user", "content": f"Item {i} via {entry}"}],
                "simulate": {"ttft_ms": 0},
            },
        }
        for i in range(3)
    ]
    requests.write_text("".join(json.dumps(item) + "\n" for item in items))
    runs_before = run_prod.log_text().count("Task llmops.batches.run[")
    client = openai.OpenAI(base_url=f"{entry}/v1", api_key=run_prod.key, max_retries=0)
    with requests.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, f"the batch is still {batch.status}:\n{run_prod.log_text()[-3000:]}"
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 3
    lines = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["item-0", "item-1", "item-2"]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    # The server processes hand batches to the broker (LLMOPS_BATCH_EXECUTOR=celery): the
    # worker logged the task that ran this one.
    assert run_prod.log_text().count("Task llmops.batches.run[") > runs_before


def test_metrics_through_the_proxy_need_the_token(run_prod, nginx):
    assert httpx2.get(f"{run_prod.url}/metrics", timeout=10).status_code == 200  # loopback, not forwarded
    assert httpx2.get(f"{nginx}/metrics", timeout=10).status_code == 403  # X-Forwarded-For from nginx


def test_sigterm_stops_every_process(run_prod):
    processes = processes_under(run_prod.process.pid)
    commands = list(processes.values())
    assert sum("manage.py run_prod" in c for c in commands) == 1, commands
    assert sum("manage.py serve" in c for c in commands) == 1, commands
    assert sum("-m llmops.server" in c for c in commands) == PROCESSES, commands
    assert sum("celery -A llmops worker" in c for c in commands) >= 2, commands  # and its pool
    assert sum("celery -A llmops beat" in c for c in commands) == 1, commands

    os.kill(run_prod.process.pid, signal.SIGTERM)  # make, which passes it on
    # make waits for its recipe, then ends by the signal it was sent.
    assert run_prod.process.wait(timeout=60) == -signal.SIGTERM
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {pid: command for pid, command in processes.items() if alive(pid)}
    assert left == {}, left
    assert "run-prod: stopped (server 0, worker 0, beat 0)" in run_prod.log_text()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", run_prod.port), timeout=2):
        pass
