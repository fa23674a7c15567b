"""Reads of the alerts: for the dashboard, the webhook's body and the check's result."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from monitoring.models import RELATIVE_METRICS, Alert, AlertMetric

UNITS = {
    AlertMetric.LATENCY_P95: "ms",
    AlertMetric.TTFT_P95: "ms",
    AlertMetric.ERROR_RATE: "share",
    AlertMetric.COST_PER_REQUEST: "usd",
    AlertMetric.CACHE_HIT_RATE: "share",
    AlertMetric.QUALITY: "score",
}
SAMPLES = {
    AlertMetric.LATENCY_P95: "requests",
    AlertMetric.TTFT_P95: "streams",
    AlertMetric.ERROR_RATE: "requests",
    AlertMetric.COST_PER_REQUEST: "requests",
    AlertMetric.CACHE_HIT_RATE: "lookups",
    AlertMetric.QUALITY: "scored answers",
}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _shown(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:,.1f} ms"
    if unit == "usd":
        return f"${value:,.6f}"
    if unit == "share":
        return f"{value * 100:.2f}%"
    return f"{value:.3f}"


def alert_message(alert: Alert) -> str:
    """One line: what regressed, where, by how much, how sure."""
    unit = UNITS[alert.metric]
    where = alert.model or "(no model)"
    if alert.route and alert.route != alert.model:
        where += f" (route {alert.route})"
    effect = f"+{alert.effect:.1f}%" if alert.metric in RELATIVE_METRICS else f"{alert.effect:+.1f} points"
    return (
        f"{alert.get_metric_display()} of {where}: {_shown(alert.recent_value, unit)} against "
        f"{_shown(alert.baseline_value, unit)} ({effect} worse, p={alert.p_value:.2g}, "
        f"{alert.recent_samples:,} against {alert.baseline_samples:,} {SAMPLES[alert.metric]}"
        + (f", last {alert.recent_minutes} min)" if alert.recent_minutes else ")")
    )


def alert_dump(alert: Alert) -> dict[str, Any]:
    """An alert as JSON: what alerts_open() lists and the webhook sends (see alerts_open)."""
    rule = alert.rule
    return {
        "id": alert.pk,
        "metric": str(alert.metric),
        "name": f"{alert.get_metric_display()} regression",
        "model": alert.model,
        "route": alert.route,
        "status": str(alert.status),
        "opened_at": _iso(alert.opened_at),
        "resolved_at": _iso(alert.resolved_at),
        "resolution": alert.resolution,
        "last_checked_at": _iso(alert.last_checked_at),
        "unit": UNITS[alert.metric],
        "baseline": alert.baseline_value,
        "recent": alert.recent_value,
        "effect": round(alert.effect, 3),
        "effect_unit": "%" if alert.metric in RELATIVE_METRICS else "points",
        "p_value": alert.p_value,
        "recent_samples": alert.recent_samples,
        "baseline_samples": alert.baseline_samples,
        "recent_minutes": alert.recent_minutes,
        "rule": None
        if rule is None
        else {
            "id": rule.pk,
            "recent_minutes": rule.recent_minutes,
            "baseline_hours": rule.baseline_hours,
            "min_effect": rule.min_effect,
            "min_samples": rule.min_samples,
            "alpha": rule.alpha,
        },
        "message": alert_message(alert),
    }


def alerts_open() -> list[dict[str, Any]]:
    """The open alerts, latest opened first, each a dict:

    id, metric (latency_p95, ttft_p95, error_rate, cost_per_request, cache_hit_rate, quality),
    name ("p95 latency regression"), model and route (the scope, as MetricSeries holds them;
    "" for none), status ("open"), opened_at, resolved_at (None), resolution (""),
    last_checked_at (ISO 8601 strings), unit (of baseline and recent: "ms", "usd", "share"
    from 0 to 1, or "score" from 0 to 1), baseline and recent (the latest check's values),
    effect and effect_unit (how much worse: "%" of the baseline, or percentage "points"),
    p_value, recent_samples and baseline_samples, recent_minutes (the recent window those are
    over: the rule's whole one, or its last third or two thirds, where a regression showed
    first), rule (id, recent_minutes, baseline_hours,
    min_effect, min_samples, alpha; None once the rule is deleted), and message (one line
    saying all that, for a page or a chat)."""
    alerts = Alert.objects.filter(status=Alert.Status.OPEN).select_related("rule").order_by("-opened_at", "-id")
    return [alert_dump(alert) for alert in alerts]
