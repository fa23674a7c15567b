"""GET /api/cache/stats: for an API key, its own requests; for staff, everyone's."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from caching.selectors import cache_stats
from llmops.auth import ApiKeyAuthentication, ApiKeyPrincipal


class KeyOrStaff(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return isinstance(user, ApiKeyPrincipal) or bool(user and user.is_authenticated and user.is_staff)


class CacheStatsView(APIView):
    authentication_classes = [ApiKeyAuthentication, SessionAuthentication]
    permission_classes = [KeyOrStaff]

    class InputSerializer(serializers.Serializer):
        hours = serializers.IntegerField(required=False, min_value=1, max_value=24 * 366)

    @extend_schema(
        operation_id="cache_stats",
        summary="Answer cache hits, misses, hit rate and dollars saved, overall and per model",
        parameters=[OpenApiParameter("hours", int, description="Only the last N hours (default: all time)")],
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request) -> Response:
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        hours = params.validated_data.get("hours")
        since = timezone.now() - timedelta(hours=hours) if hours else None
        api_key_id = request.auth.id if isinstance(request.user, ApiKeyPrincipal) else None
        return Response(cache_stats(api_key_id=api_key_id, since=since))
