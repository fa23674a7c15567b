"""Run the test suite once per deployment profile.

- embedded: SQLite and local-memory cache, what `make run` uses: every test;
- services: PostgreSQL and Redis, for real (TEST_DATABASE_URL, TEST_REDIS_URL): the tests
  whose behaviour depends on the database, the cache or the channel layer (marked `backends`
  or `services`, see tests/conftest.py).

The embedded profile runs on two pytest-xdist workers, one per core (LLMOPS_TEST_WORKERS),
the services profile on one (LLMOPS_TEST_SERVICES_WORKERS); each keeps its test database between
runs (one per checkout, migrations state and worker). When PostgreSQL or Redis is
unreachable the services profile is skipped, saying so, except under CI=true, where a
missing service is a failure.

`--fast` runs the embedded profile alone, without the browser and benchmark tests: the
edit-run loop (`make test-fast`). Other arguments go to pytest."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
SERVICES_TESTS = "services or backends"
FAST_TESTS = "not browser and not benchmark"
# pytest-xdist workers per profile. The services profile stays on one for now: on two, the
# production profile's test (tests/test_run_prod.py) twice failed to start `make run-prod` in
# time, its database gone, while it passes on one.
WORKERS = {
    "embedded": os.environ.get("LLMOPS_TEST_WORKERS", "2"),
    "services": os.environ.get("LLMOPS_TEST_SERVICES_WORKERS", "1"),
}


def reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def pytest_args(profile: str, extra: list[str]) -> list[str]:
    workers = [] if WORKERS[profile] in ("0", "1") else ["-n", WORKERS[profile], "--dist", "loadgroup"]
    return [PYTHON, "-m", "pytest", "--reuse-db", *workers, *extra]


def run_pytest(profile: str, env_overrides: dict[str, str], extra: list[str]) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    # The tests run with DEBUG off on the development SECRET_KEY, which must then be asked for.
    env.update(env_overrides, LLMOPS_TEST_PROFILE=profile, LLMOPS_ALLOW_INSECURE_SECRET_KEY="true")
    print(f"\n=== test profile: {profile} ===", flush=True)
    return subprocess.call(pytest_args(profile, extra), cwd=ROOT, env=env)


def services_selection() -> str:
    """How many tests the services profile would have run, for the message that says it did not."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    done = subprocess.run(
        [PYTHON, "-m", "pytest", "--collect-only", "-q", "-m", SERVICES_TESTS],
        cwd=ROOT,
        env={**env, "LLMOPS_TEST_PROFILE": "embedded"},
        capture_output=True,
        text=True,
    )
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else "its tests"


def main(argv: list[str]) -> int:
    if "--fast" in argv:
        argv = [a for a in argv if a != "--fast"]
        return run_pytest("embedded", {}, ["-m", FAST_TESTS, *argv])
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    missing = [
        name
        for name, url, port in (("PostgreSQL", DATABASE_URL, 5432), ("Redis", REDIS_URL, 6379))
        if not reachable(url, port)
    ]
    status = run_pytest("embedded", {}, argv)
    if missing:
        message = f"services profile: {' and '.join(missing)} unreachable ({DATABASE_URL}, {REDIS_URL})"
        if ci:
            print(f"FAILED {message}; CI needs both.", flush=True)
            return 1
        print(
            f"SKIPPED {message}: its tests ({services_selection()}) ran on SQLite and local memory only,"
            " and those marked services, listed above as skipped, did not run at all.",
            flush=True,
        )
        return status
    services_env = {"DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL}
    services_status = run_pytest("services", services_env, ["-m", SERVICES_TESTS, *argv])
    return status or services_status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
