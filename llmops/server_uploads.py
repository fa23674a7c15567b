"""Under daphne, Twisted parses every multipart/form-data body into memory before the
application sees it (twice the memory of a 200 MB batch upload, for a copy nobody reads)
and answers a body it cannot parse with an empty 400 in no error shape. The gateway parses
its uploads itself (llmops.handlers, Django's streaming parser), so Twisted's parsing is
turned off for the requests daphne builds."""

from __future__ import annotations

from typing import Any


def twisted_form_parsing_off() -> None:
    try:
        from daphne import http_protocol
    except ImportError:  # another ASGI server: nothing to do
        return
    base = http_protocol.WebRequest
    if getattr(base, "llmops_form_parsing_off", False):
        return

    class WebRequest(base):  # type: ignore[misc, valid-type]
        llmops_form_parsing_off = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["parsePOSTFormSubmission"] = False
            super().__init__(*args, **kwargs)

    # daphne's factory builds each request from this module attribute.
    http_protocol.WebRequest = WebRequest
