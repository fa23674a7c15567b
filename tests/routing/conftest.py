from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from llmops import catalog
from monitoring.models import QueryMetric
from routing.models import Cascade, CascadeStep, Route, RouteRule
from tests.conftest import add_endpoint
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.upstream import running

CHEAP, STRONG, JUDGE = "rt-cheap", "rt-strong", "rt-judge"
CHEAP_PRICES = {"input_price_per_mtok": Decimal("0.10"), "output_price_per_mtok": Decimal("0.40")}
STRONG_PRICES = {"input_price_per_mtok": Decimal("3.00"), "output_price_per_mtok": Decimal("15.00")}


@pytest.fixture
def cheap_upstream() -> Iterator[FakeOpenAI]:
    yield from running(FakeOpenAI())


@pytest.fixture
def strong_upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    fake.reply(text="positive")
    yield from running(fake)


@pytest.fixture
def judge_upstream() -> Iterator[FakeOpenAI]:
    yield from running(FakeOpenAI())


@pytest.fixture
async def routed_models(upstream_under_test, cheap_upstream, strong_upstream, judge_upstream) -> None:
    """Three OpenAI-compatible models behind fake servers: cheap, strong and a judge."""
    for name, fake, prices in (
        (CHEAP, cheap_upstream, CHEAP_PRICES),
        (STRONG, strong_upstream, STRONG_PRICES),
        (JUDGE, judge_upstream, CHEAP_PRICES),
    ):
        await add_endpoint(name=name, provider="openai", upstream_model=name, base_url=fake.base_url, **prices)
    catalog.reset()


@sync_to_async
def cascade_create(name: str, steps: list[dict[str, Any]]) -> Cascade:
    cascade = Cascade.objects.create(name=name)
    for position, step in enumerate(steps):
        row = CascadeStep(cascade=cascade, position=position, **step)
        row.full_clean()
        row.save()
    catalog.reset()
    return cascade


@sync_to_async
def route_create(name: str, *, rules: list[dict[str, Any]] = (), **fields: Any) -> Route:
    route = Route(name=name, **fields)
    route.full_clean()
    route.save()
    for position, rule in enumerate(rules):
        row = RouteRule(route=route, position=position, **rule)
        row.full_clean()
        row.save()
    catalog.reset()
    return route


def measured_rows(
    option: str, latency_ms: float, *, cost: str, count: int = 30, spread: bool = False, quality: float | None = None
) -> None:
    """`count` successful uncached requests answered by `option` in the last minutes, at
    `latency_ms` each, or spread from half of it to one and a half times it."""
    now = timezone.now()
    batch = secrets.token_hex(4)
    QueryMetric.objects.bulk_create(
        QueryMetric(
            request_id=f"{option}-{batch}-{i}",
            created_at=now - timedelta(seconds=i),
            model=option,
            option=option,
            answered_by=option,
            status="ok",
            cache_status="miss",
            latency_ms=latency_ms * (0.5 + i / count) if spread else latency_ms,
            cost_usd=Decimal(cost),
            quality_score=quality,
        )
        for i in range(count)
    )
