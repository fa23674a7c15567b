"""A fake OpenAI API that also answers POST /v1/embeddings, in OpenAI's wire format (what
openai/types/create_embedding_response.py parses):

    {"object": "list", "model": ..., "usage": {"prompt_tokens", "total_tokens"},
     "data": [{"object": "embedding", "index": i, "embedding": [floats] | "base64"}]}

With `encoding_format: "base64"` (what the SDK asks for unless told otherwise) each
embedding is the base64 of its little-endian float32 bytes; with "float" or no format, a
list of floats. `ignores_encoding_format` answers floats whatever was asked, as some
compatible servers do.

The vectors are deterministic and meaningful enough to test with: words hashed into
`dimensions` buckets, so the same text always gets the same vector and texts sharing words
are closer than texts sharing none. They are deliberately not of length 1 (as some
compatible servers' are not), so the client's normalisation is what the tests see."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import numpy as np
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.upstream import RecordedRequest, running


def word_vector(text: str, dimensions: int) -> np.ndarray:
    vector = np.zeros(dimensions, dtype=np.float32)
    for word in re.findall(r"\w+", text.lower()):
        bucket = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little") % dimensions
        vector[bucket] += 1.0
    vector[0] += 0.5  # never all zero, even for an empty text
    return vector * 3.0


class FakeOpenAIEmbeddings(FakeOpenAI):
    name = "openai-embeddings"

    def __init__(self, dimensions: int = 32) -> None:
        super().__init__()
        self.dimensions = dimensions
        self.ignores_encoding_format = False

    def route(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        if request.path.split("?")[0] != "/v1/embeddings":
            super().route(handler, request)
            return
        if request.method != "POST":
            self.send_json(handler, 405, self.error_body(405, f"Invalid method ({request.method}).", None))
            return
        presented = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.expected_key is not None and presented != self.expected_key:
            self.send_json(handler, 401, self.error_body(401, f"Incorrect API key provided: {presented}.", None))
            return
        body = request.body if isinstance(request.body, dict) else {}
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not texts or not all(isinstance(text, str) and text for text in texts):
            message = "'$.input' is invalid. Please check the API reference."
            self.send_json(handler, 400, self.error_body(400, message, None))
            return
        as_base64 = body.get("encoding_format") == "base64" and not self.ignores_encoding_format
        data = []
        for index, text in enumerate(texts):
            vector = word_vector(text, self.dimensions)
            encoded: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode() if as_base64 else vector.tolist()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(text.split()) for text in texts)
        self.send_json(
            handler,
            200,
            {
                "object": "list",
                "data": data,
                "model": body.get("model", ""),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


@pytest.fixture(name="fake_embeddings")
def fake_embeddings_fixture() -> Iterator[FakeOpenAIEmbeddings]:
    """A running fake, stopped after the test. Import this into a test module to use `fake_embeddings`."""
    yield from running(FakeOpenAIEmbeddings())
