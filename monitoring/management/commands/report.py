"""`manage.py report --window 24h [--model M]`: the metrics summary as a table in the terminal."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from llmops.errors import GatewayError
from monitoring.figures import metrics_models, metrics_summary, series_filter
from monitoring.windows import window_resolve


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def _usd(text: str | None) -> str:
    return "-" if text is None else f"${Decimal(text):,.6f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _average_usd(figures: dict[str, Any]) -> str:
    per_1k = figures["cost_per_1k_requests_usd"]
    return "-" if per_1k is None else _usd(str(Decimal(per_1k) / 1000))


class Command(BaseCommand):
    help = "Print a window's requests, latency percentiles, cost, cache hit rate and savings, and requests per model."

    def add_arguments(self, parser):
        parser.add_argument("--window", default="24h", help="15m, 24h (the default), 7d: ending now.")
        parser.add_argument("--model", help="Only requests that named this model (or route).")

    def handle(self, *args: Any, window: str, model: str | None, **options: Any) -> None:
        try:
            span = window_resolve(window=window)
        except GatewayError as error:
            raise CommandError(error.message) from None
        where = series_filter({"model": model} if model else {}, api_key_id=None)
        summary = metrics_summary(window=span, where=where)
        title = f"llmops, {span.start:%Y-%m-%d %H:%M} to {span.end:%Y-%m-%d %H:%M} UTC"
        if model:
            title += f", model {model}"
        self.stdout.write(title)
        if not summary["requests"]:
            self.stdout.write("No requests in this window.")
            return
        latency, cache = summary["latency_ms"], summary["cache"]
        lines = [
            ("Total queries", f"{summary['requests']:,}"),
            ("Errors", f"{summary['errors']:,} ({_share(summary['error_rate'])})"),
            ("Latency p50", _ms(latency["p50"])),
            ("Latency p95", _ms(latency["p95"])),
            ("Latency p99", _ms(latency["p99"])),
            ("Time to first token p95", _ms(summary["ttft_ms"]["p95"])),
            ("Total cost", _usd(summary["cost_usd"])),
            ("Average cost per query", _average_usd(summary)),
            (
                "Cache hit rate",
                f"{_share(cache['hit_rate'])} (exact {_share(cache['exact_hit_rate'])}, "
                f"semantic {_share(cache['semantic_hit_rate'])})",
            ),
            ("Saved by the cache", _usd(cache["saved_usd"])),
        ]
        width = max(len(name) for name, _ in lines)
        for name, value in lines:
            self.stdout.write(f"  {name:<{width}}  {value}")
        rows = metrics_models(window=span, where=where)
        table = [("Model", "Queries", "p50", "p95", "Cost", "Hit rate")] + [
            (
                row["model"] or "(none)",
                f"{row['requests']:,}",
                _ms(row["latency_ms"]["p50"]),
                _ms(row["latency_ms"]["p95"]),
                _usd(row["cost_usd"]),
                _share(row["cache"]["hit_rate"]),
            )
            for row in rows
        ]
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        self.stdout.write("")
        for index, line in enumerate(table):
            cells = [line[0].ljust(widths[0])] + [cell.rjust(widths[i]) for i, cell in enumerate(line) if i]
            self.stdout.write("  " + "  ".join(cells))
            if index == 0:
                self.stdout.write("  " + "  ".join("-" * w for w in widths))
