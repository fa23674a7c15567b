"""A part requests can do without (the answer cache's hot layer, the semantic embedder, the
Redis behind key limits and circuit breakers): when it fails, requests go on without it.

Its errors are counted and logged at most once a minute (the exception's type only: a
Redis error may quote its URL, password included), and after one it is skipped for
LLMOPS_CACHE_RETRY_AFTER_S; then a single request tries it again while the others keep
skipping it until that one has succeeded."""

from __future__ import annotations

import logging
import time

from django.conf import settings

LOG_EVERY_S = 60.0


class FailOpen:
    def __init__(self, failure: str, meanwhile: str, logger: logging.Logger) -> None:
        """`failure` says what failed ("Key limits could not reach Redis"), `meanwhile`
        what requests do instead ("requests are admitted unchecked")."""
        self.failure = failure
        self.meanwhile = meanwhile
        self.logger = logger
        self.errors = 0
        self.bypassed = 0
        self.down_until = 0.0
        self.last_logged = 0.0

    def usable(self) -> bool:
        now = time.monotonic()
        if now < self.down_until:
            self.bypassed += 1
            return False
        if self.down_until:
            # Recovering: this request probes; the others skip until it has succeeded.
            self.down_until = now + settings.LLMOPS_CACHE_RETRY_AFTER_S
        return True

    def succeeded(self) -> None:
        self.down_until = 0.0

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.errors += 1
        self.down_until = now + settings.LLMOPS_CACHE_RETRY_AFTER_S
        if now - self.last_logged >= LOG_EVERY_S:
            self.last_logged = now
            self.logger.warning(
                "%s (%s); %s. %d errors so far.", self.failure, type(exc).__name__, self.meanwhile, self.errors
            )

    def reset(self) -> None:
        self.errors = self.bypassed = 0
        self.down_until = self.last_logged = 0.0
