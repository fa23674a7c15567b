"""The settings module reads the environment and stops on a bad value with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_settings(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG")}
    code = (
        "import django; from django.conf import settings; django.setup(); print(settings.CACHES['default']['BACKEND'])"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "llmops.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean"),
        ({"LLMOPS_MAX_BODY_BYTES": "lots"}, "LLMOPS_MAX_BODY_BYTES='lots' is not an integer"),
        ({"LLMOPS_UPSTREAM_TIMEOUT_S": "-1"}, "LLMOPS_UPSTREAM_TIMEOUT_S=-1.0 must be at least 0.1"),
        ({"DATABASE_URL": "nosuchdb://x"}, "DATABASE_URL is not a valid database URL"),
    ],
)
def test_a_bad_value_stops_start_up_with_a_clear_message(env, message):
    done = load_settings(**env)
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr and message in done.stderr


def test_the_embedded_default_and_the_redis_profile(tmp_path):
    assert load_settings().stdout.strip() == "django.core.cache.backends.locmem.LocMemCache"
    with_redis = load_settings(REDIS_URL="redis://127.0.0.1:6379/15")
    assert with_redis.stdout.strip() == "django_redis.cache.RedisCache"


def test_a_secret_can_come_from_a_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    code = "from llmops import settings; print(settings.SECRET_KEY)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "SECRET_KEY_FILE": str(secret)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "from-a-file"
