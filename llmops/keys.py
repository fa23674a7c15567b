"""Changing gateway keys: limits, budget, expiry, revocation.

A change is saved on the row, and its signal moves the configuration version once the
transaction commits: this process drops its snapshot at once, every other one reloads
within LLMOPS_CONFIG_TTL_S (bulk `ApiKey.objects...update()` does the same, see
ApiKeyQuerySet). Keys are made by `llmops.auth.api_key_create`, which returns the raw key
once."""

from __future__ import annotations

from typing import Any

from llmops.models import ApiKey

# The hash and prefix identify the key itself: never edited, a new key is made instead.
# In the order the admin shows them.
EDITABLE_FIELDS = (
    "name",
    "owner",
    "is_active",
    "expires_at",
    "requests_per_minute",
    "tokens_per_minute",
    "budget_usd",
    "budget_period",
)


def api_key_update(*, key: ApiKey, **fields: Any) -> ApiKey:
    """Set `fields` on the key and save them; raises ValidationError on a bad value."""
    unknown = set(fields).difference(EDITABLE_FIELDS)
    if unknown:
        raise TypeError(f"Not an editable API key field: {', '.join(sorted(unknown))}")
    if not fields:
        return key
    for name, value in fields.items():
        setattr(key, name, value)
    key.full_clean(validate_unique=False)
    key.save(update_fields=sorted(fields))
    return key


def api_key_revoke(*, key: ApiKey) -> ApiKey:
    """Refuse the key from now on, in every process within LLMOPS_CONFIG_TTL_S."""
    return api_key_update(key=key, is_active=False)
