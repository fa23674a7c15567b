"""A cascade's threshold fitted offline from the measured per-row answers."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class FitRow:
    """One row as the fit sees it: the first step's score and checks (from the route's run),
    and the cheap and strong models' own answers (from their runs)."""

    score: float | None  # None: the first step gave no score (it failed)
    checks: dict[str, float]
    cheap_correct: bool
    cheap_cost: Decimal
    strong_correct: bool
    strong_cost: Decimal


@dataclass(frozen=True, slots=True)
class Computed:
    threshold: float | None
    accuracy: float
    cost: Decimal
    escalation_rate: float


def cascade_computed(rows: list[FitRow], escalates: Callable[[FitRow], bool]) -> Computed:
    """The cascade's accuracy and cost offline: the cheap answer where kept, the strong one
    (paid for on top) where escalated."""
    correct, cost, escalated = 0, Decimal(0), 0
    for row in rows:
        if escalates(row):
            escalated += 1
            correct += row.strong_correct
            cost += row.cheap_cost + row.strong_cost
        else:
            correct += row.cheap_correct
            cost += row.cheap_cost
    return Computed(None, correct / len(rows), cost, escalated / len(rows))


def threshold_candidates(scores: list[float]) -> list[float]:
    """0 (keep every answer), then one threshold between each two distinct scores (as a
    threshold at the higher one, but safe from the 4-digit rounding of reported scores),
    then just above the highest (escalate every answer) when that is not above 1."""
    distinct = sorted(set(scores))
    found = [0.0] + [round((low + high) / 2, 6) for low, high in itertools.pairwise(distinct)]
    if distinct and distinct[-1] < 1:
        found.append(round(min(1.0, distinct[-1] + 1e-4), 6))
    return sorted(set(found))


def threshold_fit(*, rows: list[FitRow], target_accuracy: float) -> tuple[Computed, bool]:
    """The lowest-cost threshold whose accuracy reaches the target (ties: the more accurate,
    then the lower threshold); when none does, the most accurate. Returns it, and whether
    it reached the target."""
    options = []
    for threshold in threshold_candidates([row.score for row in rows if row.score is not None]):
        found = cascade_computed(rows, lambda row, t=threshold: row.score is None or row.score < t)
        options.append(Computed(threshold, found.accuracy, found.cost, found.escalation_rate))
    meeting = [option for option in options if option.accuracy >= target_accuracy - 1e-12]
    if meeting:
        return min(meeting, key=lambda o: (o.cost, -o.accuracy, o.threshold)), True
    return max(options, key=lambda o: (o.accuracy, -o.cost, -(o.threshold or 0))), False
