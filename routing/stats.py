"""What each option (a model, or a cascade) measured: p95 latency, cost per 1,000 requests
and quality, from QueryMetric over a window and the latest evaluation; with the catalog's
priors where too few requests were measured. The hot path reads a snapshot that is
refreshed in the background, so choosing under limits costs no query."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError

from llmops.catalog import EndpointConfig
from llmops.pricing import cost_usd
from llmops.usage import Usage
from monitoring.selectors import Measured, measured_load
from routing.config import CascadeConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Figures:
    """One option's figures and where each came from: "measured (n=…)", "evaluation",
    "prior" (the catalog), or "unknown"."""

    option: str
    p95_ms: float | None
    cost_per_1k: float | None
    quality: float | None
    samples: int
    sources: dict[str, str]

    def dump(self) -> dict[str, object]:
        return {
            "option": self.option,
            "p95_ms": None if self.p95_ms is None else round(self.p95_ms, 1),
            "cost_per_1k": None if self.cost_per_1k is None else round(self.cost_per_1k, 6),
            "quality": None if self.quality is None else round(self.quality, 4),
            "samples": self.samples,
            "sources": self.sources,
        }


class MeasuredSnapshot:
    """The measured figures of every option, at most LLMOPS_ROUTING_STATS_TTL_S old: a stale
    snapshot is served while a fresh one loads in the background, and requests that find
    none wait for one load between them (per event loop), not one each."""

    def __init__(self) -> None:
        self._value: dict[str, Measured] | None = None
        self._options: frozenset[str] = frozenset()
        self._loaded_at = 0.0
        self._loads: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self, options: list[str]) -> dict[str, Measured]:
        wanted = frozenset(options)
        if self._value is not None and wanted <= self._options:
            if time.monotonic() - self._loaded_at >= settings.LLMOPS_ROUTING_STATS_TTL_S:
                self._load_started(wanted)
            return self._value
        for _ in range(2):  # a load already under way may be for other options
            await asyncio.shield(self._load_started(wanted))
            if self._value is not None and wanted <= self._options:
                break
        assert self._value is not None
        return self._value

    def _load_started(self, wanted: frozenset[str]) -> asyncio.Task[None]:
        loop = asyncio.get_running_loop()
        task = self._loads.get(loop)
        if task is None or task.done():
            task = self._loads[loop] = loop.create_task(self._load(self._options | wanted))
        return task

    async def _load(self, options: frozenset[str]) -> None:
        try:
            value = await sync_to_async(measured_load)(
                sorted(options),
                window_s=settings.LLMOPS_ROUTING_WINDOW_S,
                max_rows=settings.LLMOPS_ROUTING_STATS_MAX_ROWS,
            )
        except DatabaseError:
            # Routing goes on without measurements (on the priors) rather than failing requests.
            logger.warning("Routing could not read the measured figures; using what it had", exc_info=True)
            value = self._value if self._value is not None else {}
        self._value, self._options, self._loaded_at = value, options, time.monotonic()

    def reset(self) -> None:
        self._value, self._options, self._loaded_at = None, frozenset(), 0.0


MEASURED = MeasuredSnapshot()


def latency_prior_ms(endpoint: EndpointConfig) -> float | None:
    """The catalog's expected latency: set by staff, or for a simulated model what its
    settings make it take."""
    if endpoint.latency_prior_ms is not None:
        return endpoint.latency_prior_ms
    if endpoint.provider == "simulated":
        sim = endpoint.simulation
        if sim.get("latency_ms"):
            return float(sim["latency_ms"])
        tokens, rate = float(sim.get("output_tokens", 16)), float(sim.get("tokens_per_s", 0) or 0)
        return float(sim.get("ttft_ms", 0)) + (tokens / rate * 1000 if rate else 0.0)
    return None


def cost_prior_per_1k(endpoint: EndpointConfig, input_tokens: int) -> float:
    usage = Usage(input_tokens=input_tokens, output_tokens=settings.LLMOPS_ESTIMATED_OUTPUT_TOKENS)
    return float(cost_usd(endpoint, usage)) * 1000


def figures_for(
    option: str,
    *,
    endpoints: list[EndpointConfig],
    cascade: CascadeConfig | None,
    measured: dict[str, Measured],
    evaluated: dict[str, float],
    input_tokens: int,
) -> Figures:
    """An option's figures: measured where it has enough samples, else the catalog's priors
    (a cascade's prior is the worst case: every step asked); quality from the latest
    evaluation, else the model's prior."""
    seen = measured.get(option)
    enough = seen is not None and seen.samples >= settings.LLMOPS_ROUTING_MIN_SAMPLES
    sources: dict[str, str] = {}
    p95: float | None
    cost: float | None
    if enough:
        assert seen is not None
        p95, cost = seen.p95_ms, seen.cost_per_1k
        sources["latency"] = sources["cost"] = f"measured (n={seen.samples})"
    else:
        priors = [latency_prior_ms(e) for e in endpoints]
        p95 = sum(p for p in priors if p is not None) if priors and None not in priors else None
        cost = sum(cost_prior_per_1k(e, input_tokens) for e in endpoints) if endpoints else None
        few = f", {seen.samples} measured" if seen is not None else ""
        sources["latency"] = f"prior{few}" if p95 is not None else f"unknown{few}"
        sources["cost"] = f"prior{few}"
    quality: float | None = evaluated.get(option)
    if quality is not None:
        sources["quality"] = "evaluation"
    elif cascade is None and endpoints and endpoints[0].quality_prior is not None:
        quality = endpoints[0].quality_prior
        sources["quality"] = "prior"
    else:
        sources["quality"] = "unknown"
    return Figures(option, p95, cost, quality, seen.samples if seen is not None else 0, sources)


def pareto_optimal(figures: list[Figures]) -> set[str]:
    """Options no other option beats on latency, cost and quality at once (lower latency,
    lower cost, higher quality; at least as good on all three and better on one). An option
    missing a figure is left out: it cannot be compared."""
    known = [f for f in figures if f.p95_ms is not None and f.cost_per_1k is not None and f.quality is not None]

    def dominates(a: Figures, b: Figures) -> bool:
        assert a.p95_ms is not None and b.p95_ms is not None and a.cost_per_1k is not None
        assert b.cost_per_1k is not None and a.quality is not None and b.quality is not None
        no_worse = a.p95_ms <= b.p95_ms and a.cost_per_1k <= b.cost_per_1k and a.quality >= b.quality
        better = a.p95_ms < b.p95_ms or a.cost_per_1k < b.cost_per_1k or a.quality > b.quality
        return no_worse and better

    return {b.option for b in known if not any(dominates(a, b) for a in known if a is not b)}
