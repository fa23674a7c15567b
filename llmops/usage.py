"""Token usage: what a provider reports for one call. Shared by every app (caching,
monitoring, routing), so it imports nothing of theirs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # input tokens read from the provider's prompt cache
    cache_write_tokens: int = 0  # input tokens written to the provider's prompt cache


def estimate_tokens(text: str) -> int:
    """Rough count for providers that report none (about four characters a token)."""
    return max(1, (len(text) + 3) // 4) if text else 0
