from django.contrib import admin
from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from caching.api import CacheStatsView
from llmops.api.views import ChatCompletionsView, ModelDetailView, ModelListView, api_path_not_found
from llmops.batches.api import (
    BatchCancelView,
    BatchDetailView,
    BatchesView,
    FileContentView,
    FileDetailView,
    FilesView,
)
from llmops.batches.pages import batches_page
from llmops.dashboard import dashboard_page
from llmops.health import healthz
from llmops.pages import playground
from monitoring.api import MetricsModelsView, MetricsSummaryView, MetricsTimeseriesView
from monitoring.views import metrics
from routing.api import ParetoView, RoutePreviewView

urlpatterns = [
    path("", playground, name="playground"),
    # Not "batches": that name is the API's list of batches (v1/batches) below.
    path("batches/", batches_page, name="batches-page"),
    path("dashboard/", dashboard_page, name="dashboard"),
    path("v1/chat/completions", ChatCompletionsView.as_view(), name="chat-completions"),
    path("v1/models", ModelListView.as_view(), name="models"),
    path("v1/models/<path:model>", ModelDetailView.as_view(), name="model-detail"),
    path("v1/files", FilesView.as_view(), name="files"),
    path("v1/files/<str:file_id>", FileDetailView.as_view(), name="file-detail"),
    path("v1/files/<str:file_id>/content", FileContentView.as_view(), name="file-content"),
    path("v1/batches", BatchesView.as_view(), name="batches"),
    path("v1/batches/<str:batch_id>", BatchDetailView.as_view(), name="batch-detail"),
    path("v1/batches/<str:batch_id>/cancel", BatchCancelView.as_view(), name="batch-cancel"),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
    path("api/cache/stats", CacheStatsView.as_view(), name="cache-stats"),
    path("api/metrics/summary", MetricsSummaryView.as_view(), name="metrics-summary"),
    path("api/metrics/timeseries", MetricsTimeseriesView.as_view(), name="metrics-timeseries"),
    path("api/metrics/models", MetricsModelsView.as_view(), name="metrics-models"),
    path("api/routing/preview", RoutePreviewView.as_view(), name="routing-preview"),
    path("api/routing/pareto", ParetoView.as_view(), name="routing-pareto"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("admin/", admin.site.urls),
    # Last: anything else under the API's prefixes is a JSON 404, whatever the method.
    re_path(r"^(?:v1|api)/", api_path_not_found, name="api-not-found"),
]
