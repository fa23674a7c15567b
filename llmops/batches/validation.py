"""A batch's input checked before anything runs: every line must be a request the chat
endpoint would take, for a model (or route) that exists, with a custom_id of its own.
Each bad line is named with its number and reason; with any, nothing runs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings

from llmops.api.chat import chat_request_data, inference_request
from llmops.catalog import ApiKeyInfo
from llmops.errors import GatewayError
from llmops.pipeline import InferenceRequest, request_preview
from llmops.pricing import ZERO, cost_usd

# errors.data keeps this many bad lines, then one entry saying how many more there were.
MAX_REPORTED_ERRORS = 1000
CUSTOM_ID_MAX = 512


@dataclass(slots=True)
class ParsedItem:
    line: int
    custom_id: str
    body: dict[str, Any]


@dataclass(slots=True)
class Checked:
    items: list[ParsedItem] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: int = 0
    input_tokens: int = 0
    cost: Decimal = ZERO
    models: set[str] = field(default_factory=set)

    def refuse(self, line: int, code: str, message: str, param: str | None = None) -> None:
        self.bad_lines += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"code": code, "line": line, "message": message, "param": param})

    def error_list(self) -> list[dict[str, Any]]:
        found = list(self.errors)
        if self.bad_lines > len(found):
            found.append(
                {
                    "code": "too_many_errors",
                    "line": None,
                    "message": f"{self.bad_lines - len(found)} more lines are bad; the first "
                    f"{MAX_REPORTED_ERRORS} are listed.",
                    "param": None,
                }
            )
        return found


def _storable(line: dict[str, Any]) -> bool:
    try:
        json.dumps(line, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def item_request(body: dict[str, Any], *, api_key: ApiKeyInfo) -> InferenceRequest:
    """The pipeline's request for one item's body (raises GatewayError as the chat endpoint would)."""
    if body.get("stream"):
        raise GatewayError("A batch item is answered whole: stream must be false.", param="body.stream")
    data = chat_request_data(body)
    mode = data["cache"]["mode"] if "cache" in data else "use"
    request = inference_request(data, api_key=api_key, cache_mode=mode, endpoint_kind="batch")
    request.batch = True
    request.deadline_s = settings.LLMOPS_BATCH_ITEM_DEADLINE_S
    return request


class LineChecker:
    """Checks lines one at a time (a file is read part by part, never whole)."""

    def __init__(self, *, endpoint: str, api_key: ApiKeyInfo, discounted: bool = False) -> None:
        self.endpoint = endpoint
        self.api_key = api_key
        self.discounted = discounted  # the provider's batch API runs it, at its batch discount
        self.seen: set[str] = set()
        self.checked = Checked()

    async def check(self, number: int, raw: bytes) -> None:
        checked = self.checked
        if not raw.strip():
            return  # blank lines (a trailing newline) carry no request
        try:
            line = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            checked.refuse(number, "invalid_json", f"The line is not valid JSON: {exc}")
            return
        if not isinstance(line, dict):
            checked.refuse(number, "invalid_json", "The line must be a JSON object.")
            return
        # A NUL or a lone surrogate can only come escaped (strict JSON refuses raw control
        # characters, and UTF-8 has no surrogates): only a line with an escape is looked at.
        if b"\\u" in raw and (b"\\u0000" in raw or not _storable(line)):
            checked.refuse(
                number,
                "invalid_json",
                "The line holds a NUL character or an unpaired surrogate, which cannot be stored.",
            )
            return
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id.strip():
            checked.refuse(number, "missing_custom_id", "custom_id must be a non-empty string.", "custom_id")
            return
        if len(custom_id) > CUSTOM_ID_MAX:
            checked.refuse(number, "invalid_custom_id", f"custom_id is longer than {CUSTOM_ID_MAX}.", "custom_id")
            return
        if custom_id in self.seen:
            checked.refuse(
                number, "duplicate_custom_id", f"custom_id {custom_id!r} appears on an earlier line.", "custom_id"
            )
            return
        self.seen.add(custom_id)
        if line.get("method") != "POST":
            checked.refuse(number, "invalid_method", f"method must be POST, not {line.get('method')!r}.", "method")
            return
        if line.get("url") != self.endpoint:
            checked.refuse(
                number,
                "invalid_url",
                f"url {line.get('url')!r} does not match the batch's endpoint {self.endpoint}.",
                "url",
            )
            return
        body = line.get("body")
        if not isinstance(body, dict):
            checked.refuse(number, "invalid_request", "body must be a JSON object: the chat request.", "body")
            return
        try:
            request = item_request(body, api_key=self.api_key)
            resolved, plan = await request_preview(request)
        except GatewayError as exc:
            param = f"body.{exc.param}" if exc.param else "body"
            checked.refuse(number, exc.code or "invalid_request", exc.message, param)
            return
        if checked.bad_lines:
            return  # the batch fails: the rest is checked for its errors only, and nothing kept
        checked.items.append(ParsedItem(number, custom_id, body))
        checked.models.add(request.model)
        checked.input_tokens += resolved.estimate.input_tokens
        # What it will cost at most on the model tried first: its input, and the output it allows.
        checked.cost += cost_usd(plan.first, resolved.estimate, batch=self.discounted)
