"""The OpenAPI document says what the API really does: every status and header it answers
with, the request rules it enforces. Checked in process, then by schemathesis against a
running gateway."""

from __future__ import annotations

import subprocess
import sys

import httpx2
import jsonschema_rs  # schemathesis's validator
import pytest
import schemathesis

from tests.conftest import auth
from tests.test_live_server import Gateway, base_env, manage

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]


def assert_openai_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.fixture
async def schema(http) -> dict:
    response = await http.get("/api/schema/", headers={"Accept": "application/json"})
    assert response.status_code == 200  # no key needed
    return response.json()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", CHAT, "POST"),
        ("PUT", CHAT, "POST"),
        ("TRACE", CHAT, "POST"),
        ("OPTIONS", "/v1/models", "GET"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/models/sim-small", "GET"),
    ],
)
async def test_a_wrong_method_is_a_405_with_the_allowed_ones(http, seeded, api_key, method, path, allow):
    response = await http.request(method, path, headers=auth(api_key))
    assert assert_openai_error(response, 405)["code"] == "method_not_allowed"
    assert response.headers["allow"] == allow


@pytest.mark.django_db(transaction=True)
async def test_a_wrong_method_on_the_cache_stats_is_a_405_with_the_allowed_ones(http, api_key):
    response = await http.post("/api/cache/stats", headers=auth(api_key))
    assert_openai_error(response, 405)
    assert "GET" in response.headers["allow"].split(", ")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nothing"),
        ("POST", "/v1/chat/completion"),
        ("DELETE", "/v1/"),
        ("GET", "/v1/models/%0A"),  # no model name can hold a newline: no route matches
        ("GET", "/api/nothing"),
        ("POST", "/api/cache/stats/more"),
        ("PATCH", "/api/"),
    ],
)
async def test_an_unknown_api_path_is_a_json_404_for_any_method(http, api_key, method, path):
    response = await http.request(method, path, headers=auth(api_key))
    assert assert_openai_error(response, 404)["code"] == "unknown_path"


async def test_a_known_api_path_without_its_slash_is_redirected(http):
    response = await http.get("/api/schema")
    assert response.status_code == 301
    assert response.headers["location"] == "/api/schema/"


async def test_other_unknown_paths_keep_the_html_404(http):
    response = await http.get("/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")


async def test_the_schema_lists_every_answer_of_chat_completions(schema):
    responses = schema["paths"][CHAT]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "404", "405", "409", "413", "422", "429", "500", "502", "503", "504"}
    assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
    assert responses["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    for status, response in responses.items():
        if status != "200":
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert {"x-llmops-request-id", "x-llmops-model", "x-llmops-attempts", "x-llmops-cost-usd"} <= set(
        responses["200"]["headers"]
    )
    assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert responses["405"]["headers"]["Allow"]["required"] is True
    assert {"Retry-After", "x-ratelimit-remaining-requests"} <= set(responses["429"]["headers"])
    assert "Retry-After" in responses["503"]["headers"]
    error = schema["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"message", "type", "param", "code"}


async def test_the_schema_says_what_a_chat_request_must_hold(schema):
    request = schema["components"]["schemas"]["ChatCompletionRequest"]
    assert request["anyOf"] == [
        {"required": ["messages"], "properties": {"messages": {"minItems": 1}}},
        {"required": ["prompt"]},
    ]
    assert request["properties"]["model"]["maxLength"] == 200
    assert "pattern" in request["properties"]["model"]  # not blank, no null characters
    assert request["properties"]["temperature"]["maximum"] == 2
    assert "tools" in request["properties"] and "response_format" in request["properties"]


async def test_the_not_blank_pattern_means_what_drf_does_in_the_schemas_own_dialect(schema):
    # ECMA-262's \s is not Python's: the pattern spells out what str.strip() removes.
    pattern = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]["model"]["pattern"]
    validator = jsonschema_rs.validator_for({"type": "string", "pattern": pattern})
    for point in [*range(0xD800), *range(0xE000, 0x10000), 0x1F600]:
        text = chr(point)
        assert validator.is_valid(text) is (not text.isspace() and text != "\x00"), hex(point)
    assert validator.is_valid(" sim-small\n")
    assert not validator.is_valid("sim\x00small")


async def test_every_operation_documents_its_401_and_405(schema):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert {"401", "405", "500"} <= set(operation["responses"]), (method, path)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "sim-small", "messages": []}, "messages"),
        ({"model": " ", "messages": HELLO}, "model"),
        ({"model": "sim\x00small", "messages": HELLO}, "model"),
        ({"model": "sim-small", "messages": HELLO, "user": "a\x00b"}, "user"),
        ({"model": "sim-small", "messages": HELLO, "tools": [{"type": "function"}]}, "tools"),
        ({"model": "sim-small", "messages": HELLO, "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
async def test_what_the_schema_forbids_is_a_400(http, seeded, api_key, body, param):
    response = await http.post(CHAT, json=body, headers=auth(api_key))
    assert assert_openai_error(response, 400)["param"] == param


@pytest.mark.django_db(transaction=True)
async def test_the_cache_stats_refuse_a_repeated_or_empty_hours(http, api_key):
    for query in ("hours=1&hours=2", "hours="):
        response = await http.get(f"/api/cache/stats?{query}", headers=auth(api_key))
        assert assert_openai_error(response, 400)["param"] == "hours"


# Against a running gateway.

# The seeded catalog with only its simulated models enabled, so that nothing schemathesis
# sends can reach a provider or start the local model; then a key. One process, not three:
# each manage.py start costs seconds.
SEED_SIMULATED_AND_CREATE_KEY = """
from llmops.auth import api_key_create
from llmops.models import ModelEndpoint
from llmops.seed import catalog_seed
catalog_seed()
ModelEndpoint.objects.exclude(provider="simulated").update(enabled=False)
print(api_key_create(name="openapi-test")[1])
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    env = base_env(tmp_path_factory.mktemp("openapi"))
    env["LLMOPS_ALLOW_INSECURE_SECRET_KEY"] = "true"
    manage(env, "migrate", "--noinput")
    key = manage(env, "shell", "-c", SEED_SIMULATED_AND_CREATE_KEY).strip().splitlines()[-1]
    server = Gateway(env)
    yield server, key
    server.stop()


@pytest.fixture(scope="module")
def live_schema(live):
    server, _ = live
    return schemathesis.openapi.from_url(f"{server.url}/api/schema/")


@pytest.mark.live_server
def test_schemathesis_default_checks_pass_against_a_live_gateway(live, tmp_path):
    server, key = live
    # A metrics window must lie within the days metrics are kept, counted from now: a rule
    # OpenAPI cannot state, so a far start or an end before the start is a 400 there.
    (tmp_path / "schemathesis.toml").write_text(
        '[[operations]]\ninclude-path-regex = "^/api/metrics/"\n'
        "checks.positive_data_acceptance.expected-statuses = [200, 400, 401, 403, 404]\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server.url}/api/schema/",
            "--header",
            f"Authorization: Bearer {key}",
            "--max-examples",
            "40",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        cwd=tmp_path,  # its .hypothesis and .schemathesis directories go there
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-20_000:] + done.stderr[-5_000:]


@pytest.mark.live_server
@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "sim-small", "messages": HELLO, "simulate": {"ttft_ms": 0}}, 200),
        (
            {
                "model": "sim-small",
                "messages": HELLO,
                "stream": True,
                "stream_options": {"include_usage": True},
                "simulate": {"ttft_ms": 0, "tokens_per_s": 0},
            },
            200,
        ),
        ({"model": "no-such-model", "messages": HELLO}, 404),
        ({"model": "sim-small"}, 400),
    ],
)
def test_chat_answers_match_the_schema(live, live_schema, body, status):
    _, key = live
    operation = live_schema[CHAT]["POST"]
    case = operation.Case(body=body, headers=auth(key), media_type="application/json")
    response = case.call()
    assert response.status_code == status, response.text
    case.validate_response(response)  # body, content type and required headers
    if body.get("stream"):
        assert response.headers["content-type"][0].startswith("text/event-stream")


@pytest.mark.live_server
def test_a_missing_key_answer_matches_the_schema(live, live_schema):
    server, _ = live
    operation = live_schema["/v1/models"]["GET"]
    case = operation.Case()
    response = case.call()
    assert response.status_code == 401
    case.validate_response(response)
    assert httpx2.get(f"{server.url}/v1/models", timeout=5).headers["www-authenticate"].startswith("Bearer")
