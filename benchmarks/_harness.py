"""The name the harness had before it became `benchmarks.harness`, for tests/llmops/test_serve.py."""

from benchmarks.harness.client import http_get

__all__ = ["http_get"]
