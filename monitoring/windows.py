"""Time windows of the metric reads: `window=15m|24h|7d` ending now, or `start`/`end`, on
whole minutes (the finest rollup), inside what is kept."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.utils import timezone

from llmops.errors import InvalidRequest

# At most 9999 seconds, minutes or hours, or 999 days.
WINDOW_PATTERN = r"\A(?:[1-9]\d{0,3}[smh]|[1-9]\d{0,2}d)\Z"
_WINDOW = re.compile(WINDOW_PATTERN)
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MINUTE = 60


def window_seconds(text: str | None, *, default_s: float = 24 * 3600.0, param: str = "window") -> float:
    """`15m`, `24h`, `7d` (or seconds as `900s`) -> seconds."""
    if not text:
        return default_s
    if not _WINDOW.match(text):
        raise InvalidRequest("window must be like 15m, 24h or 7d (a whole number of s, m, h or d).", param=param)
    return float(int(text[:-1]) * UNIT_S[text[-1]])


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def dump(self) -> dict[str, object]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "seconds": int(self.seconds)}


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def window_resolve(
    *,
    window: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    now: datetime | None = None,
) -> Window:
    """The window asked for, widened to whole minutes; the current minute is included."""
    now = now or timezone.now()
    if window and (start or end):
        raise InvalidRequest("Give either window or start (and end), not both.", param="window")
    if start or end:
        if not start:
            raise InvalidRequest("end needs a start.", param="start")
        first = _epoch(start)
        last = _epoch(end) if end else _epoch(now)
        if last <= first:
            raise InvalidRequest("end must be after start.", param="end")
        first -= first % MINUTE
        last = -(-last // MINUTE) * MINUTE
    else:
        length = int(window_seconds(window))
        last = _epoch(now)
        last = last - last % MINUTE + MINUTE  # to the end of the current minute
        first = last - -(-length // MINUTE) * MINUTE
    kept_since = _epoch(now) - settings.LLMOPS_METRICS_RETENTION_DAYS * 86400
    if first < kept_since - MINUTE:
        raise InvalidRequest(
            f"The window starts before the {settings.LLMOPS_METRICS_RETENTION_DAYS} days that metrics are kept "
            "(LLMOPS_METRICS_RETENTION_DAYS): ask for a later start or a shorter window.",
            param="start" if start else "window",
            code="window_beyond_retention",
        )
    return Window(start=_at(first), end=_at(last))


Block = tuple[int, datetime, datetime]


def window_blocks(window: Window, resolutions: tuple[int, ...] = (86400, 3600, 60)) -> list[Block]:
    """The window cut into the fewest whole days, hours and minutes: (resolution, first
    start, end) ranges whose rollups together cover it exactly once."""
    blocks: list[tuple[int, int, int]] = []

    def cut(first: int, last: int, level: int) -> None:
        if first >= last:
            return
        size = resolutions[level]
        if level == len(resolutions) - 1:
            blocks.append((size, first, last))
            return
        inner_first = -(-first // size) * size
        inner_last = last - last % size
        if inner_first >= inner_last:
            cut(first, last, level + 1)
            return
        cut(first, inner_first, level + 1)
        blocks.append((size, inner_first, inner_last))
        cut(inner_last, last, level + 1)

    cut(_epoch(window.start), _epoch(window.end), 0)
    return [(size, _at(first), _at(last)) for size, first, last in blocks]


def window_step(window: Window) -> int:
    """The time series' step: a minute up to 6 hours, an hour up to 8 days, else a day."""
    if window.seconds <= 6 * 3600:
        return 60
    if window.seconds <= 8 * 86400:
        return 3600
    return 86400
