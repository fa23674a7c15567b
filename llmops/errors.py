"""One error shape for every answer: OpenAI's `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import logging
import re
from typing import Any

from django.http import JsonResponse
from django.views.debug import SafeExceptionReporterFilter
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    status = 400
    error_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status is not None:
            self.status = status
        if error_type is not None:
            self.error_type = error_type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, param=self.param, code=self.code)


class InvalidRequest(GatewayError):
    pass


class AuthenticationFailed(GatewayError):
    status = 401
    error_type = "authentication_error"


class NotFound(GatewayError):
    status = 404
    error_type = "not_found_error"


def error_body(message: str, error_type: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class ErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField(help_text="invalid_request_error, authentication_error, not_found_error, ...")
    param = serializers.CharField(allow_null=True, help_text="The request field at fault, if one is.")
    code = serializers.CharField(allow_null=True)


class ErrorSerializer(serializers.Serializer):
    """The error body, for the OpenAPI document: what `error_body` returns."""

    error = ErrorDetailSerializer()


def error_response(error: GatewayError) -> JsonResponse:
    response = JsonResponse(error.body(), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    return response


def first_validation_error(detail: Any, path: str = "") -> tuple[str, str]:
    """Flatten DRF's nested validation errors to the first (param, message)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == "non_field_errors":
                sub = path
            elif isinstance(key, int) or str(key).isdigit():
                sub = f"{path}[{key}]"  # an item of a list field
            else:
                sub = f"{path}.{key}" if path else str(key)
            return first_validation_error(value, sub)
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)):
                return first_validation_error(value, f"{path}[{index}]")
            return path, str(value)
    return path, str(detail)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's exception handler, answering in OpenAI's error shape."""
    if isinstance(exc, GatewayError):
        return Response(exc.body(), status=exc.status, headers=exc.headers)
    if isinstance(exc, drf_exceptions.ValidationError):
        param, message = first_validation_error(exc.detail)
        text = f"{param}: {message}" if param else message
        return Response(error_body(text, "invalid_request_error", param=param or None), status=400)
    if isinstance(exc, drf_exceptions.ParseError):
        return Response(error_body(f"The body is not valid JSON: {exc.detail}", "invalid_request_error"), status=400)
    if isinstance(exc, (drf_exceptions.NotAuthenticated, drf_exceptions.AuthenticationFailed)):
        return Response(
            error_body(str(exc.detail), "authentication_error", code="invalid_api_key"),
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="llmops"'},
        )
    if isinstance(exc, drf_exceptions.APIException):
        return Response(
            error_body(str(exc.detail), "invalid_request_error", code=exc.default_code), status=exc.status_code
        )
    logger.exception("Unhandled error in API view")
    return Response(error_body("The gateway failed to handle this request.", "server_error"), status=500)


class SecretsHiddenFilter(SafeExceptionReporterFilter):
    """Django's debug pages and error mails, hiding also every setting that is an address
    (DATABASE_URL, REDIS_URL, the alert webhook's): addresses carry passwords and tokens."""

    hidden_settings = re.compile("API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|WEBHOOK", flags=re.I)
