"""GET /api/cache/stats: for an API key, its own requests; for staff, everyone's."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from caching.selectors import cache_stats
from llmops.api.openapi import ERROR_HEADERS, error_responses
from llmops.auth import ApiKeyAuthentication, ApiKeyPrincipal, KeyOrStaff


class CacheFiguresSerializer(serializers.Serializer):
    hits = serializers.IntegerField()
    semantic_hits = serializers.IntegerField()
    misses = serializers.IntegerField()
    hit_rate = serializers.FloatField(help_text="Hits (exact and semantic) over lookups; 0 when there were none.")
    saved_usd = serializers.CharField(help_text="US dollars that cache hits saved, as plain digits.")


class ModelCacheFiguresSerializer(CacheFiguresSerializer):
    model = serializers.CharField()


class CacheStatsSerializer(serializers.Serializer):
    """What `cache_stats` returns, for the OpenAPI document."""

    overall = CacheFiguresSerializer()
    models = ModelCacheFiguresSerializer(many=True)


class CacheStatsView(APIView):
    authentication_classes = [ApiKeyAuthentication, SessionAuthentication]
    permission_classes = [KeyOrStaff]

    class InputSerializer(serializers.Serializer):
        hours = serializers.IntegerField(
            required=False, min_value=1, max_value=24 * 366, help_text="Only the last N hours (default: all time)."
        )

    @extend_schema(
        operation_id="cache_stats",
        summary="Answer cache hits, misses, hit rate and dollars saved, overall and per model",
        description="For an API key, its own requests; for a signed-in staff member, everyone's.",
        parameters=[InputSerializer, *ERROR_HEADERS],
        responses={
            200: CacheStatsSerializer,
            **error_responses(
                400, 401, 403, 405, 500, e400="`hours` is not one whole number from 1 to 8784 (366 days)."
            ),
        },
    )
    def get(self, request: Request) -> Response:
        # A plain dict, not the QueryDict: DRF would read the last of repeated values and
        # take an empty one for no value at all, where the schema says one integer.
        query = request.query_params
        repeated = [name for name in query if len(query.getlist(name)) > 1]
        if repeated:
            raise serializers.ValidationError({repeated[0]: "Give it once."})
        params = self.InputSerializer(data=query.dict())
        params.is_valid(raise_exception=True)
        hours = params.validated_data.get("hours")
        since = timezone.now() - timedelta(hours=hours) if hours else None
        api_key_id = request.auth.id if isinstance(request.user, ApiKeyPrincipal) else None
        return Response(cache_stats(api_key_id=api_key_id, since=since))
