"""One server process of `manage.py serve`: daphne's command line, on uvloop's event loop.

    python -m llmops.server [daphne's arguments]

daphne runs Twisted on an asyncio event loop it makes at import; with uvloop's policy set
first, that loop is uvloop's (libuv, in C). Measured through a real HTTP upstream (three
passes, benchmarks.proxy's gateway and upstream), it took about a fifth off the gateway's
CPU per request on the embedded default; on the production profile the change was within
the noise.
LLMOPS_UVLOOP=false keeps asyncio's own loop (uvloop is not built for Windows)."""

from __future__ import annotations

import asyncio
import os


def loop_policy_install() -> str:
    """Set uvloop's event loop policy unless LLMOPS_UVLOOP is off; the loop's name."""
    if os.environ.get("LLMOPS_UVLOOP", "true").strip().lower() in ("0", "false", "no", "off"):
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def twisted_request_log_off() -> None:
    """Twisted's HTTP factory formats a Combined Log Format line for every request and hands
    it to Twisted's log, which daphne sends nowhere (at its verbosity 0 and 1) or beside its
    own access log (2 and up): 1.7% of the gateway's main-thread samples per proxied request
    (py-spy, `benchmarks.proxy --profile prod`), for a line nobody reads. daphne's access log
    (`manage.py serve`, ACCESS_LOG_LEVEL) is the one."""
    from daphne.http_protocol import HTTPFactory

    HTTPFactory.log = lambda self, request: None


def main() -> None:
    loop_policy_install()
    from daphne.cli import CommandLineInterface  # after the policy: daphne makes its loop at import

    twisted_request_log_off()
    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
