"""The admin's Pareto page: the SVG chart on its own, then the page against the API."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.urls import reverse

from llmops import catalog
from routing.models import Evaluation
from routing.pareto_chart import pareto_svg
from tests.routing.conftest import measured_rows

SVG = "{http://www.w3.org/2000/svg}"
PAGE = "/admin/routing/route/pareto/"


def option(name: str, p95: float | None, cost: float | None, quality: float | None = 0.8, **extra: Any) -> dict:
    return {
        "option": name,
        "kind": "model",
        "p95_ms": p95,
        "cost_per_1k": cost,
        "quality": quality,
        "samples": 30,
        "sources": {"latency": "measured (n=30)", "cost": "measured (n=30)", "quality": "evaluation"},
        "pareto": False,
        **extra,
    }


def parsed(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # also proves the SVG is well-formed, whatever the names


def circles(svg: str) -> list[ET.Element]:
    return list(parsed(svg).iter(f"{SVG}circle"))


def points(svg: str) -> list[ET.Element]:
    return [c for c in circles(svg) if "option" in c.get("class", "").split()]


def texts(svg: str) -> list[str]:
    return ["".join(t.itertext()) for t in parsed(svg).iter(f"{SVG}text")]


# -- the chart ------------------------------------------------------------------------------


def test_the_chart_draws_a_point_per_option_with_both_figures():
    svg = pareto_svg(
        [
            option("fast", 120.0, 2.0, pareto=True),
            option("cheap", 900.0, 0.02, pareto=True),
            option("beaten", 1000.0, 3.0),
            option("unmeasured", None, 0.5),
        ]
    )
    assert [p.get("data-option") for p in points(svg)] == ["fast", "cheap", "beaten"]
    assert "not plotted: unmeasured (no latency measured or prior)" in texts(svg)


def test_only_pareto_optimal_points_are_outlined_and_joined():
    svg = pareto_svg(
        [
            option("fast", 120.0, 2.0, pareto=True),
            option("cheap", 900.0, 0.5, pareto=True),
            option("beaten", 1000.0, 3.0),
        ]
    )
    classes = {p.get("data-option"): p.get("class").split() for p in points(svg)}
    assert classes == {"fast": ["option", "pareto"], "cheap": ["option", "pareto"], "beaten": ["option"]}
    frontier = parsed(svg).find(f"{SVG}polyline[@class='frontier']")
    assert frontier is not None and len(frontier.get("points").split()) == 2


def test_each_point_has_a_tooltip_with_its_figures_and_their_sources():
    svg = pareto_svg([option("fast", 120.0, 2.0, quality=None, sources={"latency": "prior", "cost": "prior"})])
    title = "".join(points(svg)[0].find(f"{SVG}title").itertext())
    assert "p95 120.0 ms (prior)" in title and "$2.000000 per 1,000 requests (prior)" in title
    assert "quality unknown" in title


def test_an_option_name_is_escaped_everywhere_it_is_drawn():
    svg = pareto_svg([option("<b>&x", 120.0, 2.0), option('q"uote', None, None)])
    assert "<b>" not in svg and "&amp;x" in svg
    assert points(svg)[0].get("data-option") == "<b>&x"
    assert "<b>&x" in texts(svg)
    assert 'not plotted: q"uote (no latency or cost measured or prior)' in texts(svg)


def test_no_options_is_an_empty_state_not_an_error():
    svg = pareto_svg([])
    assert points(svg) == []
    assert any("No options to plot" in t for t in texts(svg))


def test_figures_spanning_more_than_two_decades_get_a_log_axis():
    wide = pareto_svg([option("a", 5.0, 0.001), option("b", 5000.0, 10.0)])
    assert "p95 latency (ms, log scale)" in texts(wide)
    assert "cost per 1,000 requests (USD, log scale)" in texts(wide)
    assert {"1", "10", "100", "1,000"} <= set(texts(wide))


def test_figures_within_two_decades_get_a_linear_axis():
    narrow = pareto_svg([option("a", 150.0, 0.02), option("b", 1400.0, 1.5)])
    assert "p95 latency (ms)" in texts(narrow) and "cost per 1,000 requests (USD)" in texts(narrow)
    assert {"0", "500", "1,000"} <= set(texts(narrow))


def test_quality_is_coloured_and_unknown_quality_is_grey():
    svg = pareto_svg(
        [
            option("low", 100.0, 1.0, quality=0.5),
            option("high", 200.0, 2.0, quality=0.9),
            option("unknown", 300.0, 3.0, quality=None),
        ]
    )
    fills = {p.get("data-option"): p.get("fill") for p in points(svg)}
    assert fills["unknown"] == "#9e9e9e"
    assert len({fills["low"], fills["high"], fills["unknown"]}) == 3


# -- the page -------------------------------------------------------------------------------


def measured(option: str, latency_ms: float, cost: str) -> None:
    measured_rows(option, latency_ms, cost=cost, count=settings.LLMOPS_ROUTING_MIN_SAMPLES + 5, spread=True)


@pytest.fixture
def support_measured(seeded):
    measured("sim-small", 140.0, "0.000012")
    measured("sim-large", 1400.0, "0.00156")
    Evaluation.objects.create(
        route_name="support",
        dataset="test.tsv",
        rows=100,
        results=[{"option": "sim-small", "accuracy": 0.71}, {"option": "sim-large", "accuracy": 0.93}],
    )
    catalog.reset()


def table(html: str) -> dict[str, dict[str, str]]:
    rows = re.findall(r'<tr data-option="([^"]*)">(.*?)</tr>', html, re.S)
    return {name: dict(re.findall(r'<td class="(?:number )?([a-z0-9]+)">(.*?)</td>', row, re.S)) for name, row in rows}


def chart(html: str) -> str:
    return re.search(r'<svg [^>]*class="pareto-chart".*?</svg>', html, re.S).group(0)


def test_the_page_shows_the_figures_the_api_returns(admin_client, support_measured):
    response = admin_client.get(PAGE, {"route": "support", "window": "24h"})
    assert response.status_code == 200
    html = response.content.decode()
    api = admin_client.get("/api/routing/pareto", {"route": "support", "window": "24h"}).json()
    rows = table(html)
    assert set(rows) == {o["option"] for o in api["options"]} == {"sim-small", "sim-large"}
    for figures in api["options"]:
        row = rows[figures["option"]]
        assert figures["sources"]["latency"].startswith("measured")
        assert row["p95"] == f"{figures['p95_ms']:.1f}"
        assert row["cost"] == f"{figures['cost_per_1k']:.6f}"
        assert row["quality"] == f"{figures['quality']:.4f}"
        assert row["samples"] == str(figures["samples"])
        assert row["frontier"] == ("✓" if figures["pareto"] else "")
    svg = chart(html)
    assert sorted(p.get("data-option") for p in points(svg)) == sorted(rows)
    assert {p.get("data-option") for p in points(svg) if "pareto" in p.get("class")} == set(api["frontier"])
    assert set(api["frontier"]) == {"sim-small", "sim-large"}  # cheap and weak against dear and good


def test_the_route_list_links_to_the_page(admin_client, seeded):
    html = admin_client.get(reverse("admin:routing_route_changelist")).content.decode()
    assert f'href="{PAGE}?route=support"' in html


def test_the_first_enabled_route_is_shown_by_default(admin_client, seeded):
    response = admin_client.get(PAGE)
    assert response.status_code == 200
    assert response.context["route_name"] == "sentiment"
    assert set(table(response.content.decode())) == {"cascade:sentiment"}


def test_a_bad_window_shows_an_error_not_a_500(admin_client, seeded):
    response = admin_client.get(PAGE, {"route": "support", "window": "1y"})
    assert response.status_code == 400
    assert "window must be like 15m, 24h or 7d" in response.content.decode()
    assert 'class="pareto-chart"' not in response.content.decode()


def test_an_unknown_route_shows_an_error_not_a_500(admin_client, seeded):
    response = admin_client.get(PAGE, {"route": "<nope>"})
    assert response.status_code == 404
    html = response.content.decode()
    assert "does not exist or is not enabled" in html and "&lt;nope&gt;" in html and "<nope>" not in html


def test_someone_not_staff_is_sent_to_the_login(client, seeded):
    user = get_user_model().objects.create_user("app-dev", password="pw-not-staff")
    client.force_login(user)
    response = client.get(PAGE, {"route": "support"})
    assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))


def test_staff_without_the_route_view_permission_are_refused(client, seeded):
    staff = get_user_model().objects.create_user("staff-no-perms", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(PAGE, {"route": "support"}).status_code == 403
