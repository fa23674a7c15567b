from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import socket
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone
from django.views.debug import get_default_exception_reporter_filter

from llmops.tasks import metrics_prune_task, regressions_check_task
from monitoring import recorder
from monitoring.alerts import alerts_open, regressions_check
from monitoring.alerts import loop as alerts_loop
from monitoring.alerts.checks import DEFAULT_MIN_EFFECTS, Finding, rule_windows, scan_windows, windows_recovered
from monitoring.alerts.selectors import alert_dump
from monitoring.alerts.stats import (
    fisher_greater,
    mann_whitney_greater,
    mean_greater,
    normal_sf,
    proportion_greater,
    t_sf,
)
from monitoring.alerts.webhook import SIGNATURE_HEADER
from monitoring.models import Alert, AlertMetric, AlertRule
from monitoring.prometheus import prometheus_exposition

pytestmark = pytest.mark.django_db(transaction=True)

# The recent window of a check at NOW is 17:44 to 17:59; its baseline the whole hours before
# 17:00. A second check 15 minutes on has the next 15 minutes and the same baseline.
NOW = datetime(2026, 12, 1, 17, 59, 20, tzinfo=UTC)
LATER = NOW + timedelta(minutes=15)
RECENT = datetime(2026, 12, 1, 17, 44, tzinfo=UTC)
BASELINE_HOURS = 3
BASELINE = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)


def traffic(
    n: int,
    *,
    start: datetime,
    seconds: float,
    seed: int,
    model: str = "sim-small",
    route: str = "",
    latency: float = 1.0,
    ttft: float = 1.0,
    errors: float = 0.01,
    hits: float = 0.4,
    cost: float = 1.0,
    quality: float = 0.8,
) -> list[dict]:
    """`n` requests spread over `seconds` from `start`: lognormal latencies and costs, a share
    of errors and of cache hits (exactly that many, at random), normal quality scores. The
    keyword factors and shares make a regression."""
    rng = random.Random(seed)
    failed = set(rng.sample(range(n), round(n * errors)))
    hit = set(rng.sample(range(n), round(n * hits)))
    made = []
    for i in range(n):
        ok = i not in failed
        stream = i % 2 == 0
        made.append(
            {
                "request_id": f"{model}-{seed}-{i}",
                "created_at": start + timedelta(seconds=rng.uniform(0, seconds)),
                "model": model,
                "route": route,
                "option": model,
                "provider": "simulated",
                "status": "ok" if ok else "error",
                "http_status": 200 if ok else 502,
                "error_type": "" if ok else "upstream_error",
                "stream": stream,
                "latency_ms": rng.lognormvariate(6.0, 0.4) * latency,
                "ttft_ms": rng.lognormvariate(4.5, 0.4) * ttft if stream and ok else None,
                "input_tokens": rng.randint(50, 500),
                "output_tokens": rng.randint(10, 300),
                "cost_usd": Decimal(f"{rng.lognormvariate(-7, 0.5) * cost:.10f}") if ok else Decimal(0),
                "cache_status": "hit" if i in hit else "miss",
                "quality_score": min(1.0, max(0.0, rng.gauss(quality, 0.1))) if ok else None,
            }
        )
    return made


def record(made: list[dict]) -> None:
    for row in made:
        recorder.metric_record(**row)
    recorder.metrics_flush()


def baseline(seed: int = 1, n: int = 1500, **kwargs) -> None:
    record(traffic(n, start=BASELINE, seconds=BASELINE_HOURS * 3600, seed=seed, **kwargs))


def recent(seed: int = 2, n: int = 400, *, later: bool = False, **kwargs) -> list[dict]:
    start = RECENT + timedelta(minutes=15) if later else RECENT
    made = traffic(n, start=start, seconds=15 * 60 - 1, seed=seed, **kwargs)
    record(made)
    return made


def rules(*metrics: str, **fields) -> list[AlertRule]:
    """Rules for these metrics (all six by default) with the seeded minimums, over the tests'
    short baseline."""
    made = []
    for metric in metrics or AlertMetric.values:
        values = {"min_effect": DEFAULT_MIN_EFFECTS[metric], "baseline_hours": BASELINE_HOURS, **fields}
        made.append(AlertRule.objects.create(metric=metric, **values))
    return made


class Receiver:
    """A webhook receiver on 127.0.0.1: records each POST, answers `status`."""

    def __init__(self, status: int = 204) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((self.path, dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[dict]:
        return [json.loads(body) for _, _, body in self.posts]


@pytest.fixture
def webhook(settings):
    with Receiver() as receiver:
        settings.LLMOPS_ALERT_WEBHOOK_URL = f"http://127.0.0.1:{receiver.port}/hooks/T0KEN"
        settings.LLMOPS_ALERT_WEBHOOK_SECRET = "webhook-secret"
        yield receiver


def staff_client() -> Client:
    user = get_user_model().objects.create_superuser("staff", "staff@example.com", "pw-for-tests")
    client = Client()
    client.force_login(user)
    return client


def open_gauge(metric: str) -> float:
    for line in prometheus_exposition().decode().splitlines():
        if line.startswith(f'llmops_alerts_open{{metric="{metric}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# The tests


def test_the_windows_are_the_last_whole_minutes_and_the_whole_hours_before_them():
    (rule,) = rules(AlertMetric.LATENCY_P95)
    recent_window, baseline_window = rule_windows(rule, NOW)
    assert (recent_window.start, recent_window.end) == (RECENT, RECENT + timedelta(minutes=15))
    assert (baseline_window.start, baseline_window.end) == (BASELINE, datetime(2026, 12, 1, 17, tzinfo=UTC))
    assert rule_windows(rule, LATER)[1] == baseline_window


def test_a_latency_regression_opens_an_alert_the_admin_lists_and_the_webhook_receives(webhook):
    rules()
    before = traffic(1500, start=BASELINE, seconds=BASELINE_HOURS * 3600, seed=1)
    slower = traffic(400, start=RECENT, seconds=15 * 60 - 1, seed=2, latency=1.5)
    record(before + slower)
    result = regressions_check(now=NOW)

    assert [alert.metric for alert in result.opened] == ["latency_p95"]
    alert = Alert.objects.get()
    assert (alert.status, alert.model, alert.route, alert.opened_at) == ("open", "sim-small", "", NOW)
    assert alert.effect > 30 and alert.p_value < 1e-10

    def answered(rows: list[dict]) -> int:  # cache hits measure the cache, not the model
        return sum(1 for row in rows if row["status"] == "ok" and row["cache_status"] == "miss")

    # Opened from the shortest of the recent windows that shows it: the last 5 minutes hold
    # under the rule's 100 samples, the last 10 enough; its figures are over that window.
    assert alert.recent_minutes == 10 and "last 10 min" in alert_dump(alert)["message"]
    window_start = RECENT + timedelta(minutes=5)
    in_window = [row for row in slower if row["created_at"] >= window_start]
    assert (alert.recent_samples, alert.baseline_samples) == (answered(in_window), answered(before))
    assert alert.recent_value > alert.baseline_value
    assert alert.notify_outcome == "opened: HTTP 204" and alert.notified_at is not None
    assert open_gauge("latency_p95") == 1

    (path, headers, body) = webhook.posts[0]
    assert path == "/hooks/T0KEN"
    expected = "sha256=" + hmac.new(b"webhook-secret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
    event = json.loads(body)
    assert event["event"] == "alert.opened"
    assert event["alert"]["metric"] == "latency_p95" and event["alert"]["model"] == "sim-small"
    assert event["alert"]["effect_unit"] == "%" and event["alert"]["unit"] == "ms"
    assert event["alert"]["rule"]["min_effect"] == 10.0

    page = staff_client().get("/admin/monitoring/alert/", {"status__exact": "open"})
    assert page.status_code == 200
    assert b"sim-small" in page.content and b"p95 latency" in page.content

    # Traffic as before: the next check resolves it and says so.
    recent(seed=3, later=True)
    later = regressions_check(now=LATER)
    assert [alert.metric for alert in later.resolved] == ["latency_p95"] and not later.opened
    alert.refresh_from_db()
    assert (alert.status, alert.resolved_at, alert.resolution) == ("resolved", LATER, "recovered")
    assert alert.notify_outcome == "resolved: HTTP 204"
    assert [event["event"] for event in webhook.events()] == ["alert.opened", "alert.resolved"]
    assert webhook.events()[1]["alert"]["status"] == "resolved"
    assert open_gauge("latency_p95") == 0
    assert alerts_open() == []


@pytest.mark.parametrize(
    ("metric", "worse"),
    [
        ("ttft_p95", {"ttft": 1.5}),
        ("error_rate", {"errors": 0.08}),
        ("cost_per_request", {"cost": 1.3}),
        ("cache_hit_rate", {"hits": 0.25}),
        ("quality", {"quality": 0.7}),
    ],
)
def test_each_metric_opens_on_its_regression_and_resolves_on_recovery(metric, worse):
    rules()
    baseline()
    recent(**worse)
    opened = regressions_check(now=NOW).opened
    assert [alert.metric for alert in opened] == [metric]
    assert opened[0].effect >= DEFAULT_MIN_EFFECTS[metric] and opened[0].p_value < 1e-5

    recent(seed=3, later=True)
    result = regressions_check(now=LATER)
    assert [alert.metric for alert in result.resolved] == [metric] and not result.opened
    assert not Alert.objects.filter(status="open").exists()


def test_the_recent_window_is_scanned_in_thirds():
    recent_window, _ = rule_windows(AlertRule(metric="latency_p95", min_effect=10.0), NOW)
    assert [w.seconds / 60 for w in scan_windows(recent_window)] == [5, 10, 15]
    assert all(w.end == recent_window.end for w in scan_windows(recent_window))


def test_a_regression_of_the_last_minutes_opens_from_the_short_window_at_a_split_level():
    rules(AlertMetric.LATENCY_P95)
    before = traffic(1500, start=BASELINE, seconds=BASELINE_HOURS * 3600, seed=1)
    steady = traffic(500, start=RECENT, seconds=10 * 60 - 1, seed=2)
    slower = traffic(250, start=RECENT + timedelta(minutes=10), seconds=5 * 60 - 1, seed=3, latency=1.6)
    record(before + steady + slower)
    (finding,) = regressions_check(now=NOW).findings
    assert finding.regressed and finding.recent_minutes == 5 and finding.windows == 3
    assert finding.p_value < AlertRule(metric="latency_p95").alpha / 3
    assert Alert.objects.get().recent_minutes == 5


def test_an_alert_recovers_only_once_every_judged_window_has():
    rule = AlertRule(metric="latency_p95", min_effect=10.0, min_samples=100)

    def finding(effect: float, upper: float, p: float, samples: int = 500) -> Finding:
        return Finding(rule, "sim-small", "", samples, 5000, 1.0, 1.0, effect, upper, p, windows=3)

    diluted = finding(4.0, 7.0, 0.01)  # the whole window: shown under the 10% minimum
    assert diluted.recovered
    still_slow = finding(11.0, 14.0, 0.001)  # the last third: not significant at alpha/3, not recovered
    assert not still_slow.regressed and not still_slow.recovered
    assert not windows_recovered([still_slow, diluted])
    assert windows_recovered([finding(2.0, 5.0, 0.2), diluted])
    assert windows_recovered([finding(50.0, 60.0, 1e-9, samples=20), diluted])  # too few samples to judge
    assert not windows_recovered([finding(50.0, 60.0, 1e-9, samples=20)])  # nothing judged: nothing known


def test_stable_noisy_traffic_opens_nothing():
    rules()
    baseline(seed=10)
    for seed in (11, 12, 13):
        recent(seed=seed, later=seed == 12)
    for at in (NOW, LATER):
        result = regressions_check(now=at)
        assert not result.opened
        assert len(result.findings) == 6
        assert all(finding.judged and not finding.regressed for finding in result.findings)
    assert not Alert.objects.exists()


def test_too_few_samples_open_nothing_even_with_a_big_effect():
    rules()
    baseline()
    recent(n=60, latency=3.0, errors=0.5, cost=3.0, quality=0.3)
    result = regressions_check(now=NOW)
    assert not result.opened
    assert all(not finding.judged and finding.recent_samples < 100 for finding in result.findings)


def test_an_effect_below_the_minimum_opens_nothing_even_when_significant():
    rules(AlertMetric.LATENCY_P95, min_effect=60.0)
    baseline()
    recent(latency=1.3)
    (finding,) = regressions_check(now=NOW).findings
    assert finding.p_value < 1e-10 and 20 < finding.effect < 60
    assert not finding.regressed and not Alert.objects.exists()


def test_no_baseline_for_a_model_opens_nothing():
    rules()
    baseline(model="sim-large")
    recent(latency=2.0)
    result = regressions_check(now=NOW)
    assert not result.opened
    assert {finding.baseline_samples for finding in result.findings} == {0}


def test_each_model_and_route_is_judged_apart():
    rules(AlertMetric.ERROR_RATE)
    baseline(seed=1)
    baseline(seed=4, model="support", route="support")
    recent(seed=2)
    recent(seed=5, model="support", route="support", errors=0.1)
    (alert,) = regressions_check(now=NOW).opened
    assert (alert.model, alert.route) == ("support", "support")


def test_an_open_alert_stays_open_while_the_worsening_may_still_be_the_minimum():
    rules(AlertMetric.ERROR_RATE)
    baseline(n=3000)
    recent(errors=0.08)
    assert regressions_check(now=NOW).opened
    # 2.5% against 1%: 1.5 points, under the 2 that open one, but its upper bound is over them.
    recent(seed=3, later=True, n=800, errors=0.025)
    result = regressions_check(now=LATER)
    (finding,) = result.findings
    assert 1.0 < finding.effect < 2.0 < finding.effect_upper and finding.p_value < 0.05
    assert not result.resolved and not result.opened
    alert = Alert.objects.get()
    assert alert.status == "open" and alert.last_checked_at == LATER
    assert abs(alert.effect - finding.effect) < 1e-9  # the latest figures


def test_an_alert_resolves_once_the_worsening_is_shown_under_the_minimum_though_significant():
    rules(AlertMetric.ERROR_RATE)
    baseline(n=3000)
    recent(errors=0.08)
    assert regressions_check(now=NOW).opened
    recent(seed=3, later=True, n=4000, errors=0.016)
    result = regressions_check(now=LATER)
    (finding,) = result.findings
    assert finding.p_value < 0.05 and finding.effect_upper < 2.0
    assert [alert.metric for alert in result.resolved] == ["error_rate"]


def test_a_second_checker_does_not_open_or_tell_of_an_alert_twice(webhook):
    rules(AlertMetric.LATENCY_P95)
    baseline()
    recent(latency=1.5)
    assert len(regressions_check(now=NOW).opened) == 1
    assert not regressions_check(now=NOW).opened
    assert Alert.objects.count() == 1 and len(webhook.posts) == 1


def test_disabling_a_rule_resolves_its_open_alerts():
    (rule,) = rules(AlertMetric.LATENCY_P95)
    baseline()
    recent(latency=1.5)
    regressions_check(now=NOW)
    rule.enabled = False
    rule.save()
    (alert,) = regressions_check(now=LATER).resolved
    assert alert.resolution == "rule disabled"


def test_the_first_check_seeds_one_rule_per_metric():
    assert not AlertRule.objects.exists()
    regressions_check(now=NOW)
    seeded = {rule.metric: rule for rule in AlertRule.objects.all()}
    assert set(seeded) == set(AlertMetric.values)
    latency = seeded["latency_p95"]
    assert (latency.recent_minutes, latency.baseline_hours, latency.min_samples, latency.alpha) == (15, 168, 100, 1e-5)
    assert latency.min_effect == 10.0 and seeded["error_rate"].min_effect == 2.0
    seeded["quality"].delete()
    regressions_check(now=NOW)
    assert AlertRule.objects.count() == 5  # a rule deleted stays deleted


def test_a_webhook_that_fails_is_recorded_and_logged_without_its_credentials(settings, caplog):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings.LLMOPS_ALERT_WEBHOOK_URL = f"http://hook-user:hunter2@127.0.0.1:{port}/hooks/s3cr3t?token=t0k3n"
    settings.LLMOPS_ALERT_WEBHOOK_TIMEOUT_S = 1.0
    rules(AlertMetric.LATENCY_P95)
    baseline()
    recent(latency=1.5)
    with caplog.at_level(logging.WARNING, logger="monitoring.alerts.webhook"):
        (alert,) = regressions_check(now=NOW).opened
    alert.refresh_from_db()
    assert alert.notify_outcome == "opened: failed (ConnectError)" and alert.notified_at is not None
    assert f"http://127.0.0.1:{port}" in caplog.text
    for secret in ("hunter2", "hook-user", "s3cr3t", "t0k3n"):
        assert secret not in caplog.text


def test_a_webhook_that_answers_an_error_is_recorded(settings):
    with Receiver(status=500) as receiver:
        settings.LLMOPS_ALERT_WEBHOOK_URL = f"http://127.0.0.1:{receiver.port}/"
        settings.LLMOPS_ALERT_WEBHOOK_SECRET = ""
        rules(AlertMetric.LATENCY_P95)
        baseline()
        recent(latency=1.5)
        (alert,) = regressions_check(now=NOW).opened
        assert alert.notify_outcome == "opened: HTTP 500"
        assert SIGNATURE_HEADER not in receiver.posts[0][1]


def test_open_alerts_are_listed_for_the_dashboard():
    rules()
    baseline()
    made = recent(latency=1.5, errors=0.08)
    regressions_check(now=NOW)
    listed = {alert["metric"]: alert for alert in alerts_open()}
    assert set(listed) == {"latency_p95", "error_rate"}
    errors = listed["error_rate"]
    assert errors["unit"] == "share" and errors["effect_unit"] == "points"
    # Over the recent window it opened from (the last 10 of the 15 minutes here).
    since = RECENT + timedelta(minutes=15 - errors["recent_minutes"])
    shown = [row for row in made if row["created_at"] >= since]
    share = sum(row["status"] == "error" for row in shown) / len(shown)
    assert errors["recent_minutes"] == 10 and errors["recent_samples"] == len(shown)
    assert errors["recent"] == pytest.approx(share) and errors["baseline"] == pytest.approx(0.01, abs=0.002)
    assert errors["opened_at"] == NOW.isoformat() and errors["status"] == "open"
    assert errors["message"].startswith(
        f"error rate of sim-small: {share * 100:.2f}% against 1.00% (+{(share - 0.01) * 100:.1f} points worse"
    )
    assert errors["rule"]["recent_minutes"] == 15


def test_the_rules_are_edited_in_the_admin_and_alerts_are_read_only():
    rules(AlertMetric.LATENCY_P95)
    baseline()
    recent(latency=1.5)
    regressions_check(now=NOW)
    client = staff_client()
    assert client.get("/admin/monitoring/alertrule/add/").status_code == 200
    created = client.post(
        "/admin/monitoring/alertrule/add/",
        {
            "metric": "error_rate",
            "enabled": "on",
            "recent_minutes": 30,
            "baseline_hours": 24,
            "min_effect": 3,
            "min_samples": 200,
            "alpha": 0.0001,
        },
    )
    assert created.status_code == 302
    assert AlertRule.objects.filter(metric="error_rate", recent_minutes=30).exists()
    refused = client.post("/admin/monitoring/alertrule/add/", {"metric": "error_rate", "recent_minutes": 1})
    assert refused.status_code == 200 and b"errornote" in refused.content
    alert = Alert.objects.get()
    shown = client.get(f"/admin/monitoring/alert/{alert.pk}/change/")
    assert shown.status_code == 200 and b"p95 latency of sim-small" in shown.content
    rule = AlertRule.objects.get(metric="latency_p95")
    assert client.get(f"/admin/monitoring/alertrule/{rule.pk}/change/").status_code == 200
    assert client.get("/admin/monitoring/alert/add/").status_code == 403
    assert client.post(f"/admin/monitoring/alert/{alert.pk}/change/", {"status": "resolved"}).status_code == 403
    assert client.get("/admin/monitoring/alert/", {"metric__exact": "latency_p95"}).status_code == 200
    alert.refresh_from_db()
    assert alert.status == "open"


def test_the_command_prints_what_opened_and_resolved():
    rules()
    baseline()
    recent(latency=1.5)
    out = StringIO()
    call_command("check_regressions", "--now", NOW.isoformat(), stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("opened #") and "p95 latency of sim-small" in lines[0]
    assert lines[-1] == (
        "Checked 6 rules over 1 models and routes at 2026-12-01 17:59:20 UTC: 1 opened, 0 resolved, 1 open."
    )
    recent(seed=3, later=True)
    out = StringIO()
    call_command("check_regressions", "--now", "2026-12-01T18:14:20", stdout=out)
    assert out.getvalue().startswith("resolved #") and "(recovered)" in out.getvalue()
    with pytest.raises(CommandError, match="ISO 8601"):
        call_command("check_regressions", "--now", "yesterday")


def test_the_celery_tasks_call_the_services():
    rules(AlertMetric.LATENCY_P95)
    summary = regressions_check_task()
    assert summary["rules"] == 1 and summary["opened"] == []
    assert metrics_prune_task()["rows"] >= 0
    schedule = django_settings.CELERY_BEAT_SCHEDULE
    assert schedule["monitoring-check-regressions"]["task"] == "monitoring.check_regressions"
    assert schedule["monitoring-check-regressions"]["schedule"] == 60.0
    assert schedule["monitoring-prune"] == {
        "task": "monitoring.prune",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    }


def test_the_server_thread_checks_on_its_interval_and_survives_a_failed_pass(settings, monkeypatch):
    settings.LLMOPS_ALERTS_CHECK_INTERVAL_S = 0.05
    settings.LLMOPS_METRICS_PRUNE_INTERVAL_S = 0.05
    calls: Counter = Counter()

    def check() -> None:
        calls["check"] += 1
        if calls["check"] == 1:
            raise RuntimeError("the database went away")

    monkeypatch.setattr(alerts_loop, "regressions_check", check)
    monkeypatch.setattr(alerts_loop, "metrics_prune", lambda: calls.update(["prune"]))
    loop = alerts_loop.MonitoringLoop()
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while calls["check"] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert loop.running
    finally:
        loop.stop()
    assert calls["check"] >= 3 and calls["prune"] >= 1 and not loop.running


def test_the_server_thread_opens_alerts_on_real_traffic(settings):
    settings.LLMOPS_ALERTS_CHECK_INTERVAL_S = 0.1
    now = timezone.now()
    minute = now.replace(second=0, microsecond=0)
    hour = (minute - timedelta(minutes=15)).replace(minute=0)
    AlertRule.objects.create(metric=AlertMetric.ERROR_RATE, min_effect=2.0, baseline_hours=2)
    record(traffic(1500, start=hour - timedelta(hours=2), seconds=7199, seed=1))
    record(traffic(400, start=minute - timedelta(minutes=15), seconds=899, seed=2, errors=0.1))
    loop = alerts_loop.MonitoringLoop()
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while not Alert.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        loop.stop()
    assert Alert.objects.get().metric == "error_rate"


# The tests themselves, against reference values (scipy's, computed once)


def test_the_mann_whitney_test_reads_ties_by_bucket():
    recent_values = Counter([2, 3, 3, 5, 8, 13, 13, 21, 21, 34, 34])
    baseline_values = Counter([1, 2, 2, 3, 5, 8, 8, 8, 13])
    assert mann_whitney_greater(recent_values, baseline_values) == pytest.approx(0.038861476966323964, rel=1e-9)
    assert mann_whitney_greater(baseline_values, recent_values) > 0.9
    assert mann_whitney_greater({7: 50}, {7: 500}) == 1.0
    assert mann_whitney_greater({}, baseline_values) == 1.0


def test_proportions_are_compared_exactly_where_counts_are_small():
    assert fisher_greater(12, 100, 300, 10_000) == pytest.approx(5.622713651575876e-05, rel=1e-9)
    # 5 errors in 100 against 1%: the normal approximation would say 0.00003.
    assert proportion_greater(5, 100, 1000, 100_000) == pytest.approx(0.0034685747257656163, rel=1e-9)
    assert proportion_greater(0, 100, 1000, 100_000) == 1.0
    # Large counts: the z-test, which agrees with the exact test there.
    z = proportion_greater(2600, 100_000, 25_000, 1_000_000)
    assert z == pytest.approx(fisher_greater(2600, 100_000, 25_000, 1_000_000), rel=0.2)
    assert 0.01 < z < 0.1


def test_the_means_test_is_the_pooled_t_test_for_single_values():
    recent_values = [(1, v) for v in (0.4, 0.8, 1.1, 0.9, 1.3)]
    baseline_values = [(1, v) for v in (0.1, 0.5, 0.3, 0.9, 0.7, 0.2)]
    assert mean_greater(recent_values, baseline_values) == pytest.approx(0.023283653439216605, rel=1e-9)
    assert t_sf(2.0, 10) == pytest.approx(0.03669401738537018, rel=1e-9)
    assert t_sf(4.5, 30) == pytest.approx(4.759679696056222e-05, rel=1e-9)
    assert t_sf(-1.0, 5) == pytest.approx(0.8183912661754386, rel=1e-9)
    assert t_sf(3.0, 5000) == normal_sf(3.0)


def test_the_means_test_weighs_minutes_by_their_requests():
    rng = random.Random(5)

    def minutes(count: int, mean: float) -> list[tuple[int, float]]:
        found = []
        for _ in range(count):
            n = rng.randint(1, 40)
            found.append((n, sum(rng.gauss(mean, 1.0) for _ in range(n))))
        return found

    same = [mean_greater(minutes(15, 10.0), minutes(300, 10.0)) for _ in range(200)]
    assert sum(p < 0.05 for p in same) < 25  # about 5% under no change
    assert mean_greater(minutes(15, 10.3), minutes(300, 10.0)) < 1e-4


def test_the_webhook_address_is_hidden_from_the_debug_pages(settings):
    settings.LLMOPS_ALERT_WEBHOOK_URL = "https://hooks.example.com/services/T0/B0/secret-token"
    shown = get_default_exception_reporter_filter().get_safe_settings()
    assert "secret-token" not in str(shown)
    assert shown["LLMOPS_ALERT_WEBHOOK_URL"] != settings.LLMOPS_ALERT_WEBHOOK_URL
