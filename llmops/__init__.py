from llmops.asyncio_fixes import install as _asyncio_fixes_install

_asyncio_fixes_install()  # before anything (redis-py, channels) runs a coroutine

from llmops.celery import app as celery_app  # noqa: E402

__all__ = ("celery_app",)
