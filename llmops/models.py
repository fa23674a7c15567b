from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction

PROMPT_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class Provider(models.TextChoices):
    OPENAI = "openai", "OpenAI or OpenAI-compatible"
    ANTHROPIC = "anthropic", "Anthropic"
    LOCAL = "local", "Local (llama.cpp, in process)"
    SIMULATED = "simulated", "Simulated (no network)"


# The gateway's own secrets: never sent to a provider as its key, whatever a setting lists.
GATEWAY_SECRET_ENVS = frozenset(
    name + suffix
    for name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
    for suffix in ("", "_FILE")
)


def provider_key_env_refusal(name: str) -> str | None:
    """Why `name` may not be a catalog entry's key variable, or None when it may: the value
    is sent to the model's host, so only variables that look like provider keys qualify,
    ending in _API_KEY or listed in LLMOPS_PROVIDER_KEY_ENVS; a gateway secret never does."""
    if name in GATEWAY_SECRET_ENVS:
        return f"{name} is one of the gateway's own secrets, never a provider key."
    if name.endswith("_API_KEY") or name in settings.LLMOPS_PROVIDER_KEY_ENVS:
        return None
    return (
        f"{name} does not look like a provider key: use a name ending in _API_KEY, "
        "or list it in LLMOPS_PROVIDER_KEY_ENVS."
    )


class ModelEndpoint(models.Model):
    """One model a client may name: where it runs, what it costs, how hard to push it."""

    name = models.SlugField(max_length=100, unique=True, help_text="The name clients send as `model`.")
    provider = models.CharField(max_length=20, choices=Provider.choices)
    upstream_model = models.CharField(
        max_length=200,
        blank=True,
        help_text="The provider's model id; for `local`, a GGUF path (blank: the bundled SmolLM2).",
    )
    base_url = models.URLField(blank=True, help_text="For OpenAI-compatible servers (vLLM, Ollama...).")
    api_key_env = models.CharField(
        max_length=100,
        blank=True,
        help_text="Environment variable holding the provider key (default OPENAI_API_KEY / ANTHROPIC_API_KEY).",
    )
    input_price_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    output_price_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    cached_input_price_per_mtok = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        default=0,
        help_text="Price of input tokens read from the provider's prompt cache.",
    )
    cache_write_price_per_mtok = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        default=0,
        help_text="Price of input tokens written to the provider's prompt cache.",
    )
    batch_discount = models.DecimalField(
        max_digits=4, decimal_places=3, default=0, help_text="Fraction off for batch jobs, e.g. 0.5 for half price."
    )
    prices_read_on = models.DateField(null=True, blank=True, help_text="When the prices were read from the provider.")
    context_window = models.PositiveIntegerField(default=8192)
    max_concurrency = models.PositiveIntegerField(
        default=64, help_text="Upstream calls held in flight at once, per gateway process (0: no limit)."
    )
    requests_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="The provider's requests-per-minute limit for this model, kept by every gateway process and "
        "batch worker together (blank: none).",
    )
    tokens_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="The provider's tokens-per-minute limit (input + output, as estimated before the call).",
    )
    simulation = models.JSONField(
        default=dict,
        blank=True,
        help_text="For `simulated`: latency_ms, ttft_ms, tokens_per_s, output_tokens, error_rate.",
    )
    fallbacks = models.CharField(
        max_length=1000,
        blank=True,
        help_text="Catalog models to try, in order, when this one fails or its breaker is open (comma-separated).",
    )
    latency_prior_ms = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Expected p95 latency, for routing under limits until enough requests were measured.",
    )
    quality_prior = models.FloatField(
        null=True,
        blank=True,
        help_text="Expected quality from 0 to 1, for routing under limits until an evaluation measured it.",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        refusal = provider_key_env_refusal(self.api_key_env) if self.api_key_env else None
        if refusal:
            raise ValidationError({"api_key_env": refusal})
        if self.batch_discount is not None and not (0 <= self.batch_discount <= 1):
            raise ValidationError({"batch_discount": "Must be between 0 and 1."})
        if self.provider != Provider.SIMULATED and self.simulation:
            raise ValidationError({"simulation": "Only simulated models take simulation settings."})
        if self.quality_prior is not None and not 0 <= self.quality_prior <= 1:
            raise ValidationError({"quality_prior": "Must be between 0 and 1."})
        names = self.fallback_names
        if self.name in names:
            raise ValidationError({"fallbacks": "A model cannot fall back to itself."})
        if len(set(names)) != len(names):
            raise ValidationError({"fallbacks": "Each fallback may appear only once."})
        known = set(ModelEndpoint.objects.filter(name__in=names).values_list("name", flat=True))
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValidationError({"fallbacks": f"Not in the catalog: {', '.join(unknown)}."})

    @property
    def fallback_names(self) -> list[str]:
        return [name.strip() for name in (self.fallbacks or "").split(",") if name.strip()]


class PromptTemplate(models.Model):
    """A named, versioned list of chat messages with {{variables}}."""

    name = models.SlugField(max_length=100)
    version = models.PositiveIntegerField(default=1)
    description = models.TextField(blank=True)
    messages = models.JSONField(help_text='A list of {"role": ..., "content": ...} with {{variable}} placeholders.')
    is_active = models.BooleanField(
        default=True, help_text="Requests naming only the prompt get its newest active version."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "-version"]
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="unique_prompt_version")]

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def variables(self) -> list[str]:
        found: list[str] = []
        for message in self.messages if isinstance(self.messages, list) else []:
            content = message.get("content", "") if isinstance(message, dict) else ""
            for name in PROMPT_VARIABLE.findall(content if isinstance(content, str) else ""):
                if name not in found:
                    found.append(name)
        return found

    def clean(self) -> None:
        if not isinstance(self.messages, list) or not self.messages:
            raise ValidationError({"messages": "Must be a non-empty list of messages."})
        for message in self.messages:
            if (
                not isinstance(message, dict)
                or message.get("role") not in ("system", "developer", "user", "assistant")
                or not isinstance(message.get("content"), str)
            ):
                raise ValidationError(
                    {
                        "messages": 'Each message needs a "role" (system, developer, user, assistant) '
                        'and a string "content".'
                    }
                )


class BudgetPeriod(models.TextChoices):
    DAY = "day", "per day (UTC)"
    MONTH = "month", "per month (UTC)"


class ApiKeyQuerySet(models.QuerySet):
    """Bulk changes to keys move the configuration version too, as `save()` does through its
    signal: `ApiKey.objects.filter(...).update(is_active=False)` must revoke in every process."""

    def update(self, **kwargs: Any) -> int:
        rows = super().update(**kwargs)
        if rows:
            # After the commit, or a process could reload the old rows under the new number.
            transaction.on_commit(config_version_bump, using=self.db)
        return rows

    update.alters_data = True  # type: ignore[attr-defined]

    def delete(self) -> tuple[int, dict[str, int]]:
        deleted = super().delete()
        if deleted[0]:
            transaction.on_commit(config_version_bump, using=self.db)
        return deleted

    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]

    def bulk_create(self, objs: Any, *args: Any, **kwargs: Any) -> list[ApiKey]:
        created = super().bulk_create(objs, *args, **kwargs)
        if created:
            transaction.on_commit(config_version_bump, using=self.db)
        return created


class ApiKey(models.Model):
    """A gateway key. Only its SHA-256 is stored; the prefix lets staff tell keys apart."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    is_active = models.BooleanField(default=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="After this the key is refused (blank: never).")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="Blank: no limit.")
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Input and output tokens per minute. Blank: no limit."
    )
    budget_usd = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Spend allowed per budget period. Blank: none.",
    )
    budget_period = models.CharField(max_length=10, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class ConfigVersion(models.Model):
    """One row whose number moves on every committed change to the catalog, prompts or
    keys: how processes that cache them learn of a change made elsewhere."""

    SINGLETON = 1

    version = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"configuration version {self.version}"


def config_version_bump() -> None:
    """Move the shared configuration version: every process reloads its snapshots."""
    if not ConfigVersion.objects.filter(pk=ConfigVersion.SINGLETON).update(version=models.F("version") + 1):
        ConfigVersion.objects.get_or_create(pk=ConfigVersion.SINGLETON, defaults={"version": 1})


# The batch models live in their own module; Django finds them here.
from llmops.batches.models import Batch, BatchFile, BatchItem, FilePart  # noqa: E402

__all__ = [
    "ApiKey",
    "Batch",
    "BatchFile",
    "BatchItem",
    "ConfigVersion",
    "FilePart",
    "ModelEndpoint",
    "PromptTemplate",
    "Provider",
]
