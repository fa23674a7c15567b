"""`manage.py run_prod` refuses to start the production profile without its services or
with DEBUG on, and says why. tests/test_run_prod.py runs the whole profile."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from llmops.management.commands.run_prod import services_missing

POSTGRESQL = "django.db.backends.postgresql"


def test_it_names_every_service_missing():
    missing = services_missing(database_engine="django.db.backends.sqlite3", redis_url="", broker_url="")
    assert missing == ["DATABASE_URL (a PostgreSQL database, not SQLite)", "REDIS_URL", "CELERY_BROKER_URL"]


def test_it_names_only_what_is_missing():
    assert services_missing(database_engine=POSTGRESQL, redis_url="redis://h/0", broker_url="") == ["CELERY_BROKER_URL"]
    assert services_missing(database_engine=POSTGRESQL, redis_url="redis://h/0", broker_url="redis://h/1") == []


def test_it_stops_before_migrating_and_says_how_to_set_them(settings):
    settings.CELERY_BROKER_URL = ""
    with pytest.raises(CommandError) as refused:
        call_command("run_prod")
    message = str(refused.value)
    assert "CELERY_BROKER_URL" in message and "set" in message
    assert "CELERY_BROKER_URL=redis://127.0.0.1:6379/1 make run-prod" in message


def test_it_runs_with_debug_off(settings):
    settings.DEBUG = True
    with pytest.raises(CommandError, match="DEBUG is on"):
        call_command("run_prod")
