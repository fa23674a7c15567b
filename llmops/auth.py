"""Gateway API keys: `Authorization: Bearer <key>` on every API call."""

from __future__ import annotations

import secrets
from typing import Any

from django.http import HttpRequest
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.permissions import BasePermission

from llmops import catalog
from llmops.catalog import ApiKeyInfo, hash_key
from llmops.errors import AuthenticationFailed
from llmops.models import ApiKey

KEY_PREFIX = "llmops-"
PREFIX_LENGTH = 12


def bearer_token(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authorize(request: HttpRequest) -> ApiKeyInfo:
    token = bearer_token(request)
    if token is None:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            code="missing_api_key",
            headers={"WWW-Authenticate": 'Bearer realm="llmops"'},
        )
    info = await catalog.api_key_get(token)
    if info is None:
        raise AuthenticationFailed(
            "Incorrect or revoked API key.",
            code="invalid_api_key",
            headers={"WWW-Authenticate": 'Bearer realm="llmops"'},
        )
    return info


def key_material() -> tuple[str, str, str]:
    """A new raw key, the prefix shown to staff, and the hash that is stored."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    return raw, raw[:PREFIX_LENGTH], hash_key(raw)


def api_key_create(*, name: str, owner: Any = None) -> tuple[ApiKey, str]:
    """Make a key; the raw key is returned once and never stored."""
    raw, prefix, digest = key_material()
    key = ApiKey.objects.create(name=name, prefix=prefix, key_hash=digest, owner=owner)
    return key, raw


def api_key_for_staff(user: Any) -> ApiKeyInfo:
    """The key a staff member's own pages (the playground) act under: one per user, made on
    first use, so their requests are metered and cached apart from every app's. Its raw
    key is never issued: nothing can present it as a bearer token."""
    key = ApiKey.objects.filter(owner=user, name=f"playground:{user.get_username()}").first()
    if key is None:
        _, prefix, digest = key_material()
        key = ApiKey.objects.create(
            name=f"playground:{user.get_username()}", owner=user, prefix=prefix, key_hash=digest
        )
    return ApiKeyInfo.from_model(key)


class ApiKeyPrincipal:
    is_authenticated = True
    is_anonymous = False

    def __init__(self, info: ApiKeyInfo) -> None:
        self.info = info


class KeyOrStaff(BasePermission):
    """An API key, or a signed-in staff member (for the pages and figures staff read)."""

    def has_permission(self, request: Any, view: Any) -> bool:
        user = request.user
        return isinstance(user, ApiKeyPrincipal) or bool(user and user.is_authenticated and user.is_staff)


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """For DRF's synchronous views; the gateway's async views call `authorize` instead."""

    def authenticate(self, request: Any) -> tuple[ApiKeyPrincipal, ApiKeyInfo] | None:
        token = bearer_token(request._request)
        if token is None:
            return None
        row = ApiKey.objects.filter(key_hash=hash_key(token), is_active=True).only(*ApiKeyInfo.model_fields).first()
        info = None if row is None else ApiKeyInfo.from_model(row)
        if info is None or info.expired:
            raise exceptions.AuthenticationFailed("Incorrect, revoked or expired API key.")
        return ApiKeyPrincipal(info), info

    def authenticate_header(self, request: Any) -> str:
        return 'Bearer realm="llmops"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "llmops.auth.ApiKeyAuthentication"
    name = "GatewayApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "A key from `manage.py create_api_key NAME`."}
