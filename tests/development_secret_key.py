"""A pytest plugin loaded before Django is set up (pyproject's `-p`): the test process runs
with DEBUG off and usually no SECRET_KEY, so it asks for the development key by name, as
`make run` does. Subprocesses the tests start inherit it."""

from __future__ import annotations

import os
from urllib.parse import urlparse

os.environ.setdefault("LLMOPS_ALLOW_INSECURE_SECRET_KEY", "true")
# The tests start the embedded batch executor themselves, where they test it.
os.environ.setdefault("LLMOPS_BATCH_START_WITH_SERVER", "false")
# Nor the regression checks' thread: the tests run the checks at the times they choose.
os.environ.setdefault("LLMOPS_MONITORING_START_WITH_SERVER", "false")

# Under pytest-xdist each worker has a Redis database of its own (the cache, the channel layer,
# the limits, and the subprocesses a test starts), as it has a test database of its own: one
# worker's cache.clear() must not empty another's. The first keeps the URL's; the others take
# 12, 11... (13 and 14 belong to tests/test_run_prod.py and tests/batches/test_celery_worker.py).
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
if os.environ.get("REDIS_URL") and _worker != "gw0":
    _url = urlparse(os.environ["REDIS_URL"])
    os.environ["REDIS_URL"] = _url._replace(path=f"/{13 - int(_worker.removeprefix('gw'))}").geturl()
