"""A pytest plugin loaded before Django is set up (pyproject's `-p`): the test process runs
with DEBUG off and usually no SECRET_KEY, so it asks for the development key by name, as
`make run` does. Subprocesses the tests start inherit it."""

from __future__ import annotations

import os

os.environ.setdefault("LLMOPS_ALLOW_INSECURE_SECRET_KEY", "true")
# The tests start the embedded batch executor themselves, where they test it.
os.environ.setdefault("LLMOPS_BATCH_START_WITH_SERVER", "false")
# Nor the regression checks' thread: the tests run the checks at the times they choose.
os.environ.setdefault("LLMOPS_MONITORING_START_WITH_SERVER", "false")
