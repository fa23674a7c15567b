"""`manage.py check_regressions [--now ISO]`: the regression checks once, for cron (where no
Celery beat or server thread runs them), printing each alert opened and resolved."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from monitoring.alerts import regressions_check
from monitoring.alerts.selectors import alert_message


class Command(BaseCommand):
    help = "Run every enabled alert rule once; print the alerts it opened and resolved."

    def add_arguments(self, parser):
        parser.add_argument(
            "--now", help="Check as at this ISO 8601 time (a replay), e.g. 2026-12-01T09:30:00Z; by default now."
        )

    def handle(self, *args: Any, now: str | None = None, **options: Any) -> None:
        at = None
        if now:
            at = parse_datetime(now)
            if at is None:
                raise CommandError(f"--now must be an ISO 8601 date and time, like 2026-12-01T09:30:00Z, not {now!r}.")
            if timezone.is_naive(at):
                at = at.replace(tzinfo=UTC)
        result = regressions_check(now=at)
        for alert in result.opened:
            self.stdout.write(f"opened #{alert.pk}: {alert_message(alert)}")
        for alert in result.resolved:
            self.stdout.write(f"resolved #{alert.pk} ({alert.resolution}): {alert_message(alert)}")
        scopes = len({(finding.model, finding.route) for finding in result.findings})
        self.stdout.write(
            f"Checked {result.rules} rules over {scopes} models and routes at {result.at:%Y-%m-%d %H:%M:%S} UTC: "
            f"{len(result.opened)} opened, {len(result.resolved)} resolved, {result.open} open."
        )
