"""Cache policies as the hot path sees them: frozen rows in this app's own configuration
snapshot (llmops.config), reloaded when a policy changes."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from caching.models import CachePolicy
from llmops.config import ConfigSnapshot, config_watch


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    name: str
    model_pattern: str
    enabled: bool
    ttl_seconds: int
    scope: str
    normalisation: str
    max_temperature: float
    cache_above_max_temperature: bool
    semantic: bool
    similarity_threshold: float
    embedder: str
    prompt_caching: bool

    @classmethod
    def from_model(cls, row: CachePolicy) -> PolicyConfig:
        return cls(
            name=row.name,
            model_pattern=row.model_pattern,
            enabled=row.enabled,
            ttl_seconds=row.ttl_seconds,
            scope=row.scope,
            normalisation=row.normalisation,
            max_temperature=row.max_temperature,
            cache_above_max_temperature=row.cache_above_max_temperature,
            semantic=row.semantic,
            similarity_threshold=row.similarity_threshold,
            embedder=row.embedder,
            prompt_caching=row.prompt_caching,
        )


def policy_match(policies: list[PolicyConfig], model: str) -> PolicyConfig | None:
    """The most specific policy for a model: its own name, then the longest matching
    pattern, then the default (empty pattern). A disabled match still wins: it turns
    caching off for that model."""
    best: PolicyConfig | None = None
    best_rank: tuple[int, int] = (-1, -1)
    for policy in policies:
        pattern = policy.model_pattern
        if pattern == model:
            rank = (2, len(pattern))
        elif pattern and fnmatch.fnmatchcase(model, pattern):
            rank = (1, len(pattern))
        elif not pattern:
            rank = (0, 0)
        else:
            continue
        if rank > best_rank:
            best, best_rank = policy, rank
    return best


def _load() -> list[PolicyConfig]:
    return [PolicyConfig.from_model(row) for row in CachePolicy.objects.all()]


_snapshot = ConfigSnapshot(_load)


async def policy_get(model: str) -> PolicyConfig | None:
    """The policy that applies to a catalog model, or None."""
    return policy_match(await _snapshot.get(), model)


def connect_invalidation() -> None:
    config_watch(CachePolicy)
