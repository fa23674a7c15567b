"""Regression checks: for every enabled AlertRule and every model and route seen in its recent
window, the recent window against the baseline before it, by the metric's test
(monitoring.alerts.stats). An alert opens when the test is significant at the rule's level,
the worsening is at least its minimum and both windows hold its minimum of samples; it
resolves, with hysteresis, once the test is no longer significant at RESOLVE_P, or the upper
bound of the worsening's one-sided 95% confidence interval is under the minimum: a point
estimate under it is not enough (a p95 of 200 values jumps by a tenth from one minute to
the next), a regression shown to be smaller than it is.

Windows are whole minutes: the recent one ends at the last complete minute before `now`, and
is tested whole and as its last third and two thirds (scan_windows), each at the rule's
level divided by three; the first that shows a regression opens the alert, and it recovers
only once every window judged has. The baseline is whole hours ending at the hour the
recent window starts in, so it changes once an hour and its reads are kept in process
between checks (checked cheaply for new rows, so a late write is never missed). A check
reads the rollups with three queries per recent window (usually three for every rule), and
three more once an hour, whatever the number of models and routes; the rules and the open
alerts are one query each.

The rules' significance level defaults to 0.00001 (AlertRule.alpha): a week of checks every
minute is 10,080 checks per rule, model and route, and tens of those pairs make hundreds of
thousands; the windows of successive checks overlap, so false alarms come as one alert per
excursion, not one per check, but a week of them at 0.0001 was still five false alerts in
`python -m benchmarks.alerts_detection` (four models and routes, six rules). At 0.00001
with the scanned windows that replay measured one false alert in a week, and a 20% slowdown
caught in a median 6 minutes at 30 requests a minute, 11 at 18 (worst 22: at that rate the
last third holds under the rules' 100 samples)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone

from monitoring.alerts.measures import MEASURES
from monitoring.alerts.reads import EMPTY, HOUR, MINUTE, Scope, Side, baseline_read, recent_read
from monitoring.alerts.selectors import alert_dump
from monitoring.alerts.webhook import alert_notify
from monitoring.models import Alert, AlertMetric, AlertRule
from monitoring.prometheus import alerts_open_set
from monitoring.windows import Window

logger = logging.getLogger(__name__)

RESOLVE_P = 0.05
SCAN_PARTS = 3  # recent windows tested for an alert to open: the last third, two thirds, all
# The smallest worsening each seeded rule alerts on (percent, or percentage points). The
# effect is read over the whole recent window, which a regression fills minute by minute: a
# regression well over a rule's minimum is caught within the window, one of exactly the
# minimum only once it fills the window, and then half the time (20% slower with 10%, 5
# quality points with 3).
DEFAULT_MIN_EFFECTS = {
    AlertMetric.LATENCY_P95: 10.0,
    AlertMetric.TTFT_P95: 10.0,
    AlertMetric.ERROR_RATE: 2.0,
    AlertMetric.COST_PER_REQUEST: 10.0,
    AlertMetric.CACHE_HIT_RATE: 5.0,
    AlertMetric.QUALITY: 3.0,
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule's comparison for one model and route."""

    rule: AlertRule
    model: str
    route: str
    recent_samples: int
    baseline_samples: int
    recent_value: float | None = None
    baseline_value: float | None = None
    effect: float | None = None  # how much worse: percent of the baseline, or points
    effect_upper: float | None = None  # the upper bound of its one-sided 95% confidence interval
    p_value: float = 1.0
    windows: int = 1  # how many recent windows the rule's significance level is split between
    recent_minutes: int | None = None  # this finding's recent window (None: the rule's whole one)

    @property
    def judged(self) -> bool:
        least = self.rule.min_samples
        return self.effect is not None and self.recent_samples >= least and self.baseline_samples >= least

    @property
    def regressed(self) -> bool:
        return self.judged and self.p_value < self.rule.alpha / self.windows and self.effect >= self.rule.min_effect

    @property
    def recovered(self) -> bool:
        return self.judged and (self.p_value >= RESOLVE_P or self.effect_upper < self.rule.min_effect)

    def dump(self) -> dict[str, Any]:
        return {
            "metric": str(self.rule.metric),
            "rule": self.rule.pk,
            "model": self.model,
            "route": self.route,
            "recent_samples": self.recent_samples,
            "baseline_samples": self.baseline_samples,
            "recent": self.recent_value,
            "baseline": self.baseline_value,
            "effect": None if self.effect is None else round(self.effect, 3),
            "effect_upper": None if self.effect_upper is None else round(self.effect_upper, 3),
            "p_value": self.p_value,
            "recent_minutes": self.recent_minutes or self.rule.recent_minutes,
            "regressed": self.regressed,
        }


@dataclass(slots=True)
class CheckResult:
    at: datetime
    rules: int
    findings: list[Finding]
    opened: list[Alert]
    resolved: list[Alert]
    open: int

    def dump(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "rules": self.rules,
            "scopes": len({(f.model, f.route) for f in self.findings}),
            "opened": [alert_dump(alert) for alert in self.opened],
            "resolved": [alert_dump(alert) for alert in self.resolved],
            "open": self.open,
        }


def alert_rules_seed() -> int:
    """One rule per metric with the defaults, when there are no rules at all (the first check
    makes them; a rule deleted stays deleted unless every one is: disable one to silence it)."""
    if AlertRule.objects.exists():
        return 0
    AlertRule.objects.bulk_create(
        [AlertRule(metric=metric, min_effect=effect) for metric, effect in DEFAULT_MIN_EFFECTS.items()]
    )
    return len(DEFAULT_MIN_EFFECTS)


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def rule_windows(rule: AlertRule, now: datetime) -> tuple[Window, Window]:
    """(recent, baseline) for a check at `now`."""
    end = int(now.timestamp())
    end -= end % MINUTE
    start = end - rule.recent_minutes * MINUTE
    baseline_end = start - start % HOUR
    return (
        Window(start=_at(start), end=_at(end)),
        Window(start=_at(baseline_end - rule.baseline_hours * HOUR), end=_at(baseline_end)),
    )


def scan_windows(recent: Window) -> list[Window]:
    """The recent window and its last thirds and two thirds (whole minutes), shortest first. A
    regression a few minutes old fills a short window and a fraction of the whole one: the
    short window shows it with fewer samples but far less dilution, so it is seen minutes
    sooner. Each is tested at the rule's level divided by their number (Bonferroni), so a
    check's chance of a false alarm stays what the rule's level says."""
    end = int(recent.end.timestamp())
    minutes = (end - int(recent.start.timestamp())) // MINUTE
    lengths = sorted({max(1, round(minutes * part / SCAN_PARTS)) for part in range(1, SCAN_PARTS + 1)})
    return [Window(start=_at(end - length * MINUTE), end=recent.end) for length in lengths]


def _evaluate(rule: AlertRule, scope: Scope, recent: Side, baseline: Side, **extra: Any) -> Finding:
    n_recent, n_baseline, judge = MEASURES[rule.metric](recent, baseline)
    if n_recent < rule.min_samples or n_baseline < rule.min_samples:
        return Finding(rule, *scope, n_recent, n_baseline, **extra)  # not judged: no test run
    return Finding(rule, *scope, n_recent, n_baseline, *judge(), **extra)


def windows_recovered(judged: list[Finding]) -> bool:
    """Whether an open alert recovers: every window that could be judged has, and one could."""
    seen = [finding for finding in judged if finding.judged]
    return bool(seen) and all(finding.recovered for finding in seen)


FIGURES = (
    "recent_samples",
    "baseline_samples",
    "recent_value",
    "baseline_value",
    "effect",
    "p_value",
    "recent_minutes",
)


def _figures(finding: Finding) -> dict[str, Any]:
    p_value = finding.p_value if math.isfinite(finding.p_value) else 1.0
    return {name: getattr(finding, name) for name in FIGURES} | {"p_value": p_value}


def _alert_open(finding: Finding, now: datetime) -> Alert | None:
    try:
        with transaction.atomic():
            return Alert.objects.create(
                rule=finding.rule,
                metric=finding.rule.metric,
                model=finding.model,
                route=finding.route,
                opened_at=now,
                last_checked_at=now,
                **_figures(finding),
            )
    except IntegrityError:
        return None  # another checker opened it meanwhile (and tells of it)


def _alert_resolve(alert: Alert, now: datetime, reason: str, figures: dict[str, Any]) -> bool:
    changes = {"status": Alert.Status.RESOLVED, "resolved_at": now, "resolution": reason, "last_checked_at": now}
    changes.update(figures)
    # Only the checker whose update finds it open resolves it (and tells of it).
    if not Alert.objects.filter(pk=alert.pk, status=Alert.Status.OPEN).update(**changes):
        return False
    for name, value in changes.items():
        setattr(alert, name, value)
    return True


def regressions_check(*, now: datetime | None = None) -> CheckResult:
    """Run every enabled rule at `now` (a replay passes simulated times); open and resolve
    alerts, tell the webhook of each, and set the open-alert gauge."""
    now = now or timezone.now()
    alert_rules_seed()
    rules = list(AlertRule.objects.filter(enabled=True))
    recent_reads: dict[Window, dict[Scope, Side]] = {}
    baseline_reads: dict[Window, dict[Scope, Side]] = {}
    findings: list[Finding] = []
    recovered: dict[int, bool] = {}  # by id(finding): whether every window judged has recovered
    for rule in rules:
        whole, before = rule_windows(rule, now)
        scans = scan_windows(whole)
        for window in scans:
            if window not in recent_reads:
                recent_reads[window] = recent_read(window)
        if before not in baseline_reads:
            baseline_reads[before] = baseline_read(before)
        baseline = baseline_reads[before]
        for scope in sorted(recent_reads[scans[-1]]):
            judged = [
                _evaluate(
                    rule,
                    scope,
                    recent_reads[window].get(scope, EMPTY),
                    baseline.get(scope, EMPTY),
                    windows=len(scans),
                    recent_minutes=round(window.seconds / MINUTE),
                )
                for window in scans
            ]
            # The first window that shows a regression opens (or keeps) the alert. It recovers
            # only once every window judged has: a regression minutes old still shows in the
            # short window while the whole one dilutes it under the minimum.
            finding = next((finding for finding in judged if finding.regressed), judged[-1])
            findings.append(finding)
            recovered[id(finding)] = windows_recovered(judged)

    open_alerts = {
        (alert.rule_id, alert.model, alert.route): alert
        for alert in Alert.objects.filter(status=Alert.Status.OPEN).select_related("rule")
    }
    opened: list[Alert] = []
    resolved: list[Alert] = []
    checked: list[Alert] = []
    for finding in findings:
        alert = open_alerts.pop((finding.rule.pk, finding.model, finding.route), None)
        if alert is None:
            if finding.regressed:
                new = _alert_open(finding, now)
                if new is not None:
                    opened.append(new)
        elif recovered[id(finding)]:
            if _alert_resolve(alert, now, "recovered", _figures(finding)):
                resolved.append(alert)
        else:
            # Still regressed, or not enough samples to tell: the figures are the latest judged.
            alert.last_checked_at = now
            if finding.judged:
                for name, value in _figures(finding).items():
                    setattr(alert, name, value)
            checked.append(alert)
    enabled = {rule.pk for rule in rules}
    for alert in open_alerts.values():
        if alert.rule_id not in enabled:
            reason = "rule deleted" if alert.rule_id is None else "rule disabled"
            if _alert_resolve(alert, now, reason, {}):
                resolved.append(alert)
    if checked:
        Alert.objects.bulk_update(checked, ["last_checked_at", *FIGURES])

    for alert in opened:
        alert_notify(alert, "opened")
    for alert in resolved:
        alert_notify(alert, "resolved")
    counts = dict.fromkeys(AlertMetric.values, 0)
    for row in Alert.objects.filter(status=Alert.Status.OPEN).values("metric").annotate(n=Count("id")).order_by():
        counts[row["metric"]] = row["n"]
    alerts_open_set(counts)
    for alert in opened:
        logger.warning("Alert opened: %s", alert_dump(alert)["message"])
    for alert in resolved:
        logger.info("Alert resolved (%s): %s", alert.resolution, alert_dump(alert)["message"])
    return CheckResult(
        at=now, rules=len(rules), findings=findings, opened=opened, resolved=resolved, open=sum(counts.values())
    )
