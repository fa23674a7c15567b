"""`manage.py rebuild_rollups`: rollups from the raw metric rows kept (for rows recorded
before rollups existed, or with LLMOPS_METRICS_ROLLUPS off)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from monitoring.services import rollups_rebuild


class Command(BaseCommand):
    help = (
        "Rebuild the metric rollups from the raw rows kept (replaces every rollup, so those of days whose rows "
        "were pruned are lost). Stop the gateway and workers first: rows written meanwhile could count twice."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        read = rollups_rebuild()
        self.stdout.write(f"Rebuilt the rollups from {read:,} metric rows.")
