"""Run the test suite once per deployment profile.

- embedded: SQLite and local-memory cache, what `make run` uses;
- services: PostgreSQL and Redis, for real (TEST_DATABASE_URL, TEST_REDIS_URL).

When PostgreSQL or Redis is unreachable the services profile is skipped, saying so, except
under CI=true, where a missing service is a failure."""

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


def reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def run_pytest(profile: str, env_overrides: dict[str, str], extra: list[str]) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    # The tests run with DEBUG off on the development SECRET_KEY, which must then be asked for.
    env.update(env_overrides, LLMOPS_TEST_PROFILE=profile, LLMOPS_ALLOW_INSECURE_SECRET_KEY="true")
    print(f"\n=== test profile: {profile} ===", flush=True)
    return subprocess.call([PYTHON, "-m", "pytest", *extra], cwd=ROOT, env=env)


def main(argv: list[str]) -> int:
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
        print(f"SKIPPED {message}: the PostgreSQL and Redis tests did not run.", flush=True)
        return status
    services_status = run_pytest("services", {"DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL}, argv)
    return status or services_status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
