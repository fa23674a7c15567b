"""A labelled TSV dataset, checked before anything runs."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from llmops.models import ModelEndpoint
from routing.models import missing_or_disabled, names_parsed

TEXT_COLUMNS = ("text", "sentence")
BAD_LINES_SHOWN = 20


class EvaluationError(Exception):
    """Bad input to an evaluation; the message names what to fix."""


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    text: str
    label: str


def labels_map_parsed(text: str) -> dict[str, str]:
    """`0=negative,1=positive` -> {"0": "negative", "1": "positive"}."""
    found: dict[str, str] = {}
    for part in names_parsed(text):
        raw, sep, label = part.partition("=")
        if not sep or not raw.strip() or not label.strip():
            raise EvaluationError(f"--labels {part!r}: write RAW=LABEL pairs, e.g. 0=negative,1=positive.")
        if raw.strip() in found:
            raise EvaluationError(f"--labels names {raw.strip()!r} twice.")
        found[raw.strip()] = label.strip()
    if not found:
        raise EvaluationError("--labels is empty: write RAW=LABEL pairs, e.g. 0=negative,1=positive.")
    return found


def stand_ins_parsed(items: list[str]) -> dict[str, float]:
    """`["sim-large=0.95"]` -> {"sim-large": 0.95}; each must be an enabled simulated model."""
    found: dict[str, float] = {}
    for item in items:
        model, sep, value = item.partition("=")
        try:
            accuracy = float(value) if sep else None
        except ValueError:
            accuracy = None
        if not model.strip() or accuracy is None or not 0 <= accuracy <= 1:
            raise EvaluationError(f"--stand-in {item!r}: write MODEL=ACCURACY with an accuracy from 0 to 1.")
        found[model.strip()] = accuracy
    problem = missing_or_disabled(list(found))
    if problem:
        raise EvaluationError(f"--stand-in: {problem}")
    real = ModelEndpoint.objects.filter(name__in=found).exclude(provider="simulated").values_list("name", flat=True)
    if real:
        raise EvaluationError(f"--stand-in: only a simulated model can stand in; {', '.join(real)} is not one.")
    return found


def dataset_read(
    *, path: Path, text_column: str | None = None, label_column: str = "label", labels: dict[str, str] | None = None
) -> list[Row]:
    """Every row of a TSV file with a header; raises EvaluationError listing the bad lines."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            lines = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    except FileNotFoundError:
        raise EvaluationError(f"There is no dataset file {path}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"The dataset {path} cannot be read as UTF-8 text: {exc}.") from None
    if not lines:
        raise EvaluationError(f"The dataset {path} is empty: it needs a header line and rows.")
    header = [name.strip() for name in lines[0]]
    if text_column is None:
        text_column = next((name for name in header if name.lower() in TEXT_COLUMNS), None)
        if text_column is None:
            raise EvaluationError(f"No text or sentence column in {header}: name one with --text-column.")
    for option, name in (("--text-column", text_column), ("--label-column", label_column)):
        if name not in header:
            raise EvaluationError(f"{option} {name!r} is not a column of {path.name} (columns: {', '.join(header)}).")
    text_at, label_at = header.index(text_column), header.index(label_column)
    rows: list[Row] = []
    bad: list[str] = []
    for number, fields in enumerate(lines[1:], start=2):
        why = ""
        if len(fields) != len(header):
            why = f"has {len(fields)} fields, the header {len(header)}"
        elif not fields[text_at].strip():
            why = f"the {text_column} is empty"
        elif not fields[label_at].strip():
            why = f"the {label_column} is empty"
        elif labels is not None and fields[label_at].strip() not in labels:
            why = f"the label {fields[label_at].strip()!r} is not in --labels"
        if why:
            bad.append(f"line {number}: {why}")
            continue
        label = fields[label_at].strip()
        rows.append(Row(number, fields[text_at].strip(), labels[label] if labels is not None else label))
    if bad:
        more = f"\n  ... and {len(bad) - BAD_LINES_SHOWN} more" if len(bad) > BAD_LINES_SHOWN else ""
        shown = "\n  ".join(bad[:BAD_LINES_SHOWN])
        raise EvaluationError(f"{path} has {len(bad)} bad lines; nothing was run:\n  {shown}{more}")
    if not rows:
        raise EvaluationError(f"The dataset {path} has a header but no rows.")
    return rows


def rows_chosen(*, rows: list[Row], limit: int | None = None, sample: int | None = None, seed: int = 0) -> list[Row]:
    """The first `limit` rows, or `sample` rows drawn with `seed` (kept in file order)."""
    if sample is not None:
        chosen = random.Random(seed).sample(range(len(rows)), min(sample, len(rows)))
        return [rows[index] for index in sorted(chosen)]
    return rows[:limit] if limit is not None else rows
