"""The built-in pages for staff: the chat playground."""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from llmops.models import ModelEndpoint
from llmops.providers import local as local_provider


@staff_member_required
def playground(request: HttpRequest) -> HttpResponse:
    models = list(ModelEndpoint.objects.filter(enabled=True).order_by("name").values_list("name", "provider"))
    # A local model with no runtime (llama-cpp-python not built) stays listed, marked.
    unavailable = {name for name, provider in models if provider == "local"} if local_provider.unavailable() else set()
    return render(request, "llmops/playground.html", {"models": models, "unavailable": unavailable})
