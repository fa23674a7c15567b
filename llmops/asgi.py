import gc
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")

from django.core.asgi import get_asgi_application

django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

if settings.LLMOPS_SERVE_STATIC:
    # daphne serves no files itself: this gives the admin and docs their CSS and scripts.
    django_application = ASGIStaticFilesHandler(django_application)

from llmops.handlers import ApiASGIHandler, is_api_path  # noqa: E402
from llmops.server_uploads import twisted_form_parsing_off  # noqa: E402

twisted_form_parsing_off()

api_application = ApiASGIHandler()


async def http_application(scope, receive, send):
    if is_api_path(scope["path"]):
        return await api_application(scope, receive, send)
    return await django_application(scope, receive, send)


from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from llmops.batches.consumers import BatchProgressConsumer  # noqa: E402
from llmops.consumers import BrowserOriginValidator, ChatConsumer  # noqa: E402

websocket_application = BrowserOriginValidator(
    AuthMiddlewareStack(
        URLRouter(
            [
                path("ws/v1/chat", ChatConsumer.as_asgi()),
                path("ws/batches", BatchProgressConsumer.as_asgi()),
            ]
        )
    ),
    settings.ALLOWED_HOSTS,
)

application = ProtocolTypeRouter({"http": http_application, "websocket": websocket_application})

if settings.LLMOPS_BATCH_EXECUTOR == "in_process" and settings.LLMOPS_BATCH_START_WITH_SERVER:
    from llmops.batches.executor import EXECUTOR

    # Batches run in this process (no broker): resume what a restart left unfinished.
    EXECUTOR.start()

if not settings.CELERY_BROKER_URL and settings.LLMOPS_MONITORING_START_WITH_SERVER:
    from monitoring.alerts.loop import MONITORING

    # No broker, so no beat: the regression checks and the metrics prune run in this process.
    MONITORING.start()

# Everything loaded at start-up lives for the whole process: move it out of the
# collector's sight so full collections under load stay short.
gc.collect()
gc.freeze()

from llmops import collector  # noqa: E402
from llmops.gcstats import install_from_env  # noqa: E402

# Full collections at idle moments, not under load (llmops/collector.py).
collector.start()

# Opt-in (LLMOPS_GC_STATS=1): the collector's pauses from here on, shown on /healthz.
install_from_env()
