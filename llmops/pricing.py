"""Cost of an answer, from the catalog's prices and the provider's reported usage."""

from __future__ import annotations

from decimal import Decimal

from llmops.catalog import EndpointConfig
from llmops.usage import Usage

PER_TOKEN = Decimal(1_000_000)
ZERO = Decimal(0)


def cost_usd(endpoint: EndpointConfig, usage: Usage, *, batch: bool = False) -> Decimal:
    """`usage.input_tokens` counts every input token, cached and cache-written ones included;
    each token is priced once, at the rate of what happened to it."""
    cached = min(usage.cached_tokens, usage.input_tokens)
    written = min(usage.cache_write_tokens, usage.input_tokens - cached)
    uncached = usage.input_tokens - cached - written
    total = (
        uncached * endpoint.input_price_per_mtok
        + cached * endpoint.cached_input_price_per_mtok
        + written * endpoint.cache_write_price_per_mtok
        + usage.output_tokens * endpoint.output_price_per_mtok
    ) / PER_TOKEN
    if batch and endpoint.batch_discount:
        total *= 1 - endpoint.batch_discount
    return total.quantize(Decimal("0.0000000001")) if total else ZERO
