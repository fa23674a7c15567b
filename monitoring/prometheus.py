"""The gateway's Prometheus figures: what GET /metrics serves.

Every request is observed once, from `request_observed` (monitoring.outcomes), off its one
RequestOutcome: counts, latency, time to first token, tokens, cost, cache results and rate-
limit refusals. The state that changes between requests is set where it changes: upstream
calls in flight (llmops.upstream), circuit breakers (llmops.breakers), batch items finished
(llmops.batches.store), open alerts (`alerts_open_set`). Names follow the OpenTelemetry
generative-AI semantic conventions where one exists (gen_ai_*), llmops_* otherwise.

With PROMETHEUS_MULTIPROC_DIR set (prometheus-client reads it at import), each server and
worker process writes its figures to files there and a scrape of any of them sums them all
(prometheus-client's multiprocess mode): what a process counted outlives it, while its
gauges count only as long as it lives (it is marked dead as it exits). Without it the
figures are this process's, beside prometheus-client's process_* and python_gc_* ones.

Labels stay bounded: no key or request in any label; model and route names come from the
configuration, and past MAX_LABEL_VALUES distinct ones the rest are "other". On the hot path
one dict lookup finds the labelled children of a request's labels (`.labels()` costs several
microseconds each); LLMOPS_PROMETHEUS_ENABLED=false turns every observation off."""

from __future__ import annotations

import atexit
import functools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.conf import settings
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from monitoring.outcomes import RequestOutcome

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
MAX_LABEL_VALUES = 200
OTHER = "other"

# No *_created series beside each counter and histogram: they would double what a scrape
# carries, and multiprocess mode has none anyway.
disable_created_metrics()

# The OpenTelemetry conventions' advice for each histogram, with a few finer buckets below
# 10 ms for cache hits.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, *(0.01 * 2**n for n in range(14)))  # 10 ms, 20 ms ... 81.92 s
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TOKEN_BUCKETS = tuple(float(4**n) for n in range(14))  # 1, 4, 16 ... 67,108,864

OPERATIONS = {
    "chat.completions": "chat",
    "ws.chat": "chat",
    "batch": "chat",
    "batch_native": "chat",
    "embeddings": "embeddings",
}
# A key limit's refusal, by its error type (llmops.limits).
KEY_LIMITS = {"requests": "requests", "tokens": "tokens", "insufficient_quota": "budget"}
CACHE_HITS = ("hit", "semantic_hit")

REQUEST_LABELS = (
    "gen_ai_operation_name",
    "gen_ai_request_model",  # what the request named (a model or a route), once it resolved
    "gen_ai_response_model",  # the model that answered ("" when none did)
    "gen_ai_provider_name",
    "route",
    "endpoint",  # chat.completions, ws.chat, batch, batch_native, embeddings
)

DURATION = Histogram(
    "gen_ai_client_operation_duration_seconds",
    "A request's time in the gateway, from its arrival to its end (cache hits and errors included).",
    [*REQUEST_LABELS, "status"],
    buckets=DURATION_BUCKETS,
)
TTFT = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "A streamed answer's time to its first token, from the request's arrival.",
    REQUEST_LABELS,
    buckets=TTFT_BUCKETS,
)
TOKENS = Histogram(
    "gen_ai_client_token_usage",
    "Tokens per request that a model processed (not cache hits), by type (input, output).",
    [*REQUEST_LABELS, "gen_ai_token_type"],
    buckets=TOKEN_BUCKETS,
)
REQUESTS = Counter(
    "llmops_requests_total",
    "Requests ended, by status (ok, error, cancelled) and HTTP status (499: the client left).",
    [*REQUEST_LABELS, "status", "http_status"],
)
COST = Counter("llmops_cost_usd_total", "What the requests cost, in US dollars.", REQUEST_LABELS)
CACHED_TOKENS = Counter(
    "llmops_cached_tokens_total", "Input tokens read from the provider's prompt cache.", REQUEST_LABELS
)
CACHE_WRITE_TOKENS = Counter(
    "llmops_cache_write_tokens_total", "Input tokens written to the provider's prompt cache.", REQUEST_LABELS
)
CACHE_RESULTS = Counter(
    "llmops_cache_results_total",
    "Answer cache lookups, by result (hit, semantic_hit, miss, bypass).",
    ["gen_ai_request_model", "endpoint", "result"],
)
COST_SAVED = Counter(
    "llmops_cost_saved_usd_total",
    "What the answers served from the cache cost when they were made, in US dollars.",
    ["gen_ai_request_model", "endpoint", "result"],
)
RATE_LIMITED = Counter(
    "llmops_rate_limited_total",
    "Refusals for a rate limit: scope key (the API key's requests, tokens or budget: a 429), "
    "model (the catalog's requests or tokens per minute of the model: the call went to a fallback "
    "or was a 429) or upstream (the provider answered 429).",
    ["scope", "limit", "gen_ai_request_model", "endpoint"],
)
IN_FLIGHT = Gauge(
    "llmops_upstream_in_flight",
    "Upstream calls open now.",
    ["gen_ai_request_model"],
    multiprocess_mode="livesum",
)
BREAKER_OPEN = Gauge(
    "llmops_breaker_open",
    "1 while a model's circuit breaker is open (or half-open, waiting for its probe), else 0.",
    ["gen_ai_request_model"],
    multiprocess_mode="livemax",  # open in any process that lives
)
BATCH_ITEMS = Counter(
    "llmops_batch_items_total",
    "Batch items finished, by status (succeeded, failed, cancelled, expired).",
    ["status"],
)
ALERTS_OPEN = Gauge(
    "llmops_alerts_open",
    "Alerts open now, per metric they watch.",
    ["metric"],
    multiprocess_mode="mostrecent",  # the latest evaluation, whichever process made it
)


def _bounded(seen: dict[str, str], value: str) -> str:
    found = seen.get(value)
    if found is not None:
        return found
    if len(seen) >= MAX_LABEL_VALUES:
        return OTHER
    seen[value] = value
    return value


_models: dict[str, str] = {}
_routes: dict[str, str] = {}
_metrics: dict[str, str] = {}


class _Series:
    """The labelled children of one request's labels; those a request may not need are
    made when first needed (a child once made is exported, zeros and all)."""

    __slots__ = (
        "cache",
        "cache_labels",
        "cached",
        "cost",
        "duration",
        "input_tokens",
        "labels",
        "output_tokens",
        "requests",
        "saved",
        "ttft",
        "written",
    )

    def __init__(self, labels: tuple[str, ...], status: str, http_status: int, cache: str) -> None:
        self.labels = labels
        self.requests = REQUESTS.labels(*labels, status, str(http_status))
        self.duration = DURATION.labels(*labels, status)
        self.cache_labels = (labels[1], labels[5], cache)
        self.cache: Any = None
        self.saved: Any = None
        self.ttft: Any = None
        self.input_tokens: Any = None
        self.output_tokens: Any = None
        self.cost: Any = None
        self.cached: Any = None
        self.written: Any = None


_series: dict[tuple[Any, ...], _Series] = {}
_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """A labelled child for the paths that are not every request's (cached all the same)."""
    key = (metric, *labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def _never_raises(observe: Callable[..., None]) -> Callable[..., None]:
    """An observation that fails (the multiprocess directory removed, a full disk) is logged,
    never raised: it runs inside what a request holds (a slot, a lock) and must not keep it."""

    @functools.wraps(observe)
    def safely(*args: Any, **kwargs: Any) -> None:
        try:
            observe(*args, **kwargs)
        except Exception:
            logger.exception("A Prometheus observation failed; the figures may be short")

    return safely


@_never_raises
def prometheus_request_observed(outcome: RequestOutcome) -> None:
    if not settings.LLMOPS_PROMETHEUS_ENABLED:
        return
    endpoint = outcome.endpoint
    # A name that did not resolve (an unknown model, a body refused before) is the client's
    # text: it never becomes a label.
    model = _bounded(_models, outcome.model) if outcome.provider else ""
    answered = _bounded(_models, outcome.answered_by) if outcome.answered_by else ""
    route = _bounded(_routes, outcome.route) if outcome.route else ""
    key = (
        endpoint,
        model,
        answered,
        outcome.provider,
        route,
        outcome.status,
        outcome.http_status,
        outcome.cache_status,
    )
    series = _series.get(key)
    if series is None:
        labels = (OPERATIONS.get(endpoint, endpoint), model, answered, outcome.provider, route, endpoint)
        series = _series[key] = _Series(labels, outcome.status, outcome.http_status, outcome.cache_status)
    series.requests.inc()
    series.duration.observe(outcome.latency_ms / 1000)
    if outcome.ttft_ms is not None:
        if series.ttft is None:
            series.ttft = TTFT.labels(*series.labels)
        series.ttft.observe(outcome.ttft_ms / 1000)
    cache = outcome.cache_status
    hit = cache in CACHE_HITS
    # Only a lookup that was made: a request refused before the cache step (a key's limit, a
    # bad body) has the default "miss" and never reached a model either.
    if endpoint != "embeddings" and (cache != "miss" or outcome.attempts):
        if series.cache is None:
            series.cache = CACHE_RESULTS.labels(*series.cache_labels)
        series.cache.inc()
        if hit and outcome.cost_saved_usd:
            if series.saved is None:
                series.saved = COST_SAVED.labels(*series.cache_labels)
            series.saved.inc(float(outcome.cost_saved_usd))
    usage = outcome.usage
    if not hit:
        if usage.input_tokens > 0:
            if series.input_tokens is None:
                series.input_tokens = TOKENS.labels(*series.labels, "input")
            series.input_tokens.observe(usage.input_tokens)
        if usage.output_tokens > 0:
            if series.output_tokens is None:
                series.output_tokens = TOKENS.labels(*series.labels, "output")
            series.output_tokens.observe(usage.output_tokens)
        if usage.cached_tokens > 0:
            if series.cached is None:
                series.cached = CACHED_TOKENS.labels(*series.labels)
            series.cached.inc(usage.cached_tokens)
        if usage.cache_write_tokens > 0:
            if series.written is None:
                series.written = CACHE_WRITE_TOKENS.labels(*series.labels)
            series.written.inc(usage.cache_write_tokens)
    if outcome.cost_usd:
        if series.cost is None:
            series.cost = COST.labels(*series.labels)
        series.cost.inc(float(outcome.cost_usd))
    if outcome.http_status == 429:
        limit = KEY_LIMITS.get(outcome.error_type)
        if limit is not None:
            _child(RATE_LIMITED, "key", limit, model, endpoint).inc()
    for attempt in outcome.attempts:
        if attempt.outcome == "throttled":
            _child(RATE_LIMITED, "model", "model_rate", _bounded(_models, attempt.model), endpoint).inc()
        elif attempt.outcome == "rate_limited":
            _child(RATE_LIMITED, "upstream", "provider", _bounded(_models, attempt.model), endpoint).inc()


_in_flight: dict[str, int] = {}


@_never_raises
def upstream_in_flight_set(model: str, count: int) -> None:
    """This process's upstream calls to `model` now (its callers hold one lock: llmops.upstream)."""
    if not settings.LLMOPS_PROMETHEUS_ENABLED:
        return
    _in_flight[model] = count
    label = _bounded(_models, model)
    if label == OTHER:  # past the cap: the sum of every model shown as "other"
        count = sum(n for name, n in _in_flight.items() if _bounded(_models, name) == OTHER)
    _child(IN_FLIGHT, label).set(count)


@_never_raises
def breaker_open_set(model: str, is_open: bool) -> None:
    if not settings.LLMOPS_PROMETHEUS_ENABLED:
        return
    _child(BREAKER_OPEN, _bounded(_models, model)).set(1 if is_open else 0)


@_never_raises
def batch_items_finished(status: str, count: int) -> None:
    if count and settings.LLMOPS_PROMETHEUS_ENABLED:
        _child(BATCH_ITEMS, status).inc(count)


_alerts_shown: set[str] = set()


@_never_raises
def alerts_open_set(counts: dict[str, int]) -> None:
    """The alerts open now, per metric watched; a metric left out has none open."""
    if not settings.LLMOPS_PROMETHEUS_ENABLED:
        return
    shown = {_bounded(_metrics, metric) for metric in counts}
    for metric in _alerts_shown - shown:
        _child(ALERTS_OPEN, metric).set(0)
    totals: dict[str, int] = dict.fromkeys(shown, 0)
    for metric, count in counts.items():
        totals[_bounded(_metrics, metric)] += count
    for metric, count in totals.items():
        _child(ALERTS_OPEN, metric).set(count)
    _alerts_shown.clear()
    _alerts_shown.update(shown)


def prometheus_exposition() -> bytes:
    """Every figure in the text format: all processes' with a multiprocess directory."""
    if MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def prometheus_process_exited(pid: int | None = None) -> None:
    """Drop a process's gauges (calls in flight, breakers) from the sums; what it counted stays."""
    if MULTIPROC_DIR:
        multiprocess.mark_process_dead(pid or os.getpid(), MULTIPROC_DIR)


if MULTIPROC_DIR:
    os.makedirs(MULTIPROC_DIR, exist_ok=True)
    # A server that stops normally. Celery's pool processes end with os._exit, which skips
    # this: llmops.tasks marks them on worker_process_shutdown.
    atexit.register(prometheus_process_exited)
