"""A provider with no network: latency, time to first token, token rate, answer length and
error rate come from the catalog entry, and a request may override them
(`"simulate": {...}` in the body) so load tests and benchmarks can script it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

from llmops.catalog import EndpointConfig
from llmops.providers.base import Completion, ProviderCall, StreamDelta, UpstreamError, Usage, estimate_tokens

DEFAULTS: dict[str, float] = {
    "latency_ms": 0.0,
    "ttft_ms": 0.0,
    "tokens_per_s": 0.0,  # 0: every token at once
    "output_tokens": 16,
    "error_rate": 0.0,
}
LIMITS: dict[str, tuple[float, float]] = {
    "latency_ms": (0, 600_000),
    "ttft_ms": (0, 600_000),
    "tokens_per_s": (0, 1_000_000),
    "output_tokens": (1, 100_000),
    "error_rate": (0, 1),
}
WORDS = ("simulated", "answer", "from", "the", "llmops", "gateway", "with", "no", "model", "behind", "it")


def validate_overrides(raw: Any) -> dict[str, float]:
    """Check a request's `simulate` object; raises ValueError with a message for the client."""
    if not isinstance(raw, dict):
        raise ValueError("simulate must be an object")
    clean: dict[str, float] = {}
    for key, value in raw.items():
        if key not in LIMITS:
            raise ValueError(f"simulate.{key} is not a simulation setting (use {', '.join(LIMITS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"simulate.{key} must be a number")
        low, high = LIMITS[key]
        if not low <= value <= high:
            raise ValueError(f"simulate.{key} must be between {low:g} and {high:g}")
        clean[key] = float(value)
    return clean


def _settings(endpoint: EndpointConfig, call: ProviderCall) -> dict[str, float]:
    merged = {**DEFAULTS, **endpoint.simulation, **(call.simulate or {})}
    max_tokens = call.params.get("max_tokens")
    if max_tokens:
        merged["output_tokens"] = min(merged["output_tokens"], max_tokens)
    return merged


def _tokens(count: int) -> list[str]:
    return [("Simulated" if i == 0 else " " + WORDS[i % len(WORDS)]) for i in range(count)]


def _usage(call: ProviderCall, output_tokens: int) -> Usage:
    prompt = "".join(m.get("content", "") for m in call.messages)
    return Usage(input_tokens=estimate_tokens(prompt), output_tokens=output_tokens)


def _finish(call: ProviderCall, count: int) -> str:
    return "length" if count == call.params.get("max_tokens") else "stop"


def _maybe_fail(sim: dict[str, float]) -> None:
    if sim["error_rate"] and random.random() < sim["error_rate"]:
        raise UpstreamError("Simulated upstream failure.", status=502, error_type="upstream_error")


class SimulatedProvider:
    name = "simulated"

    async def complete(self, endpoint: EndpointConfig, call: ProviderCall) -> Completion:
        sim = _settings(endpoint, call)
        count = int(sim["output_tokens"])
        delay = sim["latency_ms"] / 1000
        if not delay:
            delay = sim["ttft_ms"] / 1000 + (count / sim["tokens_per_s"] if sim["tokens_per_s"] else 0)
        if delay:
            await asyncio.sleep(delay)
        _maybe_fail(sim)
        text = "".join(_tokens(count))
        return Completion(text=text, finish_reason=_finish(call, count), usage=_usage(call, count), simulated=True)

    async def stream(self, endpoint: EndpointConfig, call: ProviderCall) -> AsyncIterator[StreamDelta]:
        sim = _settings(endpoint, call)
        count = int(sim["output_tokens"])
        ttft = sim["ttft_ms"] / 1000 or sim["latency_ms"] / 1000
        if ttft:
            await asyncio.sleep(ttft)
        _maybe_fail(sim)
        gap = 1 / sim["tokens_per_s"] if sim["tokens_per_s"] else 0.0
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, token in enumerate(_tokens(count)):
            if gap and index:
                # Pace against the clock, not the previous sleep, so the rate holds under load.
                await asyncio.sleep(max(0.0, start + index * gap - loop.time()))
            yield StreamDelta(text=token)
        yield StreamDelta(
            finish_reason=_finish(call, count),
            usage=_usage(call, count),
        )
