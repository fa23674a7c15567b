"""Every command and code sample in the README and docs/ runs, as a reader would run it,
against a gateway started with the README's own `make run`.

A fenced block's language says what it is: `sh` and `bash` blocks run in bash, the `python`
blocks of a page run in order in one interpreter (a page's later samples use the `client`
its first one made), `js` blocks run in headless Chromium on a page of the gateway (what a
frontend runs), and a block with no language is a picture or a listing, not code. Any
other language fails `test_every_block_is_known`, so a new sample cannot be left out.

What a reader types is changed only where the test must differ from their machine:
http://127.0.0.1:8000 (and ws://) is the test's gateway on a free port, `$KEY` and the
"llmops-..." placeholder are a key it created, docs/examples/ is a copy (a batch writes
its results next to its file), and curl is called with --fail-with-body, so an error
answer fails the block. `make run` in the quickstart is the gateway these blocks run
against, and `make test` is this suite; both lines are left out when their block runs.
A command that serves (`manage.py serve`) runs until it says it is serving, then stops. The
block that starts `make run-prod` (docs/operations.md) needs PostgreSQL and Redis: it runs in
tests/test_run_prod.py, on the services profile, and is left out here."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from django.conf import settings

from tests.test_live_server import CHROMIUM, CHROMIUM_FLAGS, base_env, free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL, PYTHON, JS, NOT_CODE = {"sh", "bash"}, {"python"}, {"js"}, {""}

pytestmark = [
    pytest.mark.live_server,
    # One gateway of its own on the embedded default, whatever the profile.
    pytest.mark.skipif(bool(settings.REDIS_URL), reason="runs once, in the embedded profile"),
]


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for page in PAGES:
        opened: tuple[str, int] | None = None
        lines: list[str] = []
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            if line.startswith("```"):
                if opened is None:
                    opened, lines = (line[3:].strip(), number), []
                else:
                    found.append(Block(page, opened[1], opened[0], "\n".join(lines) + "\n"))
                    opened = None
            elif opened is not None:
                lines.append(line)
        assert opened is None, f"{page}: a code block opened at line {opened[1]} is never closed"
    return found


BLOCKS = blocks()


def test_every_block_is_known():
    unknown = [b.name for b in BLOCKS if b.language not in SHELL | PYTHON | JS | NOT_CODE]
    assert unknown == [], f"code blocks in a language this test does not run: {unknown}"
    assert sum(b.language in SHELL | PYTHON | JS for b in BLOCKS) >= 15  # the extraction finds them


@dataclass
class Served:
    url: str
    key: str
    env: dict[str, str]
    examples: Path

    def adapt(self, code: str) -> str:
        code = code.replace("http://127.0.0.1:8000", self.url)
        code = code.replace("ws://127.0.0.1:8000", self.url.replace("http://", "ws://"))
        code = code.replace("llmops-...", self.key)
        return code.replace("docs/examples/", f"{self.examples}/")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The README's quickstart: `make run` (on a database of its own and a free port), and a
    key from `manage.py create_api_key`."""
    workdir = tmp_path_factory.mktemp("docs")
    port = free_port()
    env = base_env(workdir) | {"PORT": str(port)}
    for name in ("SECRET_KEY", "CELERY_BROKER_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"):
        env.pop(name, None)
    log = open(workdir / "make-run.log", "wb")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(["make", "run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server, (workdir / "make-run.log").read_text, within_s=300, what="make run")
        made = subprocess.run([sys.executable, "manage.py", "create_api_key", "docs"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
        examples = workdir / "examples"
        shutil.copytree(ROOT / "docs" / "examples", examples)
        yield Served(url, made.stdout.strip().splitlines()[-1], env, examples)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


QUICKSTART_LINES = re.compile(r"^make (run|test)\b")
SERVES = re.compile(r"manage\.py serve\b")
RUN_PROD = re.compile(r"\bmake run-prod\b")


def shell_blocks() -> list[Block]:
    return [b for b in BLOCKS if b.language in SHELL and not RUN_PROD.search(b.code)]


@pytest.mark.parametrize("block", shell_blocks(), ids=lambda b: b.name)
def test_shell_block(served, block):
    code = "\n".join(line for line in block.code.splitlines() if not QUICKSTART_LINES.match(line))
    if not code.strip():
        # The quickstart's two commands: `make run` is the gateway these blocks run against
        # (serving, or the fixture would have failed), `make test` is this suite.
        assert httpx2.get(f"{served.url}/healthz", timeout=10).status_code == 200
        return
    code = served.adapt(code).replace("--port 8000", f"--port {free_port()}").replace("0.0.0.0", "127.0.0.1")
    env = served.env | {"KEY": served.key}
    prelude = 'curl() { command curl --silent --show-error --fail-with-body "$@"; }\n'
    if SERVES.search(code):
        process = subprocess.Popen(["bash", "-c", "exec " + code.strip()], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
        try:
            first = process.stdout.readline()
            assert first.startswith("Serving on http://"), first + process.stdout.read(2000)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        return
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", prelude + code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, f"{block.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"{block.name} printed nothing"


def python_pages() -> list[Path]:
    return [page for page in PAGES if any(b.page == page and b.language in PYTHON for b in BLOCKS)]


@pytest.mark.parametrize("page", python_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks(served, page):
    from openai import OpenAI

    # A page's samples use `client`, made as its first sample (or the README's) makes it.
    namespace = {"client": OpenAI(base_url=f"{served.url}/v1", api_key=served.key)}
    for block in (b for b in BLOCKS if b.page == page and b.language in PYTHON):
        exec(compile(served.adapt(block.code), block.name, "exec"), namespace)


# Around a sample: every WebSocket it opens is watched, and the run ends when all are closed.
JS_HARNESS = """async () => {
  const sockets = [], closes = [], logs = [];
  const Native = window.WebSocket;
  window.WebSocket = function (...args) {
    const socket = new Native(...args);
    sockets.push(socket);
    socket.addEventListener("close", (event) => closes.push(event.code));
    return socket;
  };
  for (const level of ["log", "error"]) {
    const original = console[level];
    console[level] = (...args) => {
      logs.push(level + ": " + args.map((a) => JSON.stringify(a)).join(" "));
      original(...args);
    };
  }
  SAMPLE
  const deadline = Date.now() + 30000;
  while (!(sockets.length && closes.length === sockets.length) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {opened: sockets.length, closes, logs};
}"""


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language in JS], ids=lambda b: b.name)
def test_js_block(served, block):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed (make test installs it as root)")
        pytest.skip("needs Chromium (apt-get install chromium; make test installs it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{served.url}/healthz")  # a page of the gateway's own origin
            ran = page.evaluate(JS_HARNESS.replace("SAMPLE", served.adapt(block.code)))
        finally:
            browser.close()
    assert ran["opened"] >= 1 and ran["closes"] == [1000] * ran["opened"], ran
    assert ran["logs"] and not any(line.startswith("error:") for line in ran["logs"]), ran
    print(json.dumps(ran["logs"]))
