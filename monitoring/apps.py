import json

from django.apps import AppConfig
from django.db.backends.signals import connection_created


def _packed_add_registered(sender, connection, **kwargs) -> None:
    """SQLite's packed_add for the rollups' upsert (PostgreSQL's is a SQL function made by
    migration 0012): JSON arrays in, a JSON array out."""
    if connection.vendor != "sqlite":
        return
    from monitoring.buckets import PACKED_ADD, packed_add, packed_text

    def added(one: str | None, other: str | None) -> str | None:
        if one is None or other is None:
            return other if one is None else one
        return packed_text(packed_add(json.loads(one), json.loads(other)))

    connection.connection.create_function(PACKED_ADD, 2, added, deterministic=True)


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring"

    def ready(self) -> None:
        connection_created.connect(_packed_add_registered, dispatch_uid="monitoring.packed_add")
