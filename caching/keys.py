"""What makes two requests the same question: the cache key and the semantic group."""

from __future__ import annotations

import hashlib
import json
from typing import Any

# The parameters that change an answer (`simulate` scripts a simulated model's answer).
# `user` does not change it; `stream` only changes its framing.
ANSWER_PARAMS = (
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "simulate",
)


def normalise(text: str, how: str) -> str:
    if how == "none":
        return text
    collapsed = " ".join(text.split())
    return collapsed.lower() if how == "lowercase" else collapsed


def _digest(parts: list[Any]) -> str:
    return hashlib.sha256(
        json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    ).hexdigest()


def answer_keys(
    *,
    model: str,
    target: str,
    messages: list[dict[str, str]],
    params: dict[str, Any],
    prompt: str,
    scope: str,
    normalisation: str,
) -> tuple[str, str, str]:
    """(key, group, query): the exact key; the group of requests that differ only in their
    last turn (where the semantic cache looks); and that last turn, normalised. `target` is
    what the model name points at (provider, upstream model, URL): repointing a catalog
    name starts a fresh cache instead of serving the old model's answers."""
    turns = [[m["role"], normalise(m["content"], normalisation)] for m in messages]
    answer_params = [[name, params[name]] for name in ANSWER_PARAMS if name in params]
    context = [model, target, answer_params, prompt, scope, normalisation]
    group = _digest([*context, turns[:-1]])
    key = _digest([*context, turns])
    return key, group, turns[-1][1] if turns else ""
