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

api_application = ApiASGIHandler()


async def http_application(scope, receive, send):
    if is_api_path(scope["path"]):
        return await api_application(scope, receive, send)
    return await django_application(scope, receive, send)


application = ProtocolTypeRouter({"http": http_application})

# Everything loaded at start-up lives for the whole process: move it out of the
# collector's sight so full collections under load stay short.
gc.collect()
gc.freeze()
