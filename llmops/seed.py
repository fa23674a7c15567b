"""The catalog a fresh gateway starts with.

Cloud prices are USD per million tokens, read from the providers' public pricing pages
on PRICES_READ_ON. Staff keep them current in the admin; seeding never overwrites a row
that already exists."""

from __future__ import annotations

import datetime
import os
from decimal import Decimal
from typing import Any

from caching.models import CachePolicy
from llmops.models import ModelEndpoint, PromptTemplate
from routing.models import Cascade, CascadeStep, Route, RouteRule

PRICES_READ_ON = datetime.date(2026, 11, 24)

LOCAL_AND_SIMULATED: list[dict[str, Any]] = [
    {
        "name": "smollm2-135m",
        "provider": "local",
        "upstream_model": "",
        "context_window": 2048,
        "max_concurrency": 8,
    },
    {
        "name": "sim-small",
        "provider": "simulated",
        "input_price_per_mtok": Decimal("0.10"),
        "output_price_per_mtok": Decimal("0.40"),
        "cached_input_price_per_mtok": Decimal("0.025"),
        "batch_discount": Decimal("0.5"),
        "context_window": 128_000,
        "max_concurrency": 4096,
        "simulation": {"ttft_ms": 40, "tokens_per_s": 250, "output_tokens": 24, "error_rate": 0},
        # Routing's prior until an evaluation measures it (a simulated model has no real quality).
        "quality_prior": 0.7,
    },
    {
        "name": "sim-large",
        "provider": "simulated",
        "input_price_per_mtok": Decimal("3.00"),
        "output_price_per_mtok": Decimal("15.00"),
        "cached_input_price_per_mtok": Decimal("0.30"),
        "cache_write_price_per_mtok": Decimal("3.75"),
        "batch_discount": Decimal("0.5"),
        "context_window": 200_000,
        "max_concurrency": 4096,
        "simulation": {"ttft_ms": 350, "tokens_per_s": 60, "output_tokens": 64, "error_rate": 0},
        "quality_prior": 0.9,
    },
]

CLOUD: list[dict[str, Any]] = [
    # OpenAI: cached input is billed at the listed cached rate; no separate cache-write charge.
    {"name": "gpt-4o-mini", "provider": "openai", "prices": ("0.15", "0.60", "0.075", "0"), "context_window": 128_000},
    {
        "name": "gpt-4.1-mini",
        "provider": "openai",
        "prices": ("0.40", "1.60", "0.10", "0"),
        "context_window": 1_047_576,
    },
    {"name": "gpt-4.1", "provider": "openai", "prices": ("2.00", "8.00", "0.50", "0"), "context_window": 1_047_576},
    # Anthropic: cache writes (5-minute) cost 1.25x input, cache reads 0.1x.
    {
        "name": "claude-haiku-4-5",
        "provider": "anthropic",
        "prices": ("1.00", "5.00", "0.10", "1.25"),
        "context_window": 200_000,
    },
    {
        "name": "claude-sonnet-4-5",
        "provider": "anthropic",
        "prices": ("3.00", "15.00", "0.30", "3.75"),
        "context_window": 200_000,
    },
    {
        "name": "claude-opus-4-5",
        "provider": "anthropic",
        "prices": ("5.00", "25.00", "0.50", "6.25"),
        "context_window": 200_000,
    },
]

# Few-shot: SmolLM2-135M answers a bare label for about 4% of SST-2 with a plain instruction
# and for all of it with these examples (see `manage.py evaluate` in the README).
SENTIMENT_EXAMPLES = [
    ("I loved this film, it was wonderful.", "positive"),
    ("The food was cold and the service was rude.", "negative"),
    ("The meeting is scheduled for Tuesday at noon.", "neutral"),
    ("a boring, pointless waste of two hours", "negative"),
    ("Great news, we won the match!", "positive"),
    ("The train leaves from platform 4.", "neutral"),
]
PROMPTS: list[dict[str, Any]] = [
    {
        "name": "sentiment",
        "version": 1,
        "description": "Classify the sentiment of a text as positive, negative or neutral (six examples first).",
        "messages": [
            {
                "role": "system",
                "content": "You classify the sentiment of a text. Answer with one word: positive, negative or neutral.",
            },
            *(
                message
                for text, label in SENTIMENT_EXAMPLES
                for message in ({"role": "user", "content": f"Text: {text}"}, {"role": "assistant", "content": label})
            ),
            {"role": "user", "content": "Text: {{text}}"},
        ],
    },
]

KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}

# Every model's answers are cached for an hour, per API key, exact matches only; staff turn
# on the semantic cache or sharing per model in the admin.
DEFAULT_CACHE_POLICY: dict[str, Any] = {
    "name": "default",
    "model_pattern": "",
    "ttl_seconds": 3600,
    "scope": "api_key",
    "normalisation": "whitespace",
    "semantic": False,
    "similarity_threshold": 0.96,
    "embedder": "local",
}


def _cloud_row(entry: dict[str, Any]) -> dict[str, Any]:
    inp, out, cached, write = (Decimal(p) for p in entry["prices"])
    return {
        "name": entry["name"],
        "provider": entry["provider"],
        "upstream_model": entry["name"],
        "input_price_per_mtok": inp,
        "output_price_per_mtok": out,
        "cached_input_price_per_mtok": cached,
        "cache_write_price_per_mtok": write,
        "batch_discount": Decimal("0.5"),
        "prices_read_on": PRICES_READ_ON,
        "context_window": entry["context_window"],
        "max_concurrency": 256,
        # A cloud model is offered only where the gateway holds its provider key.
        "enabled": bool(os.environ.get(KEY_ENV[entry["provider"]])),
    }


# A cascade that shows routing at once: the local model answers, and when its answer is not
# one of the labels or its tokens were unlikely (mean probability under the threshold that
# `manage.py evaluate --fit` tunes), sim-large is asked.
SENTIMENT_CASCADE: dict[str, Any] = {
    "name": "sentiment",
    "description": "The local model first; sim-large when its answer fails the label set or confidence check.",
    "steps": [
        {
            "position": 0,
            "model": "smollm2-135m",
            "labels": "positive, negative, neutral",
            "confidence": "mean",
            # Fitted by `manage.py evaluate --fit` on SST-2 (0.58435); on three-way tweets it fitted 0.72.
            "threshold": 0.58,
            "max_tokens": 4,
        },
        {"position": 1, "model": "sim-large"},
    ],
}
ROUTES: list[dict[str, Any]] = [
    {
        "name": "sentiment",
        "task_type": "classification",
        "description": "Sentiment through the sentiment cascade (use the sentiment prompt).",
        "strategy": "cascade",
        "cascade": "sentiment",
    },
    {
        "name": "support",
        "description": "Short questions to sim-small, hard or long ones to sim-large.",
        "strategy": "single",
        "model_names": "sim-small",
        "rules": [
            {
                "position": 0,
                "name": "hard or long",
                "complexities": "high",
                "strategy": "single",
                "model_names": "sim-large",
            },
            {"position": 1, "name": "long", "min_input_tokens": 2000, "strategy": "single", "model_names": "sim-large"},
        ],
    },
]


def routes_seed() -> list[str]:
    created: list[str] = []
    cascade, was_created = Cascade.objects.get_or_create(
        name=SENTIMENT_CASCADE["name"], defaults={"description": SENTIMENT_CASCADE["description"]}
    )
    if was_created:
        for step in SENTIMENT_CASCADE["steps"]:
            CascadeStep.objects.create(cascade=cascade, **step)
        created.append(f"cascade {cascade.name}")
    for entry in ROUTES:
        fields = {k: v for k, v in entry.items() if k not in ("name", "rules", "cascade")}
        if entry.get("cascade"):
            fields["cascade"] = Cascade.objects.get(name=entry["cascade"])
        route, was_created = Route.objects.get_or_create(name=entry["name"], defaults=fields)
        if was_created:
            for rule in entry.get("rules", []):
                RouteRule.objects.create(route=route, **rule)
            created.append(f"route {route.name}")
    return created


def catalog_seed() -> list[str]:
    """Create the missing seed rows; return the names created."""
    created: list[str] = []
    for row in [*LOCAL_AND_SIMULATED, *(_cloud_row(e) for e in CLOUD)]:
        fields = {k: v for k, v in row.items() if k != "name"}
        _, was_created = ModelEndpoint.objects.get_or_create(name=row["name"], defaults=fields)
        if was_created:
            created.append(row["name"])
    _, was_created = CachePolicy.objects.get_or_create(name=DEFAULT_CACHE_POLICY["name"], defaults=DEFAULT_CACHE_POLICY)
    if was_created:
        created.append("cache policy default")
    for prompt in PROMPTS:
        _, was_created = PromptTemplate.objects.get_or_create(
            name=prompt["name"], version=prompt["version"], defaults=prompt
        )
        if was_created:
            created.append(f"prompt {prompt['name']}@{prompt['version']}")
    return created + routes_seed()
