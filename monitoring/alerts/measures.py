"""Each metric's comparison of a recent window with its baseline (monitoring.alerts.reads):
the samples of each, and a judgement run when both have enough: the two values, how much
worse the recent one is (percent of the baseline, or percentage points), the upper bound of
that effect's one-sided 95% confidence interval, and the test's p-value
(monitoring.alerts.stats)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from datetime import datetime

from monitoring.alerts.reads import Side
from monitoring.alerts.stats import mann_whitney_greater, mean_difference, proportion_greater
from monitoring.buckets import percentiles
from monitoring.models import AlertMetric
from monitoring.rollups import COST_UNITS

BOUND_Z = 1.645  # the one-sided 95% confidence bounds of the effects

Judged = tuple[float | None, float | None, float | None, float | None, float]  # recent, baseline, effect, its bound, p
Measure = tuple[int, int, Callable[[], Judged]]  # samples of each window, and the test of them


def _quantile_bound(share: float, n: int, side: int) -> float:
    """The share whose quantile bounds the `share` quantile of n values at 95%, one side
    (+1 above, -1 below): the normal approximation of its rank's binomial spread."""
    return min(1.0, max(1e-9, share + side * BOUND_Z * math.sqrt(share * (1 - share) / n)))


def _p95(ours: Counter, theirs: Counter) -> Measure:
    n_ours, n_theirs = sum(ours.values()), sum(theirs.values())

    def judge() -> Judged:
        now, then = percentiles(ours, (0.95,))[0], percentiles(theirs, (0.95,))[0]
        high = percentiles(ours, (_quantile_bound(0.95, n_ours, 1),))[0]
        low = percentiles(theirs, (_quantile_bound(0.95, n_theirs, -1),))[0]
        return now, then, (now / then - 1) * 100, (high / low - 1) * 100, mann_whitney_greater(ours, theirs)

    return n_ours, n_theirs, judge


def _latency(recent: Side, baseline: Side) -> Measure:
    return _p95(recent.latency, baseline.latency)


def _ttft(recent: Side, baseline: Side) -> Measure:
    return _p95(recent.ttft, baseline.ttft)


def _shares(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float, float, float]:
    """(share now, share then, their difference in points, its upper 95% bound) for
    x1 of n1 recent against x2 of n2 before."""
    now, then = x1 / n1, x2 / n2
    error = math.sqrt(now * (1 - now) / n1 + then * (1 - then) / n2)
    return now, then, (now - then) * 100, (now - then + BOUND_Z * error) * 100


def _error_rate(recent: Side, baseline: Side) -> Measure:
    def judge() -> Judged:
        args = (recent.errors, recent.requests, baseline.errors, baseline.requests)
        return (*_shares(*args), proportion_greater(*args))

    return recent.requests, baseline.requests, judge


def _cache_hit_rate(recent: Side, baseline: Side) -> Measure:
    def judge() -> Judged:
        # A lower hit rate is a higher miss rate.
        misses = (
            recent.looked_up - recent.hits,
            recent.looked_up,
            baseline.looked_up - baseline.hits,
            baseline.looked_up,
        )
        now_missed, then_missed, effect, upper = _shares(*misses)
        return 1 - now_missed, 1 - then_missed, effect, upper, proportion_greater(*misses)

    return recent.looked_up, baseline.looked_up, judge


def _minutes(by_start: dict[datetime, list[int]], sign: int = 1) -> list[tuple[int, float]]:
    return [(n, sign * total) for n, total in by_start.values() if n]


def _cost(recent: Side, baseline: Side) -> Measure:
    (n_recent, recent_sum), (n_baseline, baseline_sum) = recent.cost, baseline.cost

    def judge() -> Judged:
        per_recent, per_baseline = recent_sum / n_recent, baseline_sum / n_baseline
        dollars = float(COST_UNITS)
        if per_baseline <= 0:
            # Nothing to be relative to (free models): a price that appears is the catalog's to tell.
            return per_recent / dollars, per_baseline / dollars, None, None, 1.0
        found = mean_difference(
            _minutes(recent.cost_minutes), _minutes(baseline.cost_minutes), baseline_whole=(n_baseline, baseline_sum)
        )
        effect = (per_recent / per_baseline - 1) * 100
        upper = (found.difference + BOUND_Z * found.error) / per_baseline * 100
        return per_recent / dollars, per_baseline / dollars, effect, upper, found.p_value

    return n_recent, n_baseline, judge


def _quality(recent: Side, baseline: Side) -> Measure:
    (n_recent, recent_sum), (n_baseline, baseline_sum) = recent.quality, baseline.quality

    def judge() -> Judged:
        # A lower score is worse: the test compares the negated scores (in millionths).
        found = mean_difference(
            _minutes(recent.quality_minutes, -1),
            _minutes(baseline.quality_minutes, -1),
            baseline_whole=(n_baseline, -baseline_sum),
        )
        recent_score, baseline_score = recent_sum / n_recent / 1e6, baseline_sum / n_baseline / 1e6
        upper = (found.difference + BOUND_Z * found.error) / 1e6 * 100
        return recent_score, baseline_score, (baseline_score - recent_score) * 100, upper, found.p_value

    return n_recent, n_baseline, judge


MEASURES: dict[str, Callable[[Side, Side], Measure]] = {
    AlertMetric.LATENCY_P95: _latency,
    AlertMetric.TTFT_P95: _ttft,
    AlertMetric.ERROR_RATE: _error_rate,
    AlertMetric.COST_PER_REQUEST: _cost,
    AlertMetric.CACHE_HIT_RATE: _cache_hit_rate,
    AlertMetric.QUALITY: _quality,
}
