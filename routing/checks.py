"""Quality checks a cascade step runs on an answer. Each scores from 0 to 1: the label set,
the pattern and the JSON schema give 1 or 0, the confidence gives the answer's mean or
lowest token probability, and the judge gives the grade a judge model returned. The judge's
call itself is the pipeline's to make (nothing outside it calls a provider): here are its
messages and the strict reading of its reply."""

from __future__ import annotations

import json
import math
import re
import string
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

# What surrounds a label in a short answer: "Positive." or "**negative**" or "'neutral'".
LABEL_TRIM = string.whitespace + string.punctuation
# The judge's first line: a number from 0 to 1 and nothing else.
JUDGE_SCORE = re.compile(r"\A\s*(0(?:\.\d+)?|1(?:\.0+)?|\.\d+)\s*\Z")
JUDGE_SYSTEM = (
    "You grade an assistant's answer. Read the rubric, the question and the answer. Reply with "
    "the score alone on the first line: a number from 0 (worst) to 1 (best). You may explain on "
    "later lines."
)


def labels_parsed(text: str) -> tuple[str, ...]:
    return tuple(label_normalised(part) for part in text.split(",") if label_normalised(part))


def label_normalised(text: str) -> str:
    return " ".join(text.strip(LABEL_TRIM).lower().split())


def json_schema_refusal(schema: Any) -> str | None:
    """Why `schema` is not a usable JSON Schema, or None."""
    if not isinstance(schema, (dict, bool)):
        return "Must be a JSON Schema object."
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return f"Not a valid JSON Schema: {exc.message}."
    return None


def judge_rubric_refusal(rubric: str) -> str | None:
    if not rubric.strip():
        return "A judge needs a rubric."
    if "score" not in rubric.lower():
        return "The rubric must ask for a score from 0 to 1 (say what earns 0 and what earns 1)."
    return None


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """A step's checks, compiled once when the configuration loads."""

    labels: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None
    json_schema: Any = None
    confidence: str = ""  # "", "mean" or "min"
    judge_model: str = ""
    judge_rubric: str = ""

    @property
    def any(self) -> bool:
        return bool(self.labels or self.pattern or self.json_schema is not None or self.confidence or self.judge_model)


@dataclass(slots=True)
class Scores:
    """Each check's score and why, the step's score (the lowest) and whether it passed."""

    scores: dict[str, float]
    notes: dict[str, str]

    @property
    def score(self) -> float:
        return min(self.scores.values()) if self.scores else 1.0

    def dump(self) -> dict[str, Any]:
        return {"score": round(self.score, 4), "checks": {k: round(v, 4) for k, v in self.scores.items()}}


def confidence_score(logprobs: list[float] | None, how: str) -> float | None:
    """The answer's mean or lowest token probability; None when the provider reported none."""
    if not logprobs:
        return None
    if how == "min":
        return math.exp(min(logprobs))
    return math.exp(sum(logprobs) / len(logprobs))


def local_checks(spec: CheckSpec, text: str, logprobs: list[float] | None) -> Scores:
    """Every check but the judge, which needs a model call."""
    scores: dict[str, float] = {}
    notes: dict[str, str] = {}
    if spec.labels:
        found = label_normalised(text)
        scores["labels"] = 1.0 if found in spec.labels else 0.0
        if not scores["labels"]:
            notes["labels"] = f"{found[:60]!r} is not one of {', '.join(spec.labels)}"
    if spec.pattern is not None:
        scores["pattern"] = 1.0 if spec.pattern.search(text) else 0.0
    if spec.json_schema is not None:
        scores["json_schema"], note = _schema_score(spec.json_schema, text)
        if note:
            notes["json_schema"] = note
    if spec.confidence:
        value = confidence_score(logprobs, spec.confidence)
        if value is None:
            scores["confidence"] = 0.0
            notes["confidence"] = "the model reported no token probabilities"
        else:
            scores["confidence"] = value
    return Scores(scores, notes)


def _schema_score(schema: Any, text: str) -> tuple[float, str]:
    body = text.strip()
    if body.startswith("```"):
        # A fenced block (```json ... ```) is how chat models often wrap JSON.
        body = body.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(body)
    except ValueError:
        return 0.0, "the answer is not JSON"
    error = next(iter(Draft202012Validator(schema).iter_errors(value)), None)
    if error is not None:
        return 0.0, f"the answer does not fit the schema: {error.message[:120]}"
    return 1.0, ""


def judge_messages(rubric: str, question: str, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": f"Rubric:\n{rubric}\n\nQuestion:\n{question}\n\nAnswer:\n{answer}"},
    ]


def judge_score_parsed(reply: str) -> float | None:
    """The score on the judge's first non-empty line, or None when it is not a number from 0
    to 1 on its own (a judge that rambles has not graded)."""
    for line in reply.splitlines():
        if line.strip():
            match = JUDGE_SCORE.match(line)
            return float(match.group(1)) if match else None
    return None
