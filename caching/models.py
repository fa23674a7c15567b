from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models


class CachePolicy(models.Model):
    """How answers to one model (or to every model) are cached.

    The policy for a request is the most specific match: a policy naming the model exactly,
    then the longest matching pattern (`gpt-*`), then the default (empty pattern)."""

    class Scope(models.TextChoices):
        API_KEY = "api_key", "per API key (tenants never share answers)"
        SHARED = "shared", "shared by every key"

    class Normalisation(models.TextChoices):
        WHITESPACE = "whitespace", "collapse whitespace"
        LOWERCASE = "lowercase", "collapse whitespace and lower-case (changes meaning for code and names)"
        NONE = "none", "exact text"

    name = models.SlugField(max_length=100, unique=True)
    model_pattern = models.CharField(
        max_length=200, blank=True, help_text="A model name, a pattern such as gpt-*, or empty for every model."
    )
    enabled = models.BooleanField(default=True, help_text="The answer cache on or off (prompt caching is separate).")
    ttl_seconds = models.PositiveIntegerField(default=3600, help_text="How long an answer stays cached.")
    scope = models.CharField(max_length=20, choices=Scope.choices, default=Scope.API_KEY)
    normalisation = models.CharField(max_length=20, choices=Normalisation.choices, default=Normalisation.WHITESPACE)
    max_temperature = models.FloatField(
        default=1.0, help_text="Requests sampling hotter than this are not cached (their answers are meant to vary)."
    )
    cache_above_max_temperature = models.BooleanField(default=False)
    semantic = models.BooleanField(default=False, help_text="Also answer close paraphrases of earlier requests.")
    similarity_threshold = models.FloatField(
        default=0.96,
        help_text="Cosine similarity a paraphrase must reach (0.96: precision 0.97 on MRPC, "
        "see benchmarks.semantic_threshold).",
    )
    embedder = models.CharField(
        max_length=200, blank=True, help_text="'local' (all-MiniLM-L6-v2 on the CPU) or a catalog embeddings model."
    )
    prompt_caching = models.BooleanField(
        default=False, help_text="Ask providers to cache static prefixes (Anthropic cache_control)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "cache policies"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not 0 < self.similarity_threshold <= 1:
            raise ValidationError({"similarity_threshold": "Must be above 0 and at most 1."})


class CacheEntry(models.Model):
    """The record of one cached answer. The answer is served from the hot layer (Redis or
    local memory); this row lets staff see, search, expire and purge it, and keeps the
    semantic cache's vector so a restart loses nothing."""

    key_hash = models.CharField(max_length=64, unique=True)
    model = models.CharField(max_length=200, db_index=True)
    scope = models.CharField(max_length=40, db_index=True, help_text="key:<id> or shared")
    prompt = models.CharField(max_length=120, blank=True, db_index=True, help_text="name@version")
    group = models.CharField(max_length=64, db_index=True, help_text="Requests that differ only in their last turn")
    query = models.TextField(help_text="The last user turn, normalised")
    response = models.JSONField()
    cost_usd = models.DecimalField(max_digits=18, decimal_places=10, default=0, help_text="What the answer cost")
    embedding = models.BinaryField(null=True, blank=True)
    embedder = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(db_index=True)
    expires_at = models.DateTimeField(db_index=True)
    hit_count = models.PositiveIntegerField(default=0)
    cost_saved_usd = models.DecimalField(max_digits=18, decimal_places=10, default=0)
    last_hit_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "cache entries"

    def __str__(self) -> str:
        return f"{self.model}: {self.query[:60]}"
