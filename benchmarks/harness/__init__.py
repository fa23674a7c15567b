"""What every benchmark shares, written once:

- `gateway`: a throwaway gateway (its environment, database, set-up scripts and API keys;
  the production profile's throwaway PostgreSQL and Redis databases) and the processes a
  benchmark starts and stops: daphne, `manage.py serve`, Celery workers, any server;
- `servers`: the upstreams behind or beside it: the echo app (the baseline), the fast
  upstream on a bare asyncio protocol and the scripted flaky upstream;
- `client`: the load generator, a lean HTTP/1.1 keep-alive client, and the requests it sends;
- `streams`: the WebSocket and SSE clients of streamed chats, and the bare streaming app;
- `figures`: CPU, memory and collector pauses of the processes measured, percentiles,
  ratios and tables;
- `command`: each benchmark's command line and `main`."""

import asyncio
from collections.abc import Coroutine
from typing import Any


def loop_run(main: Coroutine[Any, Any, Any]) -> Any:
    """Run `main` on uvloop's event loop where it is installed (not on Windows), as the
    gateway's server processes do, else on asyncio's. Here, not in `client`, so that the fast
    upstream, a baseline whose memory is printed, loads no more than it did."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
