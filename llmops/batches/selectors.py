"""What staff see of batches: the batches page's rows, every key's, newest first. Each row is
the progress the runner publishes (llmops.batches.progress) plus the key's name, so that a
row drawn by the server and one updated over the socket carry the same fields."""

from __future__ import annotations

from typing import Any

from llmops.batches.models import Batch
from llmops.batches.progress import batch_progress

PAGE_ROWS = 50

# Validation errors, metadata and provider state can be large and no row shows them.
UNSHOWN = ("errors", "metadata", "provider_batches")


def batches_recent(*, limit: int = PAGE_ROWS) -> list[dict[str, Any]]:
    """The newest batches of every key, as the batches page shows them (one query)."""
    batches = Batch.objects.select_related("api_key").defer(*UNSHOWN).order_by("-created_at", "-id")[:limit]
    return [{**batch_progress(batch), "api_key": batch.api_key.name} for batch in batches]


def batch_key_name(*, batch_id: str) -> str | None:
    """The name of the key a batch belongs to (None once the batch is gone)."""
    return Batch.objects.filter(id=batch_id).values_list("api_key__name", flat=True).first()
