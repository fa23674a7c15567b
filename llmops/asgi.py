import gc
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

application = ProtocolTypeRouter({"http": django_application})

# Everything loaded at start-up lives for the whole process: move it out of the
# collector's sight so full collections under load stay short.
gc.collect()
gc.freeze()
