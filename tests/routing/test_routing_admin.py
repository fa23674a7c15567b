"""Staff configure routes and cascades in the admin; what cannot work is refused there,
naming the field."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from llmops.models import ModelEndpoint
from routing.models import Cascade, CascadeStep, Route, RouteRule

pytestmark = pytest.mark.django_db(transaction=True)


def refused_field(row) -> set[str]:
    with pytest.raises(ValidationError) as caught:
        row.full_clean()
    return set(caught.value.message_dict)


@pytest.fixture
def cascade(seeded) -> Cascade:
    return Cascade.objects.create(name="c")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model": "no-such-model"}, "model"),
        ({"model": "sim-small", "pattern": "([a-z"}, "pattern"),
        ({"model": "sim-small", "json_schema": {"type": "no-such-type"}}, "json_schema"),
        ({"model": "sim-small", "json_schema": [1, 2]}, "json_schema"),
        ({"model": "sim-small", "judge_model": "sim-large", "judge_rubric": "Is it polite?"}, "judge_rubric"),
        ({"model": "sim-small", "judge_rubric": "Score 1 if polite."}, "judge_model"),
        ({"model": "sim-small", "judge_model": "nope", "judge_rubric": "Score 1 if polite."}, "judge_model"),
        ({"model": "sim-small", "threshold": 1.5}, "threshold"),
        ({"model": "sim-small", "labels": " , ,"}, "labels"),
        ({"model": "claude-haiku-4-5", "confidence": "mean"}, "confidence"),
    ],
)
def test_a_cascade_step_that_cannot_work_is_refused_naming_the_field(cascade, fields, field):
    ModelEndpoint.objects.filter(name="claude-haiku-4-5").update(enabled=True)
    assert field in refused_field(CascadeStep(cascade=cascade, **fields))


def test_a_cascade_step_on_a_disabled_model_is_refused(cascade):
    ModelEndpoint.objects.filter(name="sim-small").update(enabled=False)
    with pytest.raises(ValidationError, match="Disabled in the catalog: sim-small"):
        CascadeStep(cascade=cascade, model="sim-small").full_clean()


def test_a_good_cascade_step_is_accepted(cascade):
    step = CascadeStep(
        cascade=cascade,
        model="sim-small",
        labels="yes, no",
        pattern=r"^\w+$",
        json_schema={"type": "string"},
        confidence="min",
        judge_model="sim-large",
        judge_rubric="Score 1 when the answer is yes or no, else 0.",
        threshold=0.8,
    )
    step.full_clean()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"strategy": "single", "model_names": ""}, "model_names"),
        ({"strategy": "single", "model_names": "sim-small, sim-large"}, "model_names"),
        ({"strategy": "single", "model_names": "sim-small:2"}, "model_names"),
        ({"strategy": "weighted", "model_names": "sim-small:x"}, "model_names"),
        ({"strategy": "weighted", "model_names": "sim-small:-1"}, "model_names"),
        ({"strategy": "weighted", "model_names": "sim-small, sim-small"}, "model_names"),
        ({"strategy": "least_in_flight", "model_names": "sim-small, missing"}, "model_names"),
        ({"strategy": "cascade", "model_names": ""}, "cascade"),
    ],
)
def test_a_route_target_that_cannot_work_is_refused_naming_the_field(seeded, fields, field):
    assert field in refused_field(Route(name="r", **fields))


def test_a_cascade_target_takes_no_models(cascade):
    assert "model_names" in refused_field(Route(name="r", strategy="cascade", cascade=cascade, model_names="sim-small"))
    assert "cascade" in refused_field(Route(name="r", strategy="single", model_names="sim-small", cascade=cascade))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"pattern": "(unclosed"}, "pattern"),
        ({"metadata": {"tier": ["a", "b"]}}, "metadata"),
        ({"metadata": ["tier"]}, "metadata"),
        ({"metadata": {"premium": True}}, "metadata"),
        ({"min_input_tokens": 10, "max_input_tokens": 5}, "max_input_tokens"),
        ({"model_names": "gpt-4.1"}, "model_names"),  # disabled without an OpenAI key
    ],
)
def test_a_rule_that_cannot_work_is_refused_naming_the_field(seeded, fields, field):
    route = Route.objects.create(name="r", strategy="single", model_names="sim-small")
    ModelEndpoint.objects.filter(name="gpt-4.1").update(enabled=False)
    rule = RouteRule(route=route, **{"strategy": "single", "model_names": "sim-large", **fields})
    assert field in refused_field(rule)


def test_two_routes_cannot_claim_one_task_type(seeded):
    assert "__all__" in refused_field(Route(name="other", task_type="classification", model_names="sim-small"))


def test_the_admin_lists_routes_and_cascades_and_opens_their_forms(admin_client, seeded):
    for url in (
        "/admin/routing/route/",
        "/admin/routing/route/add/",
        "/admin/routing/cascade/",
        "/admin/routing/cascade/add/",
        "/admin/routing/evaluation/",
        f"/admin/routing/route/{Route.objects.get(name='sentiment').pk}/change/",
        f"/admin/routing/cascade/{Cascade.objects.get(name='sentiment').pk}/change/",
    ):
        response = admin_client.get(url)
        assert response.status_code == 200, url
    listing = admin_client.get("/admin/routing/cascade/").content.decode()
    assert "smollm2-135m → sim-large" in listing


def test_an_invalid_rule_in_the_admin_form_is_shown_on_its_field_and_nothing_is_saved(admin_client, seeded):
    form = {
        "name": "broken",
        "task_type": "",
        "description": "",
        "enabled": "on",
        "strategy": "single",
        "model_names": "sim-small",
        "cascade": "",
        "rules-TOTAL_FORMS": "1",
        "rules-INITIAL_FORMS": "0",
        "rules-MIN_NUM_FORMS": "0",
        "rules-MAX_NUM_FORMS": "1000",
        "rules-0-position": "0",
        "rules-0-name": "bad pattern",
        "rules-0-enabled": "on",
        "rules-0-pattern": "([a-z",
        "rules-0-metadata": "{}",
        "rules-0-strategy": "single",
        "rules-0-model_names": "sim-large",
    }
    response = admin_client.post("/admin/routing/route/add/", form)
    assert response.status_code == 200
    assert "Not a valid regular expression" in response.content.decode()
    assert not Route.objects.filter(name="broken").exists()
    form["rules-0-pattern"] = r"INV-\d+"
    assert admin_client.post("/admin/routing/route/add/", form).status_code == 302
    assert Route.objects.get(name="broken").rules.get().pattern == r"INV-\d+"
