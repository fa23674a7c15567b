"""Rows written in bulk without model instances read back exactly as the ORM's own writes
do, defaults filled, upserts update only what they name, and a wrong field is refused."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.forms.models import model_to_dict
from django.utils import timezone

from caching import store
from caching.models import CacheEntry
from llmops.bulk import rows_insert
from llmops.models import ApiKey
from monitoring.models import QueryMetric

pytestmark = pytest.mark.django_db


def metric(request_id: str, **fields):
    return {
        "request_id": request_id,
        "created_at": timezone.now().replace(microsecond=123456),
        "model": "m\u00e9 'quoted' \\ tab\t",
        "latency_ms": 12.5,
        "input_tokens": 7,
        "cost_usd": Decimal("0.0000001234"),
        "attempts": [{"model": "m", "error": None, "nested": {"n": 1.5}}],
        "stream": True,
        "status": "ok",
        **fields,
    }


def stored(model, **lookup):
    row = model_to_dict(model.objects.get(**lookup))
    row.pop("id")
    return row


def test_rows_read_back_as_the_orms_own_writes_do():
    key = ApiKey.objects.create(name="k", prefix="p", key_hash="h")
    rows_insert(QueryMetric, [metric("bulk-1", api_key_id=key.id), metric("bulk-2", api_key=key, ttft_ms=None)])
    QueryMetric.objects.create(**metric("orm-1", api_key_id=key.id))
    QueryMetric.objects.create(**metric("orm-2", api_key=key, ttft_ms=None))
    for bulk, orm in (("bulk-1", "orm-1"), ("bulk-2", "orm-2")):
        by_bulk, by_orm = stored(QueryMetric, request_id=bulk), stored(QueryMetric, request_id=orm)
        assert by_bulk.pop("request_id") == bulk and by_orm.pop("request_id") == orm
        assert by_bulk == by_orm
    written = QueryMetric.objects.get(request_id="bulk-1")
    assert written.endpoint == "chat.completions" and written.cache_status == "miss"  # the fields' defaults
    assert written.cost_usd == Decimal("0.0000001234") and written.api_key_id == key.id


def test_an_upsert_updates_the_named_fields_of_the_row_there():
    now = timezone.now()
    entry = {
        "key_hash": "a" * 64,
        "model": "m",
        "scope": "shared",
        "group": "g",
        "query": "q",
        "response": {"text": "first"},
        "cost_usd": Decimal("0.5"),
        "embedding": b"\x00\x01\xff",
        "created_at": now,
        "expires_at": now + timedelta(hours=1),
    }
    rows_insert(CacheEntry, [entry], conflict=("key_hash", ["response", "expires_at"]))
    CacheEntry.objects.filter(key_hash=entry["key_hash"]).update(hit_count=3)
    later = {**entry, "response": {"text": "second"}, "model": "other", "expires_at": now + timedelta(hours=2)}
    rows_insert(CacheEntry, [later], conflict=("key_hash", ["response", "expires_at"]))
    found = CacheEntry.objects.get(key_hash=entry["key_hash"])
    assert found.response == {"text": "second"} and found.expires_at == now + timedelta(hours=2)
    assert found.model == "m" and found.hit_count == 3  # not named: kept
    assert bytes(found.embedding) == b"\x00\x01\xff" and CacheEntry.objects.count() == 1


def test_a_wrong_field_or_a_refused_row_writes_nothing():
    with pytest.raises(TypeError, match="no field 'modle'"):
        rows_insert(QueryMetric, [metric("r-1"), metric("r-2", modle="typo")])
    rows_insert(QueryMetric, [metric("taken")])
    with pytest.raises(IntegrityError), transaction.atomic():
        rows_insert(QueryMetric, [metric("fresh"), metric("taken")])
    assert sorted(QueryMetric.objects.values_list("request_id", flat=True)) == ["taken"]


def entry_row(number: int, text: str, **fields):
    now = timezone.now()
    return {
        "key_hash": f"{number:064d}",
        "model": "m",
        "scope": "shared",
        "group": "g",
        "query": f"q{number}",
        "response": {"text": text},
        "created_at": now,
        "expires_at": now + timedelta(hours=1),
        **fields,
    }


def test_a_large_upsert_writes_every_row_and_of_each_key_the_last():
    rows_insert(CacheEntry, [entry_row(0, "old")], conflict=("key_hash", ["response"]))
    CacheEntry.objects.filter(key_hash=entry_row(0, "")["key_hash"]).update(hit_count=3)
    rows = [entry_row(n, f"v{n}") for n in range(20)]
    rows[4:4] = [entry_row(5, "early")]  # in the same statement as its later row
    rows[7:7] = [entry_row(0, "again")]
    rows[9:9] = [entry_row(5, "later")]
    rows_insert(CacheEntry, rows, conflict=("key_hash", ["response"]))
    found = {row.query: row for row in CacheEntry.objects.all()}
    assert sorted(found) == sorted(f"q{n}" for n in range(20))
    assert found["q5"].response == {"text": "later"} and found["q6"].response == {"text": "v6"}
    assert found["q0"].response == {"text": "again"} and found["q0"].hit_count == 3


def test_a_second_upsert_in_the_same_transaction_writes_only_its_own_rows():
    # On PostgreSQL both go through one temporary table of the session, emptied at commit:
    # the second must not write the first's rows again over what changed in between.
    with transaction.atomic():
        rows_insert(CacheEntry, [entry_row(1, "first")], conflict=("key_hash", ["response"]))
        CacheEntry.objects.filter(query="q1").update(response={"text": "changed"})
        rows_insert(CacheEntry, [entry_row(2, "second")], conflict=("key_hash", ["response"]))
    found = dict(CacheEntry.objects.values_list("query", "response"))
    assert found == {"q1": {"text": "changed"}, "q2": {"text": "second"}}


@pytest.mark.django_db(transaction=True)
def test_an_upsert_outside_a_transaction_is_written_and_the_next_one_too():
    # Each one is a transaction of its own: rows copied aside are not lost to a commit
    # between the copy and the insert, and none is left behind for the next call.
    rows_insert(CacheEntry, [entry_row(1, "a"), entry_row(2, "b")], conflict=("key_hash", ["response"]))
    rows_insert(CacheEntry, [entry_row(2, "c")], conflict=("key_hash", ["response"]))
    assert dict(CacheEntry.objects.values_list("query", "response")) == {"q1": {"text": "a"}, "q2": {"text": "c"}}


def test_an_upsert_with_a_refused_row_writes_none_of_them():
    rows = [entry_row(1, "a"), entry_row(2, "b", model=None), entry_row(3, "c")]
    with pytest.raises(IntegrityError), transaction.atomic():
        rows_insert(CacheEntry, rows, conflict=("key_hash", ["response"]))
    assert not CacheEntry.objects.exists()


def test_the_cache_writer_keeps_the_good_records_of_a_batch_with_a_refused_one():
    before = store.ENTRIES.dropped
    batch = [("store", entry_row(1, "a")), ("store", entry_row(2, "b", model=None)), ("store", entry_row(3, "c"))]
    assert store._write(batch) == 2
    assert sorted(CacheEntry.objects.values_list("query", flat=True)) == ["q1", "q3"]
    assert store.ENTRIES.dropped == before + 1
