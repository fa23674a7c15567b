"""How the regression alerts do on a replayed week: false alerts on stable traffic, and
minutes until a real regression is caught, with the seeded default rules.

Run it with `python -m benchmarks.alerts_detection` (about 3 minutes on 2 cores; `--tiny`
for a quick pass of a few hours). On a temporary SQLite database (migrated), synthetic
traffic of four models and routes, with a diurnal load curve (the afternoon peak at
--peak-rpm requests a minute in all, the night at a fifth of it) and noise (Poisson
arrivals, lognormal latencies, times to first token and costs, 1% errors, cache hits,
normal quality scores on the cascade route, a little slowing at the peak), is written to
the rollups the gateway's metric writer keeps (monitoring.rollups.rollups_add: the same sums
and histograms, without raw rows), and `regressions_check(now=...)` runs at every simulated
minute, as the server's loop and Celery beat run it. Traffic is written an hour ahead of the
checks: a check at `now` reads only minutes before it, so it sees what it would have seen
live.

  1. A week of history (the first checks' baseline), then a week of stable traffic checked
     every minute: each alert that opens is a false alert (goal: at most one a week).
  2. Then --trials trials, three hours apart from the afternoon peak on (their traffic
     differs: the table shows it). In each, two regressions start at once, each in its own
     model and route, so neither's detection is the other's: sim-small's uncached answers
     20% slower (its p95 latency 20% up; its time to first token, which scales with them,
     too), and the cascade route's quality scores 5 points lower. Each lasts an hour, then
     traffic is stable again. Each is timed in minutes of regressed traffic until its alert
     opens (goal: within 15, the rules' recent window), and after its end until it resolves.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from benchmarks.harness.command import options
from benchmarks.harness.figures import table
from benchmarks.harness.gateway import in_process

MINUTE = timedelta(minutes=1)
PEAK = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)  # an afternoon peak; the replay starts some days on
REGRESSION_MINUTES = 60
RECOVERY_MINUTES = 30
# When the trials' regressions start: hours after the stable week's end (the afternoon peak).
TIMES = ((0, "15:00, the peak"), (6, "21:00, evening"))


@dataclass(frozen=True)
class Scope:
    model: str
    route: str
    share: float  # of the peak's requests
    latency_ms: float  # median of an uncached answer
    spread: float  # lognormal sigma
    cost_usd: float  # median of an uncached answer
    hit_rate: float
    scored: bool = False  # a cascade route: every answer has a quality score


SCOPES = (
    Scope("sim-small", "", 0.43, 400.0, 0.5, 0.0002, 0.2),
    Scope("sim-large", "", 0.17, 1200.0, 0.6, 0.002, 0.1),
    Scope("support", "support", 0.29, 600.0, 0.5, 0.0006, 0.15, scored=True),
    Scope("gpt-4o-mini", "", 0.11, 900.0, 0.55, 0.0004, 0.05),
)
SLOWER, SCORED = SCOPES[0], SCOPES[2]
QUALITY_MEAN, QUALITY_SD = 0.82, 0.12
# What each regression is expected to open: the timed alert first.
EXPECTED = {
    "latency": [(SLOWER.model, "latency_p95"), (SLOWER.model, "ttft_p95")],
    "quality": [(SCORED.model, "quality")],
}


@dataclass(frozen=True)
class Regression:
    latency: float = 1.0  # factor on sim-small's uncached latencies
    quality: float = 0.0  # points off the cascade route's scores


STABLE = Regression()
REGRESSED = Regression(latency=1.2, quality=5.0)


@dataclass
class Replay:
    rng: random.Random
    peak_rpm: float
    check_ms: list[float] = field(default_factory=list)
    written: int = 0

    def load(self, at: datetime) -> float:
        """The share of the peak's traffic at this time: 1 at 15:00 UTC, 0.2 at 03:00."""
        hours = at.hour + at.minute / 60
        return 0.2 + 0.8 * (0.5 + 0.5 * math.cos(2 * math.pi * (hours - 15) / 24))

    def poisson(self, mean: float) -> int:
        limit, k, product = math.exp(-mean), 0, self.rng.random()
        while product > limit:
            k += 1
            product *= self.rng.random()
        return k

    def request(self, scope: Scope, at: datetime, load: float, regression: Regression) -> dict[str, Any]:
        rng = self.rng
        stream = rng.random() < 0.5
        row: dict[str, Any] = {
            "created_at": at,
            "model": scope.model,
            "route": scope.route,
            "option": f"cascade:{scope.route}" if scope.scored else scope.model,
            "provider": "simulated",
            "endpoint": "chat.completions",
            "stream": stream,
            "input_tokens": rng.randint(50, 800),
            "output_tokens": rng.randint(20, 400),
        }
        if rng.random() < 0.01:
            row.update(status="error", error_type="upstream_error", cache_status="miss", latency_ms=rng.uniform(5, 60))
            return row
        if rng.random() < scope.hit_rate:
            row.update(status="ok", cache_status="hit", latency_ms=rng.lognormvariate(math.log(4.0), 0.3))
            row["ttft_ms"] = row["latency_ms"] if stream else None
            return row
        slower = 1 + 0.04 * load  # a busy afternoon is a little slower: no regression
        latency = rng.lognormvariate(math.log(scope.latency_ms), scope.spread) * slower
        if scope is SLOWER:
            latency *= regression.latency
        row.update(
            status="ok",
            cache_status="miss",
            latency_ms=latency,
            ttft_ms=latency * rng.uniform(0.15, 0.35) if stream else None,
            cost_usd=Decimal(f"{rng.lognormvariate(math.log(scope.cost_usd), 0.4):.10f}"),
        )
        if scope.scored:
            score = rng.gauss(QUALITY_MEAN - regression.quality / 100, QUALITY_SD)
            row["quality_score"] = min(1.0, max(0.0, score))
        return row

    def traffic(self, first: datetime, minutes: int, regression: Regression) -> None:
        """Write `minutes` of traffic from `first`, an hour's rollups at a time."""
        from monitoring.rollups import rollups_add

        batch: list[dict[str, Any]] = []
        for index in range(minutes):
            at = first + index * MINUTE
            load = self.load(at)
            for scope in SCOPES:
                for _ in range(self.poisson(self.peak_rpm * scope.share * load)):
                    batch.append(
                        self.request(scope, at + timedelta(seconds=self.rng.random() * 59.999), load, regression)
                    )
            if len(batch) > 3000 or index == minutes - 1:
                rollups_add(batch)
                self.written += len(batch)
                batch = []

    def checks(self, first: datetime, minutes: int) -> list[tuple[int, Any]]:
        """The check at the end of each of `minutes` minutes from `first`: (minute, result)."""
        from monitoring.alerts import regressions_check

        results = []
        for index in range(minutes):
            started = time.perf_counter()
            results.append((index + 1, regressions_check(now=first + (index + 1) * MINUTE)))
            self.check_ms.append((time.perf_counter() - started) * 1000)
        return results

    def run(self, first: datetime, minutes: int, regression: Regression) -> list[tuple[int, Any]]:
        """Traffic checked every minute, an hour at a time."""
        results = []
        for hour in range(0, minutes, 60):
            span = min(60, minutes - hour)
            self.traffic(first + hour * MINUTE, span, regression)
            results += [(hour + minute, result) for minute, result in self.checks(first + hour * MINUTE, span)]
        return results


@dataclass
class Trial:
    at: datetime
    load: float
    opened: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(EXPECTED))  # minutes to alert
    resolved: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(EXPECTED))  # minutes after end
    flaps: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXPECTED, 0))  # resolved while regressed
    others: list[Any] = field(default_factory=list)  # alerts that neither regression explains


class TrialOver(Exception):
    """Ends a trial's transaction: the next trial starts from the same stable week."""


def trial(replay: Replay, week_end: datetime, hours: int) -> Trial:
    """In a transaction rolled back after it: stable traffic for `hours` after the week, then
    both regressions for REGRESSION_MINUTES, then RECOVERY_MINUTES of stable traffic."""
    from django.db import transaction

    at = week_end + timedelta(hours=hours)
    found = Trial(at=at, load=replay.load(at))
    try:
        with transaction.atomic():
            replay.traffic(week_end, hours * 60, STABLE)
            results = replay.run(at, REGRESSION_MINUTES, REGRESSED)
            after = replay.run(at + REGRESSION_MINUTES * MINUTE, RECOVERY_MINUTES, STABLE)
            results += [(REGRESSION_MINUTES + minute, result) for minute, result in after]
            raise TrialOver
    except TrialOver:
        pass
    for minute, result in results:
        for alert in result.opened:
            kind = next((k for k, scopes in EXPECTED.items() if (alert.model, alert.metric) in scopes), None)
            if kind is None or minute > REGRESSION_MINUTES + 15:  # past what the recent window holds of it
                found.others.append(alert)
            elif (alert.model, alert.metric) == EXPECTED[kind][0] and found.opened[kind] is None:
                found.opened[kind] = minute
        for alert in result.resolved:
            for kind, scopes in EXPECTED.items():
                if (alert.model, alert.metric) != scopes[0]:
                    continue
                if minute <= REGRESSION_MINUTES:
                    found.flaps[kind] += 1
                elif found.resolved[kind] is None:
                    found.resolved[kind] = minute - REGRESSION_MINUTES
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = options("alerts_detection", __doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=7.0, help="days of stable traffic checked every minute (7)")
    parser.add_argument("--peak-rpm", type=float, default=70.0, help="requests a minute at the peak, in all (70)")
    parser.add_argument("--trials", type=int, default=5, help="regression trials at each of the two times of day (5)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--alpha", type=float, help="every rule's significance level instead of the default")
    parser.add_argument(
        "--tiny", action="store_true", help="a quick pass: 6 hours of history, 3 checked, 1 trial (6-hour baselines)"
    )
    return parser.parse_args(argv)


def alert_shown(alert: Any) -> str:
    return f"at {alert.opened_at:%a %H:%M}: {alert.get_metric_display()} of {alert.model} ({alert.effect:+.1f})"


def report(args: argparse.Namespace, done: list[Trial]) -> None:
    rows = []
    for kind, label, scope in (("latency", "p95 latency +20%", SLOWER), ("quality", "quality -5 points", SCORED)):
        for hours, when in TIMES:
            ones = [one for one in done if one.at.hour == (PEAK.hour + hours) % 24]
            if not ones:
                continue
            times = [one.opened[kind] for one in ones]
            caught = [t for t in times if t is not None]
            resolved = [one.resolved[kind] for one in ones if one.resolved[kind] is not None]
            rows.append(
                [
                    f"{label} ({scope.model})",
                    when,
                    f"{args.peak_rpm * scope.share * ones[0].load:.0f}",
                    " ".join("-" if t is None else str(t) for t in times),
                    f"{statistics.median(caught):g}" if caught else "-",
                    str(max(caught)) if len(caught) == len(times) else f">{REGRESSION_MINUTES}",
                    f"{statistics.median(resolved):g}" if resolved else "-",
                    str(sum(one.flaps[kind] for one in ones)),
                ]
            )
    print()
    headers = [
        "regression",
        "starting",
        "req/min",
        "min to alert, each trial",
        "median",
        "worst",
        "min to resolve",
        "flaps",
    ]
    print(table(headers, rows))
    print("(min to resolve: the median after the regression ended; flaps: resolved while it lasted)")
    print()
    for kind, label in (("latency", "p95 latency +20%"), ("quality", "quality -5 points")):
        times = [one.opened[kind] for one in done]
        caught = sorted(t for t in times if t is not None)
        worst = f"{max(caught)} min" if caught and len(caught) == len(times) else f"not within {REGRESSION_MINUTES} min"
        median = f"{statistics.median(caught):g} min" if caught else "-"
        print(f"time to alert, {label}: median {median}, worst {worst} over {len(times)} trials (goal <= 15)")
    flaps = sum(sum(one.flaps.values()) for one in done)
    print(f"alerts resolved while their regression lasted: {flaps} (goal 0)")
    others = [alert for one in done for alert in one.others]
    print(f"other alerts during the trials: {len(others)} (goal 0)")
    for alert in others:
        print(f"  {alert_shown(alert)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with in_process("llmops-alerts-bench-"):
        from monitoring.alerts import alert_rules_seed
        from monitoring.models import AlertRule

        logging.getLogger("monitoring.alerts").setLevel(logging.ERROR)  # each alert is printed below
        alert_rules_seed()
        if args.alpha:
            AlertRule.objects.update(alpha=args.alpha)
        history_hours, checked_minutes, trials = 7 * 24, round(args.days * 24 * 60), args.trials
        if args.tiny:
            history_hours, checked_minutes, trials = 6, 3 * 60, 1
            AlertRule.objects.update(baseline_hours=history_hours)
        rules = list(AlertRule.objects.filter(enabled=True).order_by("metric"))
        replay = Replay(rng=random.Random(args.seed), peak_rpm=args.peak_rpm)
        started = time.perf_counter()

        # History for the first checks' baselines, then the checked days, which end at a peak.
        week_end = PEAK + timedelta(days=math.ceil((history_hours * 60 + checked_minutes) / 1440))
        checked_from = week_end - timedelta(minutes=checked_minutes)
        replay.traffic(checked_from - timedelta(hours=history_hours), history_hours * 60, STABLE)
        history_rows = replay.written
        checked = replay.run(checked_from, checked_minutes, STABLE)
        false_alerts = [alert for _, result in checked for alert in result.opened]
        checked_rows, checks, check_ms = replay.written - history_rows, len(replay.check_ms), sorted(replay.check_ms)
        done = [trial(replay, week_end, hours) for _ in range(trials) for hours, _ in TIMES]
        elapsed = time.perf_counter() - started

        rule = rules[0]
        print(
            f"alerts detection{' (tiny pass)' if args.tiny else ''}: {len(rules)} default rules ({rule.recent_minutes} "
            f"min against {rule.baseline_hours} h, alpha {rule.alpha:g}, at least {rule.min_samples} samples a "
            f"window), {len(SCOPES)} models and routes, {args.peak_rpm:g} requests/min at the afternoon peak, "
            f"{args.peak_rpm * 0.2:g} at night"
        )
        print(
            f"replayed {history_hours} h of history ({history_rows:,} requests), then {checked_minutes / 1440:g} days "
            f"of stable traffic ({checked_rows:,} requests) checked every minute, and {len(done)} trials, "
            f"in {elapsed:.0f} s"
        )
        print(f"false alerts over {checked_minutes / 1440:g} days: {len(false_alerts)} (goal <= 1)")
        for alert in false_alerts:
            print(f"  {alert_shown(alert)}")
        report(args, done)
        p99 = check_ms[min(len(check_ms) - 1, int(len(check_ms) * 0.99))]
        print(f"check time: median {statistics.median(check_ms):.1f} ms, p99 {p99:.1f} ms over {checks:,} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
