"""GET /metrics: the Prometheus exposition (monitoring.prometheus).

Served to a request with the bearer token LLMOPS_PROMETHEUS_TOKEN, and otherwise only to
the addresses and networks of LLMOPS_PROMETHEUS_ALLOWED_IPS (loopback by default); others
get a 403, or a 401 when they sent a wrong token. The address is the connection's own:
behind a proxy on the same machine every request comes from the proxy's (loopback), so keep
/metrics off the proxy, or allow no address and scrape with the token."""

from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from llmops.errors import error_body
from monitoring.prometheus import CONTENT_TYPE, prometheus_exposition

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FORWARDED_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


@lru_cache(maxsize=8)
def allowed_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)
    except ValueError as exc:
        raise ImproperlyConfigured(f"LLMOPS_PROMETHEUS_ALLOWED_IPS: {exc}") from None


# A bad entry stops start-up (`manage.py migrate` and `check` load the URLs), not a scrape.
allowed_networks(tuple(settings.LLMOPS_PROMETHEUS_ALLOWED_IPS))


def address_allowed(raw: str) -> bool:
    networks = allowed_networks(tuple(settings.LLMOPS_PROMETHEUS_ALLOWED_IPS))
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return False  # no address (a Unix socket), or not one
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack socket
    return any(address in network for network in networks)


def _refusal(request: HttpRequest) -> JsonResponse | None:
    authorization = request.headers.get("Authorization", "")
    scheme, _, given = authorization.partition(" ")
    token = settings.LLMOPS_PROMETHEUS_TOKEN
    if token and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return None
    # A request a proxy passed on carries the client's address in a header: the connection's
    # own (the proxy's, often loopback) says nothing of who asked.
    forwarded = any(name in request.META for name in FORWARDED_HEADERS)
    if not forwarded and address_allowed(request.META.get("REMOTE_ADDR", "")):
        return None
    if authorization:
        return JsonResponse(
            error_body("Incorrect metrics token.", "authentication_error", code="invalid_token"),
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="llmops metrics"'},
        )
    return JsonResponse(
        error_body(
            "/metrics is served with the bearer token LLMOPS_PROMETHEUS_TOKEN, or to the addresses "
            "in LLMOPS_PROMETHEUS_ALLOWED_IPS.",
            "permission_error",
            code="forbidden",
        ),
        status=403,
    )


@csrf_exempt  # a POST gets the 405 below, not the CSRF page
def metrics(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return JsonResponse(
            error_body(f"{request.method} is not allowed here: use GET.", "invalid_request_error"),
            status=405,
            headers={"Allow": "GET, HEAD"},
        )
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    return HttpResponse(prometheus_exposition(), content_type=CONTENT_TYPE)
