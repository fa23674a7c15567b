"""Rows written in bulk without model instances: what the buffered writers (metric rows,
cache entries) send, a few hundred rows a flush under load.

bulk_create builds a model instance per row and assembles a new statement per batch size;
on the proxy path that was about a fifth of the gateway's CPU. Here a model's statement is
built once, each value goes through its field's own `get_db_prep_save` (so the database
sees what the ORM would send), and the rows go by COPY on PostgreSQL, or by one prepared
statement run for every row (executemany) on SQLite. An upsert (a conflict clause) on
PostgreSQL copies the rows into a temporary table of the connection's session and moves
them with one INSERT ... SELECT ... ON CONFLICT: executemany sent one statement per row,
each parsed and planned by the server (on the proxy path the cache entries' upserts cost
PostgreSQL 0.2 ms of CPU per request, more than everything else it did for a request),
and a multi-row VALUES statement of hundreds of rows had its every value quoted into the
statement's text in Python, a new text for the server to parse each time. Through the
copy, PostgreSQL's CPU per proxied request (at 64 connections, one gateway process, two
runs each with a throwaway driver) went from 0.077 ms to 0.057-0.060 ms."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import nullcontext
from functools import lru_cache
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections, models, transaction

_MISSING = object()
# Fields whose database value is the Python value itself when it has exactly the field's
# own type (get_db_prep_save would hand it back unchanged): such values skip the call.
_PLAIN: tuple[tuple[type[models.Field], frozenset[type]], ...] = (
    (models.BooleanField, frozenset({bool, type(None)})),
    (models.CharField, frozenset({str, type(None)})),
    (models.TextField, frozenset({str, type(None)})),
    (models.IntegerField, frozenset({int, type(None)})),
    (models.FloatField, frozenset({float, type(None)})),
)


def _plain_types(field: models.Field) -> frozenset[type]:
    for kind, types in _PLAIN:
        if isinstance(field, kind):
            return types
    return frozenset()


@lru_cache(maxsize=64)
def _columns(model: type[models.Model]) -> tuple[tuple[models.Field, ...], frozenset[str]]:
    """The fields a row fills (all concrete ones but an automatic primary key), and the
    names a row may use for them (the field's name or its column attribute)."""
    fields = tuple(f for f in model._meta.concrete_fields if not isinstance(f, models.AutoField))
    return fields, frozenset(name for f in fields for name in (f.name, f.attname))


@lru_cache(maxsize=64)
def _statement(model: type[models.Model], vendor: str, conflict: tuple[str, tuple[str, ...]] | None) -> tuple[str, ...]:
    """The statements that insert rows, run in order: COPY's (its rows written to it) on
    PostgreSQL; elsewhere one statement with a row's placeholders, run for every row. An
    upsert on PostgreSQL: the temporary table made (once per session), emptied, the rows
    copied into it, then moved from it in the order of their unique value (so that two
    writers taking the same rows lock them in the same order)."""
    quote = connection.ops.quote_name
    fields, _ = _columns(model)
    table = quote(model._meta.db_table)
    columns = ", ".join(quote(f.column) for f in fields)
    tail = ""
    if conflict is not None:
        unique, updated = conflict
        by_name = {f.name: f for f in fields}
        sets = ", ".join(f"{quote(by_name[n].column)} = EXCLUDED.{quote(by_name[n].column)}" for n in updated)
        tail = f" ON CONFLICT ({quote(by_name[unique].column)}) DO UPDATE SET {sets}"
    if vendor != "postgresql":
        return (f"INSERT INTO {table} ({columns}) VALUES (" + ", ".join(["%s"] * len(fields)) + ")" + tail,)
    if conflict is None:
        return (f"COPY {table} ({columns}) FROM STDIN",)
    # The model's own column types and no constraint (what the rows hold is checked by the
    # INSERT), under a name of its shape: a session that outlives a migration (a pooled
    # connection, a pooler's server session) makes a new table rather than use an old one.
    shape = ", ".join(f"{quote(f.column)} {f.db_type(connection)}" for f in fields)
    stage = "pg_temp." + quote(f"llmops_stage_{hashlib.sha256(shape.encode()).hexdigest()[:24]}")
    return (
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ({shape}) ON COMMIT DELETE ROWS",
        f"DELETE FROM {stage}",  # rows an earlier call of the same transaction left
        f"COPY {stage} ({columns}) FROM STDIN",
        f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage} ORDER BY {quote(by_name[unique].column)}{tail}",
    )


def _prepared(model: type[models.Model], rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    fields, known = _columns(model)
    plain = [_plain_types(f) for f in fields]
    database = connections[DEFAULT_DB_ALIAS]  # the wrapper itself, not the per-context proxy
    values = []
    for row in rows:
        unknown = row.keys() - known
        if unknown:
            raise TypeError(f"{model.__name__} has no field {sorted(unknown)[0]!r}")
        line = []
        for field, as_is in zip(fields, plain, strict=True):
            value = row.get(field.attname, _MISSING)
            if value is _MISSING:
                value = row.get(field.name, _MISSING)
                if value is _MISSING:
                    value = field.get_default()
                elif isinstance(value, models.Model):
                    value = value.pk
            if type(value) in as_is:
                line.append(value)
            else:
                line.append(field.get_db_prep_save(value, database))
        values.append(tuple(line))
    return values


def rows_insert(
    model: type[models.Model], rows: Sequence[dict[str, Any]], *, conflict: tuple[str, Sequence[str]] | None = None
) -> None:
    """Insert `rows` (field name -> value; a missing field takes its default). With
    `conflict=(unique_field, updated_fields)`, a row whose unique field is taken updates
    those fields of the row there instead; of rows that share a unique value, only the last
    is written (the unique field must not be NULL). Run it inside the caller's
    transaction: a row the database refuses fails the whole call."""
    if not rows:
        return
    vendor = connection.vendor
    statements = _statement(model, vendor, None if conflict is None else (conflict[0], tuple(conflict[1])))
    values = _prepared(model, rows)
    if conflict is not None and vendor == "postgresql":
        # One statement may not update a row twice: the last row of each unique value.
        at = next(i for i, f in enumerate(_columns(model)[0]) if f.name == conflict[0])
        values = list({line[at]: line for line in values}.values())
    # The temporary table empties itself at the end of each transaction: the upsert is one.
    alone = conflict is not None and vendor == "postgresql" and not connection.in_atomic_block
    with transaction.atomic() if alone else nullcontext(), connection.cursor() as cursor:
        if vendor != "postgresql":
            cursor.executemany(statements[0], values)
            return
        for statement in statements:
            if not statement.startswith("COPY "):
                cursor.execute(statement)
                continue
            # psycopg's own cursor: its errors are turned into Django's here (IntegrityError
            # and the rest), as the ORM's are, so that callers catch one kind.
            with connection.wrap_database_errors, cursor.cursor.copy(statement) as copy:
                for line in values:
                    copy.write_row(line)
