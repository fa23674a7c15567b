"""An answer already in hand (a cached one, a cascade step's kept answer) sent as the
provider would have sent it: a word at a time when streamed, whole otherwise."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from llmops.providers.base import StreamDelta
from llmops.usage import Usage

WORD = re.compile(r"\S+\s*|\s+")


async def replayed(text: str, finish_reason: str, usage: Usage, *, stream: bool) -> AsyncIterator[StreamDelta]:
    if stream:
        for piece in WORD.findall(text) or [text]:
            yield StreamDelta(text=piece)
        yield StreamDelta(finish_reason=finish_reason, usage=usage)
    else:
        yield StreamDelta(text=text, finish_reason=finish_reason, usage=usage)
