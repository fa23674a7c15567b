"""Where the gateway's secrets may and may not go: provider keys only to the provider they
belong to, no gateway secret named as a provider key, none in an upstream error passed on;
and a request without a key, or with a body over the limit, refused before its body is read."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from llmops import catalog
from llmops.catalog import EndpointConfig
from llmops.models import ModelEndpoint
from llmops.providers import anthropic as anthropic_module
from llmops.providers import openai as openai_module
from llmops.providers.anthropic import AnthropicProvider
from llmops.providers.base import ProviderCall, UpstreamError, provider_key, upstream_error_from_status
from llmops.providers.openai import OpenAIProvider
from tests.conftest import add_endpoint, auth
from tests.fakes.anthropic_server import FakeAnthropic, fake_anthropic_fixture  # noqa: F401
from tests.fakes.openai_server import FakeOpenAI, fake_openai_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
HELLO = [{"role": "user", "content": "Hello there"}]
OPENAI_SECRET = "sk-test-secret"
ANTHROPIC_SECRET = "sk-ant-test-secret"
GATEWAY_SECRET = "django-secret-key-value-9b1e"


def endpoint(**fields: Any) -> EndpointConfig:
    """A catalog entry as the providers see it, built the way the catalog builds one."""
    return EndpointConfig.from_model(ModelEndpoint(**{"upstream_model": "m-1", **fields}))


async def ask(provider: Any, config: EndpointConfig, *, stream: bool) -> str:
    call = ProviderCall(messages=HELLO)
    if not stream:
        return (await provider.complete(config, call)).text
    return "".join([delta.text async for delta in provider.stream(config, call)])


def headers_seen(fake: Any) -> str:
    return "\n".join(f"{name}: {value}" for request in fake.requests for name, value in request.headers.items())


# -- provider keys go only to their own provider ------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_an_openai_compatible_server_of_its_own_never_gets_the_openai_key(fake_openai, monkeypatch, stream):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_SECRET)
    monkeypatch.setenv("OPENAI_ORG_ID", "org-of-the-gateway")
    config = endpoint(name="vllm", provider="openai", base_url=fake_openai.base_url)
    assert await ask(OpenAIProvider(), config, stream=stream)
    seen = headers_seen(fake_openai)
    assert OPENAI_SECRET not in seen and "org-of-the-gateway" not in seen
    # No credential header at all: the server was named without a key variable.
    assert "authorization" not in fake_openai.last.headers


@pytest.mark.parametrize("stream", [False, True])
async def test_an_anthropic_compatible_server_of_its_own_gets_no_key_at_all(fake_anthropic, monkeypatch, stream):
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_SECRET)
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "token-" + ANTHROPIC_SECRET)
    config = endpoint(name="proxy-claude", provider="anthropic", base_url=fake_anthropic.base_url)
    assert await ask(AnthropicProvider(), config, stream=stream)
    assert ANTHROPIC_SECRET not in headers_seen(fake_anthropic)
    assert "authorization" not in fake_anthropic.last.headers
    assert "x-api-key" not in fake_anthropic.last.headers


async def test_a_key_variable_named_in_the_catalog_goes_to_that_server(fake_openai, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_SECRET)
    monkeypatch.setenv("GROQ_API_KEY", "gsk-for-this-server")
    config = endpoint(name="groq", provider="openai", base_url=fake_openai.base_url, api_key_env="GROQ_API_KEY")
    await ask(OpenAIProvider(), config, stream=False)
    assert fake_openai.last.headers["authorization"] == "Bearer gsk-for-this-server"
    assert OPENAI_SECRET not in headers_seen(fake_openai)


@pytest.mark.parametrize(
    ("provider", "base_url", "default_key_sent"),
    [
        ("openai", "", True),
        ("openai", "https://api.openai.com/v1", True),
        ("openai", "https://api.openai.com:443/v1", True),
        ("openai", "http://api.openai.com/v1", False),  # not over https
        ("openai", "https://api.openai.com.example.net/v1", False),
        ("openai", "https://api.openai.com:8443/v1", False),
        ("openai", "https://someone@api.openai.com/v1", False),
        ("openai", "https://api.anthropic.com", False),  # another provider's host
        ("anthropic", "", True),
        ("anthropic", "https://api.anthropic.com", True),
        ("anthropic", "https://claude.example.net", False),
    ],
)
def test_the_default_key_goes_only_to_the_providers_own_host(monkeypatch, provider, base_url, default_key_sent):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_SECRET)
    module = openai_module if provider == "openai" else anthropic_module
    secret = OPENAI_SECRET if provider == "openai" else ANTHROPIC_SECRET
    config = endpoint(name="m", provider=provider, base_url=base_url)
    key = provider_key(config, default_env=module.DEFAULT_KEY_ENV, official_base_url=module.OFFICIAL_BASE_URL)
    assert (key == secret) is default_key_sent
    if not default_key_sent:
        assert key is None


# -- api_key_env names a provider key, never a gateway secret -------------------------


@pytest.mark.parametrize(
    "name",
    ["SECRET_KEY", "SECRET_KEY_FILE", "DATABASE_URL", "DATABASE_URL_FILE", "REDIS_URL", "CELERY_BROKER_URL",
     "CELERY_RESULT_BACKEND_FILE", "HOME", "AWS_SECRET_ACCESS_KEY", "MY_TOKEN"],
)  # fmt: skip
def test_the_admin_refuses_a_key_variable_that_is_not_a_provider_key(name):
    row = ModelEndpoint(name="m", provider="openai", base_url="http://127.0.0.1:9/v1", api_key_env=name)
    with pytest.raises(ValidationError) as caught:
        row.clean()
    assert "api_key_env" in caught.value.error_dict


@pytest.mark.parametrize("name", ["", "OPENAI_API_KEY", "GROQ_API_KEY", "MY_TOKEN"])
def test_the_admin_takes_provider_key_variables_and_the_listed_ones(settings, name):
    settings.LLMOPS_PROVIDER_KEY_ENVS = ["MY_TOKEN"]
    ModelEndpoint(name="m", provider="openai", base_url="http://127.0.0.1:9/v1", api_key_env=name).clean()


def test_a_gateway_secret_is_refused_even_when_listed(settings):
    settings.LLMOPS_PROVIDER_KEY_ENVS = ["SECRET_KEY", "DATABASE_URL"]
    for name in ("SECRET_KEY", "DATABASE_URL"):
        with pytest.raises(ValidationError):
            ModelEndpoint(name="m", provider="openai", api_key_env=name).clean()


@pytest.mark.django_db
def test_the_admin_form_shows_the_refusal_on_the_field(admin_client):
    from django.urls import reverse

    response = admin_client.post(
        reverse("admin:llmops_modelendpoint_add"),
        {"name": "leaky", "provider": "openai", "api_key_env": "SECRET_KEY", "context_window": 8192,
         "max_concurrency": 64, "input_price_per_mtok": 0, "output_price_per_mtok": 0,
         "cached_input_price_per_mtok": 0, "cache_write_price_per_mtok": 0, "batch_discount": 0,
         "simulation": "{}", "enabled": "on"},
    )  # fmt: skip
    assert response.status_code == 200  # the form again, not a redirect
    assert "api_key_env" in response.context["adminform"].form.errors
    assert not ModelEndpoint.objects.filter(name="leaky").exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("listed", [False, True])
async def test_a_row_written_around_the_admin_still_cannot_send_a_gateway_secret(
    http, api_key, fake_openai, monkeypatch, settings, listed
):
    monkeypatch.setenv("SECRET_KEY", GATEWAY_SECRET)
    monkeypatch.setenv("LEAKY_API_KEY", "sk-fine")
    if listed:
        settings.LLMOPS_PROVIDER_KEY_ENVS = ["SECRET_KEY"]
    await add_endpoint(name="leaky", provider="openai", base_url=fake_openai.base_url, api_key_env="LEAKY_API_KEY")
    await ModelEndpoint.objects.filter(name="leaky").aupdate(api_key_env="SECRET_KEY")
    catalog.reset()
    response = await http.post(
        "/v1/chat/completions", json={"model": "leaky", "messages": HELLO}, headers=auth(api_key)
    )
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "leaky" in message
    assert GATEWAY_SECRET not in response.text
    assert fake_openai.requests == []


@pytest.mark.parametrize("provider", [OpenAIProvider(), AnthropicProvider()], ids=["openai", "anthropic"])
async def test_a_provider_refuses_a_gateway_secret_named_as_its_key(monkeypatch, provider):
    monkeypatch.setenv("DATABASE_URL", f"postgres://app:{GATEWAY_SECRET}@db/app")
    config = endpoint(name="sneaky", provider=provider.name, base_url="http://127.0.0.1:9", api_key_env="DATABASE_URL")
    with pytest.raises(UpstreamError) as caught:
        await ask(provider, config, stream=False)
    assert "sneaky" in caught.value.message
    assert GATEWAY_SECRET not in caught.value.message


# -- upstream error text reaches clients trimmed and scrubbed ------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [400, 500])
async def test_an_upstream_error_echoing_secrets_is_trimmed_and_scrubbed(
    fake_openai, monkeypatch, settings, stream, status
):
    monkeypatch.setenv("SHOUTY_API_KEY", OPENAI_SECRET)
    settings.SECRET_KEY = GATEWAY_SECRET
    settings.DATABASE_URL = "postgres://app:db-password-4471@db:5432/app"
    settings.REDIS_URL = "redis://:redis-password-8812@cache:6379/0"
    echoed = (
        f"Incorrect API key provided: Bearer {OPENAI_SECRET}. Also seen: {GATEWAY_SECRET}, db-password-4471, "
        "redis-password-8812. "
    )
    fake_openai.fail(status, message=echoed + "blah " * 1000)
    config = endpoint(name="shouty", provider="openai", base_url=fake_openai.base_url, api_key_env="SHOUTY_API_KEY")
    with pytest.raises(UpstreamError) as caught:
        await ask(OpenAIProvider(), config, stream=stream)
    message = caught.value.message
    assert len(message) <= 500
    for secret in (OPENAI_SECRET, GATEWAY_SECRET, "db-password-4471", "redis-password-8812"):
        assert secret not in message
    assert message.count("[redacted]") == 4
    assert fake_openai.last.headers["authorization"] == f"Bearer {OPENAI_SECRET}"  # it was sent, and echoed


async def test_an_anthropic_error_echoing_the_key_is_scrubbed(fake_anthropic, monkeypatch):
    monkeypatch.setenv("CLAUDE_PROXY_API_KEY", ANTHROPIC_SECRET)
    fake_anthropic.fail(400, message=f"invalid x-api-key {ANTHROPIC_SECRET} " + "x" * 3000)
    config = endpoint(
        name="claude-proxy", provider="anthropic", base_url=fake_anthropic.base_url, api_key_env="CLAUDE_PROXY_API_KEY"
    )
    with pytest.raises(UpstreamError) as caught:
        await ask(AnthropicProvider(), config, stream=False)
    assert ANTHROPIC_SECRET not in caught.value.message
    assert "[redacted]" in caught.value.message and len(caught.value.message) <= 500


def test_a_status_error_message_is_scrubbed_however_it_is_built(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_SECRET)
    error = upstream_error_from_status(429, f"slow down, {OPENAI_SECRET}" + "!" * 900, "3")
    assert OPENAI_SECRET not in error.message and len(error.message) <= 500
    assert (error.status, error.retry_after) == (429, "3")


# -- the API handler refuses before reading the body ---------------------------------


class Client:
    """One ASGI request by hand: the body in chunks, each receive() counted."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.receives = 0
        self.body_received = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.receives < len(self.chunks):
            chunk = self.chunks[self.receives]
            self.receives += 1
            self.body_received += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": self.receives < len(self.chunks)}
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.sent if m["type"] == "http.response.start")

    @property
    def headers(self) -> dict[bytes, bytes]:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return {name.lower(): value for name, value in start["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def asgi_request(
    client: Client, *, path: str = "/v1/chat/completions", method: str = "POST", headers: list | None = None
) -> Client:
    from llmops.asgi import application

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await asyncio.wait_for(application(scope, client.receive, client.send), timeout=10)
    return client


def bearer(key: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {key}".encode())


@pytest.mark.django_db(transaction=True)
async def test_a_body_streamed_past_the_limit_is_a_413_without_reading_the_rest(api_key, settings):
    settings.LLMOPS_MAX_BODY_BYTES = 2048
    chunk = 512
    client = Client([b"x" * chunk] * 200)  # 100 KiB, no Content-Length
    await asgi_request(client, headers=[bearer(api_key), (b"content-type", b"application/json")])
    assert client.status == 413
    error = json.loads(client.body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert client.body_received <= settings.LLMOPS_MAX_BODY_BYTES + chunk
    assert client.receives == settings.LLMOPS_MAX_BODY_BYTES // chunk + 1


@pytest.mark.django_db(transaction=True)
async def test_a_declared_length_over_the_limit_is_a_413_before_any_body_is_read(api_key, settings):
    settings.LLMOPS_MAX_BODY_BYTES = 2048
    client = Client([b"x" * 4096])
    await asgi_request(client, headers=[bearer(api_key), (b"content-length", b"4096")])
    assert client.status == 413
    assert b"request_too_large" in client.body
    assert client.receives == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("key", [None, "llmops-wrong"])
async def test_a_post_without_a_valid_key_is_a_401_before_its_body_is_read(seeded, key):
    client = Client([b'{"model": "sim-small", "messages": []}'])
    await asgi_request(client, headers=[bearer(key)] if key else [])
    assert client.status == 401
    assert client.headers[b"www-authenticate"].startswith(b"Bearer")
    error = json.loads(client.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (
        "authentication_error",
        "invalid_api_key" if key else "missing_api_key",
    )
    assert client.receives == 0


@pytest.mark.django_db(transaction=True)
async def test_a_chunked_body_under_the_limit_with_a_key_is_answered(seeded, api_key):
    body = json.dumps({"model": "sim-small", "messages": HELLO}).encode()
    client = Client([body[:10], body[10:25], body[25:]])
    await asgi_request(client, headers=[bearer(api_key), (b"content-type", b"application/json")])
    assert client.status == 200, client.body
    assert json.loads(client.body)["choices"][0]["message"]["content"]
    assert client.receives == 3


@pytest.mark.django_db(transaction=True)
async def test_healthz_needs_no_key(seeded):
    client = await asgi_request(Client([b""]), path="/healthz", method="GET")
    assert client.status == 200


# -- the development SECRET_KEY never runs with DEBUG off unless allowed -------------


def start_up(**env: str) -> subprocess.CompletedProcess:
    dropped = (
        "SECRET_KEY",
        "SECRET_KEY_FILE",
        "DEBUG",
        "LLMOPS_ALLOW_INSECURE_SECRET_KEY",
        "DATABASE_URL",
        "REDIS_URL",
    )
    clean = {k: v for k, v in os.environ.items() if k not in dropped}
    code = "import django; from django.conf import settings; django.setup(); print(settings.SECRET_KEY[:6])"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "llmops.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_a_secret_key_start_up_stops_with_debug_off():
    done = start_up()
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr
    assert "SECRET_KEY" in done.stderr and "LLMOPS_ALLOW_INSECURE_SECRET_KEY" in done.stderr


def test_the_built_in_key_set_by_hand_stops_start_up_too():
    done = start_up(SECRET_KEY="llmops-insecure-default-key-set-SECRET_KEY-in-production")
    assert done.returncode != 0 and "ImproperlyConfigured" in done.stderr


@pytest.mark.parametrize(
    "env",
    [{"LLMOPS_ALLOW_INSECURE_SECRET_KEY": "true"}, {"DEBUG": "true"}, {"SECRET_KEY": "a-real-secret-for-this-test"}],
)
def test_start_up_goes_on_when_allowed_in_debug_or_with_a_secret_key(env):
    done = start_up(**env)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("stream", [False, True])
async def test_a_redirect_does_not_take_the_key_to_another_host(fake_openai, monkeypatch, stream):
    monkeypatch.setenv("GROQ_API_KEY", "gsk-for-this-server")
    elsewhere = FakeOpenAI().start()
    try:
        fake_openai.fail(307, headers={"location": f"{elsewhere.base_url}/chat/completions"})
        config = endpoint(name="groq", provider="openai", base_url=fake_openai.base_url, api_key_env="GROQ_API_KEY")
        with pytest.raises(UpstreamError) as caught:
            await ask(OpenAIProvider(), config, stream=stream)
        assert caught.value.status == 502
        assert elsewhere.requests == []
    finally:
        elsewhere.stop()
