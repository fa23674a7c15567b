from __future__ import annotations

import pytest

from llmops.models import ApiKey, ModelEndpoint
from tests.conftest import auth, flushed_metrics

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]


def assert_openai_error(response, status: int, error_type: str, *, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


async def test_a_missing_key_is_a_401(http, seeded):
    response = await http.post(URL, json={"model": "sim-small", "messages": HELLO})
    error = assert_openai_error(response, 401, "authentication_error")
    assert error["code"] == "missing_api_key"
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_wrong_key_is_a_401(http, seeded):
    response = await http.post(URL, json={"model": "sim-small", "messages": HELLO}, headers=auth("llmops-wrong"))
    assert assert_openai_error(response, 401, "authentication_error")["code"] == "invalid_api_key"


async def test_a_revoked_key_stops_working_at_once(http, seeded, api_key):
    ok = await http.post(URL, json={"model": "sim-small", "messages": HELLO}, headers=auth(api_key))
    assert ok.status_code == 200
    key = await ApiKey.objects.aget()
    key.is_active = False
    await key.asave()
    refused = await http.post(URL, json={"model": "sim-small", "messages": HELLO}, headers=auth(api_key))
    assert_openai_error(refused, 401, "authentication_error")


async def test_the_models_endpoint_needs_a_key_too(http, seeded):
    assert_openai_error(await http.get("/v1/models"), 401, "authentication_error")


async def test_malformed_json_is_a_400(http, seeded, api_key):
    response = await http.post(
        URL,
        content=b'{"model": "sim-small", "messages": [',
        headers={**auth(api_key), "content-type": "application/json"},
    )
    assert assert_openai_error(response, 400, "invalid_request_error")["code"] == "invalid_json"


async def test_a_body_that_is_not_an_object_is_a_400(http, seeded, api_key):
    response = await http.post(URL, json=["model"], headers=auth(api_key))
    assert_openai_error(response, 400, "invalid_request_error")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "sim-small"}, "messages"),
        ({"model": "sim-small", "messages": []}, "messages"),
        ({"messages": HELLO}, "model"),
        ({"model": "sim-small", "messages": "hi"}, "messages"),
        ({"model": "sim-small", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "sim-small", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "sim-small", "messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"model": "sim-small", "messages": HELLO, "temperature": 3}, "temperature"),
        ({"model": "sim-small", "messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"model": "sim-small", "messages": HELLO, "n": 2}, "n"),
        ({"model": "sim-small", "messages": HELLO, "stop": [1, 2]}, "stop"),
        ({"model": "sim-small", "messages": HELLO, "simulate": {"latency_ms": -1}}, "simulate"),
        ({"model": "sim-small", "messages": HELLO, "simulate": {"warp": 9}}, "simulate"),
        ({"model": "sim-small", "messages": HELLO, "tools": [{"type": "function"}]}, "tools"),
        ({"model": "sim-small", "messages": HELLO, "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
async def test_wrong_fields_are_a_400_naming_the_field(http, seeded, api_key, body, param):
    response = await http.post(URL, json=body, headers=auth(api_key))
    assert_openai_error(response, 400, "invalid_request_error", param=param)


async def test_an_unknown_model_is_a_404(http, seeded, api_key):
    response = await http.post(URL, json={"model": "gpt-9", "messages": HELLO}, headers=auth(api_key))
    error = assert_openai_error(response, 404, "not_found_error", param="model")
    assert error["code"] == "model_not_found"


async def test_a_disabled_model_is_refused_and_unlisted(http, seeded, api_key):
    endpoint = await ModelEndpoint.objects.aget(name="sim-large")
    endpoint.enabled = False
    await endpoint.asave()
    response = await http.post(URL, json={"model": "sim-large", "messages": HELLO}, headers=auth(api_key))
    assert_openai_error(response, 404, "not_found_error")
    listed = (await http.get("/v1/models", headers=auth(api_key))).json()
    assert "sim-large" not in {m["id"] for m in listed["data"]}


async def test_simulate_is_refused_for_real_models(http, seeded, api_key):
    body = {"model": "smollm2-135m", "messages": HELLO, "simulate": {"latency_ms": 1}}
    response = await http.post(URL, json=body, headers=auth(api_key))
    assert_openai_error(response, 400, "invalid_request_error", param="simulate")


async def test_a_body_over_the_limit_is_a_413(http, seeded, api_key, settings):
    settings.LLMOPS_MAX_BODY_BYTES = 2048
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "x" * 5000}]}
    response = await http.post(URL, json=body, headers=auth(api_key))
    assert assert_openai_error(response, 413, "invalid_request_error")["code"] == "request_too_large"


@pytest.mark.parametrize("method", ["GET", "OPTIONS", "DISPATCH", "INITIAL", "DELETE"])
async def test_a_wrong_method_is_a_405_in_the_same_shape(http, seeded, api_key, method):
    response = await http.request(method, URL, headers=auth(api_key))
    assert_openai_error(response, 405, "invalid_request_error")


async def test_deeply_nested_json_is_a_400_not_a_crash(http, seeded, api_key):
    body = b"[" * 100_000 + b"]" * 100_000
    response = await http.post(URL, content=body, headers={**auth(api_key), "content-type": "application/json"})
    assert assert_openai_error(response, 400, "invalid_request_error")["code"] == "invalid_json"


async def test_requests_refused_before_the_pipeline_are_recorded_too(http, seeded, api_key):
    await http.post(URL, content=b"{nope", headers={**auth(api_key), "content-type": "application/json"})
    await http.post(URL, json={"model": "sim-small", "messages": HELLO, "temperature": 9}, headers=auth(api_key))
    await http.post(URL, json={"model": "sim-small", "messages": HELLO, "tools": [{}]}, headers=auth(api_key))
    metrics = await flushed_metrics()
    assert [(m.model, m.status, m.http_status, m.error_type) for m in metrics] == [
        ("", "error", 400, "invalid_request_error"),
        ("sim-small", "error", 400, "invalid_request_error"),
        ("sim-small", "error", 400, "invalid_request_error"),
    ]
    assert "temperature" in metrics[1].error_message
    assert all(m.api_key is not None for m in metrics)


async def test_a_simulated_upstream_failure_is_a_502_and_recorded(http, seeded, api_key):
    body = {"model": "sim-small", "messages": HELLO, "simulate": {"error_rate": 1}}
    response = await http.post(URL, json=body, headers=auth(api_key))
    assert_openai_error(response, 502, "upstream_error")
    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status, metric.error_type) == ("error", 502, "upstream_error")


async def test_a_streamed_upstream_failure_before_the_first_token_is_a_502(http, seeded, api_key):
    body = {"model": "sim-small", "messages": HELLO, "stream": True, "simulate": {"error_rate": 1}}
    response = await http.post(URL, json=body, headers=auth(api_key))
    assert_openai_error(response, 502, "upstream_error")
    [metric] = await flushed_metrics()
    assert (metric.status, metric.stream) == ("error", True)


async def test_an_unknown_model_detail_is_a_404(http, seeded, api_key):
    assert_openai_error(await http.get("/v1/models/nope", headers=auth(api_key)), 404, "not_found_error")
    ok = await http.get("/v1/models/sim-small", headers=auth(api_key))
    assert ok.json()["id"] == "sim-small"
