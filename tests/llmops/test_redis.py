"""The production profile's shared state: django-redis for the cache, channels-redis for
the channel layer. Runs against the real Redis in the services profile."""

from __future__ import annotations

import pytest
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def test_the_cache_is_django_redis_failing_open():
    backend = settings.CACHES["default"]
    assert backend["BACKEND"] == "django_redis.cache.RedisCache"
    assert backend["OPTIONS"]["IGNORE_EXCEPTIONS"] is True
    cache.set("llmops:test", {"a": 1}, 30)
    from django_redis import get_redis_connection

    assert get_redis_connection("default").exists(cache.make_key("llmops:test"))


async def test_the_channel_layer_is_redis_and_carries_messages():
    layer = get_channel_layer()
    assert type(layer).__module__.startswith("channels_redis")
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "chat.delta", "text": "hello"})
    assert await layer.receive(channel) == {"type": "chat.delta", "text": "hello"}
