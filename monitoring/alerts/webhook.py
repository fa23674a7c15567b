"""The alerts' webhook: every alert opened or resolved is POSTed as JSON to
LLMOPS_ALERT_WEBHOOK_URL. The address comes from the environment only: one typed into the
admin could make the gateway call its own internal hosts. With LLMOPS_ALERT_WEBHOOK_SECRET
the body is signed, as GitHub signs its webhooks: the header X-Llmops-Signature-256 is
`sha256=` and the hex HMAC-SHA256 of the raw body under the secret; the body's `sent_at` lets
a receiver refuse an old one replayed. A failed call is logged (with the address's scheme,
host and port alone: its path and query often hold a token) and recorded on the alert, never
raised: the next alert is still checked and sent."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from urllib.parse import urlsplit

import httpx2
from django.conf import settings
from django.utils import timezone

from monitoring.alerts.selectors import alert_dump
from monitoring.models import Alert

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Llmops-Signature-256"


def webhook_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _where(url: str) -> str:
    """The address without what may be secret in it: no user, password, path or query."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or '?'}{port}"
    except ValueError:
        return "(an address that cannot be read)"


def alert_notify(alert: Alert, event: str) -> str:
    """POST `alert.<event>` (opened, resolved) to the webhook, if one is set; returns and
    records how it went."""
    url = settings.LLMOPS_ALERT_WEBHOOK_URL
    if not url:
        return ""
    sent_at = timezone.now()
    body = json.dumps(
        {"event": f"alert.{event}", "sent_at": sent_at.isoformat(), "alert": alert_dump(alert)},
        separators=(",", ":"),
    ).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "llmops-alerts"}
    if settings.LLMOPS_ALERT_WEBHOOK_SECRET:
        headers[SIGNATURE_HEADER] = webhook_signature(settings.LLMOPS_ALERT_WEBHOOK_SECRET, body)
    try:
        response = httpx2.post(
            url, content=body, headers=headers, timeout=settings.LLMOPS_ALERT_WEBHOOK_TIMEOUT_S, follow_redirects=False
        )
        outcome = f"{event}: HTTP {response.status_code}"
        if not response.is_success:
            logger.warning(
                "The alert webhook at %s answered %s to alert %s", _where(url), response.status_code, alert.pk
            )
    except Exception as error:
        # Only the error's type: an HTTP library's message may quote the whole address.
        outcome = f"{event}: failed ({type(error).__name__})"
        logger.warning("The alert webhook at %s failed for alert %s: %s", _where(url), alert.pk, type(error).__name__)
    Alert.objects.filter(pk=alert.pk).update(notified_at=sent_at, notify_outcome=outcome[:200])
    alert.notified_at, alert.notify_outcome = sent_at, outcome[:200]
    return outcome
