"""Prompt templates: a request names a prompt (`name` or `name@version`) and passes
variables instead of (or ahead of) its own messages."""

from __future__ import annotations

from typing import Any

from llmops import catalog
from llmops.catalog import PromptConfig
from llmops.errors import InvalidRequest, NotFound
from llmops.models import PROMPT_VARIABLE


def parse_reference(reference: str) -> tuple[str, int | None]:
    name, _, version = reference.partition("@")
    if not version:
        return name, None
    if not version.isdigit():
        raise InvalidRequest(f"prompt {reference!r}: the version after @ must be a number.", param="prompt")
    return name, int(version)


async def prompt_render(
    *, reference: str, variables: dict[str, Any], messages: list[dict[str, str]]
) -> tuple[PromptConfig, list[dict[str, str]]]:
    """The template's messages with variables filled in, then the request's own messages."""
    name, version = parse_reference(reference)
    prompt = await catalog.prompt_get(name, version)
    if prompt is None:
        raise NotFound(f"There is no prompt named {reference!r}.", param="prompt", code="prompt_not_found")

    def fill(match: Any) -> str:
        key = match.group(1)
        if key not in variables:
            raise InvalidRequest(
                f"Prompt {prompt.label} needs the variable {key!r}.", param=f"variables.{key}", code="missing_variable"
            )
        value = variables[key]
        return value if isinstance(value, str) else str(value)

    rendered = [
        {
            "role": "system" if m["role"] == "developer" else m["role"],
            "content": PROMPT_VARIABLE.sub(fill, m["content"]),
        }
        for m in prompt.messages
    ]
    return prompt, rendered + messages
