"""A provider with no network: latency, time to first token, token rate, answer length and
error rate come from the catalog entry, and a request may override them
(`"simulate": {...}` in the body) so load tests and benchmarks can script it.

It can also stand in for a strong model in an evaluation: told the correct label
(`answer`), it answers with it `answer_accuracy` of the time and otherwise with another of
`answer_choices`; and with `token_prob` it reports that probability for every token, for
confidence checks."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
from collections.abc import AsyncIterator
from typing import Any

from llmops.catalog import EndpointConfig
from llmops.providers.base import Completion, ProviderCall, StreamDelta, UpstreamError, Usage, estimate_tokens

DEFAULTS: dict[str, float] = {
    "latency_ms": 0.0,
    "ttft_ms": 0.0,
    "tokens_per_s": 0.0,  # 0: every token at once
    "output_tokens": 16,
    "error_rate": 0.0,
    "token_prob": 0.0,  # 0: reports no logprobs
    "answer_accuracy": 1.0,
}
# The numeric settings and their ranges (the OpenAPI schema is built from these too).
LIMITS: dict[str, tuple[float, float]] = {
    "latency_ms": (0, 600_000),
    "ttft_ms": (0, 600_000),
    "tokens_per_s": (0, 1_000_000),
    "output_tokens": (1, 100_000),
    "error_rate": (0, 1),
    "token_prob": (0, 1),
    "answer_accuracy": (0, 1),
}
# The stand-in's text settings. Any string is taken (null characters too): the answer is
# only echoed back, never parsed.
ANSWER_MAX_CHARS = 1000
ANSWER_CHOICES_MAX = 100
TEXT_SETTINGS = ("answer", "answer_choices")
NO_OTHER_CHOICE = "unknown"
WORDS = ("simulated", "answer", "from", "the", "llmops", "gateway", "with", "no", "model", "behind", "it")


def _check_text(key: str, value: Any) -> str | list[str]:
    if key == "answer":
        if not isinstance(value, str) or len(value) > ANSWER_MAX_CHARS:
            raise ValueError(f"simulate.answer must be a string of at most {ANSWER_MAX_CHARS} characters")
        return value
    if (
        not isinstance(value, list)
        or len(value) > ANSWER_CHOICES_MAX
        or not all(isinstance(choice, str) and len(choice) <= ANSWER_MAX_CHARS for choice in value)
    ):
        raise ValueError(
            f"simulate.answer_choices must be a list of at most {ANSWER_CHOICES_MAX} strings "
            f"of at most {ANSWER_MAX_CHARS} characters each"
        )
    return list(value)


def validate_overrides(raw: Any) -> dict[str, Any]:
    """Check a request's `simulate` object; raises ValueError with a message for the client."""
    if not isinstance(raw, dict):
        raise ValueError("simulate must be an object")
    clean: dict[str, Any] = {}
    for key, value in raw.items():
        if key in TEXT_SETTINGS:
            clean[key] = _check_text(key, value)
            continue
        if key not in LIMITS:
            raise ValueError(f"simulate.{key} is not a simulation setting (use {', '.join([*LIMITS, *TEXT_SETTINGS])})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"simulate.{key} must be a number")
        low, high = LIMITS[key]
        if not low <= value <= high:
            raise ValueError(f"simulate.{key} must be between {low:g} and {high:g}")
        clean[key] = float(value)
    return clean


def _settings(endpoint: EndpointConfig, call: ProviderCall) -> dict[str, Any]:
    merged = {**DEFAULTS, **endpoint.simulation, **(call.simulate or {})}
    max_tokens = call.params.get("max_tokens")
    if max_tokens:
        merged["output_tokens"] = min(merged["output_tokens"], max_tokens)
    return merged


def _stand_in_text(call: ProviderCall, sim: dict[str, Any]) -> str:
    """The stand-in's answer: the same for the same messages and answer, so evaluation runs
    repeat, and right `answer_accuracy` of the time over many different messages."""
    answer = sim["answer"]
    contents = [message.get("content", "") for message in call.messages]
    digest = hashlib.blake2b(json.dumps([contents, answer]).encode(), digest_size=8).digest()
    draw = random.Random(int.from_bytes(digest, "big"))
    if draw.random() < sim["answer_accuracy"]:
        return answer
    wrong = [choice for choice in sim.get("answer_choices") or () if choice != answer]
    return draw.choice(wrong) if wrong else NO_OTHER_CHOICE


def _pieces(call: ProviderCall, sim: dict[str, Any]) -> tuple[list[str], int, str]:
    """The answer as streamed pieces, its output token count and its finish reason."""
    if "answer" in sim:
        # Told the label: the whole label (a few tokens), never cut at max_tokens.
        text = _stand_in_text(call, sim)
        return re.findall(r"\S+\s*|\s+", text), max(1, estimate_tokens(text)), "stop"
    count = int(sim["output_tokens"])
    pieces = [("Simulated" if i == 0 else " " + WORDS[i % len(WORDS)]) for i in range(count)]
    return pieces, count, "length" if count == call.params.get("max_tokens") else "stop"


def _usage(call: ProviderCall, output_tokens: int) -> Usage:
    prompt = "".join(m.get("content", "") for m in call.messages)
    return Usage(input_tokens=estimate_tokens(prompt), output_tokens=output_tokens)


def _logprobs(call: ProviderCall, sim: dict[str, Any], count: int) -> list[float] | None:
    if not (call.logprobs and sim["token_prob"]):
        return None
    return [math.log(sim["token_prob"])] * count


def _maybe_fail(sim: dict[str, Any]) -> None:
    if sim["error_rate"] and random.random() < sim["error_rate"]:
        raise UpstreamError("Simulated upstream failure.", status=502, error_type="upstream_error")


class SimulatedProvider:
    name = "simulated"

    async def complete(self, endpoint: EndpointConfig, call: ProviderCall) -> Completion:
        sim = _settings(endpoint, call)
        pieces, count, finish = _pieces(call, sim)
        delay = sim["latency_ms"] / 1000
        if not delay:
            delay = sim["ttft_ms"] / 1000 + (count / sim["tokens_per_s"] if sim["tokens_per_s"] else 0)
        if delay:
            await asyncio.sleep(delay)
        _maybe_fail(sim)
        return Completion(
            text="".join(pieces),
            finish_reason=finish,
            usage=_usage(call, count),
            simulated=True,
            logprobs=_logprobs(call, sim, count),
        )

    async def stream(self, endpoint: EndpointConfig, call: ProviderCall) -> AsyncIterator[StreamDelta]:
        sim = _settings(endpoint, call)
        pieces, count, finish = _pieces(call, sim)
        ttft = sim["ttft_ms"] / 1000 or sim["latency_ms"] / 1000
        if ttft:
            await asyncio.sleep(ttft)
        _maybe_fail(sim)
        # A piece may hold several tokens (the stand-in's words): pace so the rate holds per token.
        gap = count / len(pieces) / sim["tokens_per_s"] if sim["tokens_per_s"] and pieces else 0.0
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, piece in enumerate(pieces):
            if gap and index:
                # Pace against the clock, not the previous sleep, so the rate holds under load.
                await asyncio.sleep(max(0.0, start + index * gap - loop.time()))
            yield StreamDelta(text=piece)
        yield StreamDelta(finish_reason=finish, usage=_usage(call, count))
