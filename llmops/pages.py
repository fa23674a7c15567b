"""The built-in pages for staff: the chat playground."""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from llmops.models import ModelEndpoint


@staff_member_required
def playground(request: HttpRequest) -> HttpResponse:
    models = ModelEndpoint.objects.filter(enabled=True).order_by("name").values_list("name", "provider")
    return render(request, "llmops/playground.html", {"models": list(models)})
