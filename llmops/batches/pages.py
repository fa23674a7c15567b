"""The batches page for staff: every key's batches with their progress, drawn here, then kept
current over the socket at ws/batches (llmops.batches.consumers). The page's script formats
live rows as `row_display` formats these: change one, change the other."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from llmops.batches.selectors import PAGE_ROWS, batches_recent

MICRODOLLARS = Decimal("0.000001")  # items cost fractions of a cent: six places show them


def usd(amount: str | None) -> str | None:
    return None if amount is None else str(Decimal(amount).quantize(MICRODOLLARS, rounding=ROUND_HALF_UP))


def time_left(eta_s: float | None) -> str:
    if eta_s is None:
        return "—"
    seconds = math.ceil(eta_s)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def row_display(row: dict[str, Any]) -> dict[str, Any]:
    done = row["completed"] + row["failed"]
    return {
        **row,
        "done": done,
        "model": row["model"] or "—",
        "percent": done * 100 // row["total"] if row["total"] else 0,
        "cost": usd(row["cost_usd"]),
        "estimate": usd(row["estimated_cost_usd"]),
        "time_left": time_left(row["eta_s"]),
    }


@staff_member_required
def batches_page(request: HttpRequest) -> HttpResponse:
    rows = [row_display(row) for row in batches_recent()]
    return render(request, "llmops/batches.html", {"rows": rows, "max_rows": PAGE_ROWS})
