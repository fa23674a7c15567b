"""One settings module, read from the environment, with defaults that run on nothing
but Python (SQLite, local-memory cache, in-memory channel layer, no broker)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_secret(name: str, default: str = "") -> str:
    """A secret from NAME, or from the file that NAME_FILE points at (container secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true or false)")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)
DEFAULT_EXCEPTION_REPORTER_FILTER = "llmops.errors.SecretsHiddenFilter"
DEVELOPMENT_SECRET_KEY = "llmops-insecure-default-key-set-SECRET_KEY-in-production"
SECRET_KEY = env_secret("SECRET_KEY") or DEVELOPMENT_SECRET_KEY
# A published key signs sessions and CSRF tokens anyone can forge: with DEBUG off it runs
# only when asked for by name (`make run` asks, saying so, when SECRET_KEY is unset).
if SECRET_KEY == DEVELOPMENT_SECRET_KEY and not DEBUG and not env_bool("LLMOPS_ALLOW_INSECURE_SECRET_KEY", False):
    raise ImproperlyConfigured(
        "SECRET_KEY is not set (or is the built-in development key) and DEBUG is off. Set SECRET_KEY "
        "(or SECRET_KEY_FILE) to a long random value; on a development machine, "
        "LLMOPS_ALLOW_INSECURE_SECRET_KEY=true runs with the development key."
    )
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "llmops",
    "routing",
    "caching",
    "monitoring",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "llmops.urls"
ASGI_APPLICATION = "llmops.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_secret("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
try:
    # Under ASGI every request runs its ORM calls on a thread of its own, so persistent
    # connections would leak one per request: connections come from a pool instead.
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
except Exception as exc:  # dj_database_url raises several types on a bad URL
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the metric writer thread and request handlers share the file.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # The tests' database is a file too, not SQLite's shared in-memory one: that one locks
    # whole tables and fails at once where a file waits its turn (the threads of the batch
    # runner, the metric writer and the views write side by side, as they do in `make run`).
    DATABASES["default"]["TEST"] = {"NAME": str(Path(tempfile.gettempdir()) / f"llmops-test-{os.getpid()}.sqlite3")}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DATABASE_POOL_MIN", 1, minimum=0),
        "max_size": env_int("DATABASE_POOL_MAX", 10, minimum=1),
        "timeout": 10,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_secret("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("LLMOPS_CACHE_PREFIX", "llmops"),
            "OPTIONS": {
                # A Redis outage is a cache miss, never a 500.
                "IGNORE_EXCEPTIONS": True,
                "SOCKET_CONNECT_TIMEOUT": 1,
                "SOCKET_TIMEOUT": 1,
            },
        }
    }
    # The answer cache's own alias: errors are not swallowed here, so that the gateway can
    # count a Redis outage, log it once per interval, and bypass the cache meanwhile.
    CACHES["answers"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env_str("LLMOPS_CACHE_PREFIX", "llmops"),
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "answers": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "llmops-answers",
            "OPTIONS": {"MAX_ENTRIES": env_int("LLMOPS_ANSWER_CACHE_MAX_ENTRIES", 100_000, minimum=100)},
        },
    }
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True

CELERY_BROKER_URL = env_secret("CELERY_BROKER_URL")
CELERY_RESULT_BACKEND = env_secret("CELERY_RESULT_BACKEND") or None
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 3600, minimum=1)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 3300, minimum=1)
# A task is acknowledged once it ended, and given back to the queue when its worker died.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Regression alerts (monitoring.alerts): every LLMOPS_ALERTS_CHECK_INTERVAL_S each enabled rule
# (edited in the admin) compares every model and route's last minutes with its baseline, and
# every LLMOPS_METRICS_PRUNE_INTERVAL_S metrics past retention are pruned: by Celery beat with
# a broker, else by a thread of the server (LLMOPS_MONITORING_START_WITH_SERVER=false turns it
# off: then cron runs `manage.py check_regressions`). Each alert opened or resolved is POSTed
# as JSON to LLMOPS_ALERT_WEBHOOK_URL, from the environment only (an address typed into the
# admin could reach internal hosts), signed with HMAC-SHA256 when LLMOPS_ALERT_WEBHOOK_SECRET
# is set.
LLMOPS_ALERTS_CHECK_INTERVAL_S = env_float("LLMOPS_ALERTS_CHECK_INTERVAL_S", 60.0, minimum=1.0)
LLMOPS_METRICS_PRUNE_INTERVAL_S = env_float("LLMOPS_METRICS_PRUNE_INTERVAL_S", 3600.0, minimum=60.0)
LLMOPS_MONITORING_START_WITH_SERVER = env_bool("LLMOPS_MONITORING_START_WITH_SERVER", True)
LLMOPS_ALERT_WEBHOOK_URL = env_secret("LLMOPS_ALERT_WEBHOOK_URL")
if LLMOPS_ALERT_WEBHOOK_URL and not LLMOPS_ALERT_WEBHOOK_URL.startswith(("http://", "https://")):
    # Not quoted: the address may hold a token.
    raise ImproperlyConfigured("LLMOPS_ALERT_WEBHOOK_URL must be an http:// or https:// address")
LLMOPS_ALERT_WEBHOOK_SECRET = env_secret("LLMOPS_ALERT_WEBHOOK_SECRET")
LLMOPS_ALERT_WEBHOOK_TIMEOUT_S = env_float("LLMOPS_ALERT_WEBHOOK_TIMEOUT_S", 5.0, minimum=0.1)
CELERY_BEAT_SCHEDULE = {
    # Batches whose runner died (or that nobody runs yet) are resumed; provider batches polled.
    "batches-sweep": {"task": "llmops.batches.sweep", "schedule": env_float("LLMOPS_BATCH_SWEEP_S", 30.0, minimum=1.0)},
    # A check or prune that waited past its next one (busy workers) is dropped, not piled up.
    "monitoring-check-regressions": {
        "task": "monitoring.check_regressions",
        "schedule": LLMOPS_ALERTS_CHECK_INTERVAL_S,
        "options": {"expires": LLMOPS_ALERTS_CHECK_INTERVAL_S},
    },
    "monitoring-prune": {
        "task": "monitoring.prune",
        "schedule": LLMOPS_METRICS_PRUNE_INTERVAL_S,
        "options": {"expires": LLMOPS_METRICS_PRUNE_INTERVAL_S},
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# The gateway serves its own static files (admin, API docs) unless a proxy does.
LLMOPS_SERVE_STATIC = env_bool("LLMOPS_SERVE_STATIC", True)

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": ["llmops.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "EXCEPTION_HANDLER": "llmops.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "llmops gateway API",
    "DESCRIPTION": (
        "An OpenAI-compatible LLM gateway. Authenticate with `Authorization: Bearer <key>` "
        "(create one with `python manage.py create_api_key NAME`)."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
}

# Gateway behaviour. Limits are configuration, not constants.
LLMOPS_MAX_BODY_BYTES = env_int("LLMOPS_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = LLMOPS_MAX_BODY_BYTES
LLMOPS_SSE_KEEPALIVE_S = env_float("LLMOPS_SSE_KEEPALIVE_S", 10.0, minimum=0.01)
LLMOPS_WS_MAX_CHATS = env_int("LLMOPS_WS_MAX_CHATS", 8, minimum=1)
# Full garbage collections at idle moments (llmops/collector.py): at most this often, and at
# least this often when the server is never idle.
LLMOPS_GC_IDLE = env_bool("LLMOPS_GC_IDLE", True)
LLMOPS_GC_FULL_EVERY_S = env_float("LLMOPS_GC_FULL_EVERY_S", 30.0, minimum=1.0)
LLMOPS_GC_FULL_MAX_S = env_float("LLMOPS_GC_FULL_MAX_S", 600.0, minimum=1.0)
# With them: a generation-1 collection after this many generation-0 ones (Python's 10 keeps
# most of the requests in flight young, and each such collection scans them all).
LLMOPS_GC_YOUNG_COLLECTIONS = env_int("LLMOPS_GC_YOUNG_COLLECTIONS", 2, minimum=1)
# `manage.py serve` (make run): gateway processes on one port; one process uses one core.
LLMOPS_SERVER_PROCESSES = env_int("LLMOPS_SERVER_PROCESSES", os.cpu_count() or 1, minimum=1)
LLMOPS_UPSTREAM_TIMEOUT_S = env_float("LLMOPS_UPSTREAM_TIMEOUT_S", 120.0, minimum=0.1)
# Key variables a catalog entry may name besides those ending in _API_KEY (never a gateway
# secret: llmops.models.GATEWAY_SECRET_ENVS).
LLMOPS_PROVIDER_KEY_ENVS = env_list("LLMOPS_PROVIDER_KEY_ENVS", "")
# The gateway's own retries and fallbacks (the SDKs' retries are off): per model, this many
# retries of a transient failure with exponential backoff and full jitter, Retry-After
# honoured up to its cap; no request waits past its deadline.
LLMOPS_RETRIES = env_int("LLMOPS_RETRIES", 2, minimum=0)
LLMOPS_RETRY_BASE_S = env_float("LLMOPS_RETRY_BASE_S", 0.1, minimum=0.0)
LLMOPS_RETRY_MAX_BACKOFF_S = env_float("LLMOPS_RETRY_MAX_BACKOFF_S", 2.0, minimum=0.0)
LLMOPS_RETRY_AFTER_MAX_S = env_float("LLMOPS_RETRY_AFTER_MAX_S", 5.0, minimum=0.0)
LLMOPS_REQUEST_DEADLINE_S = env_float("LLMOPS_REQUEST_DEADLINE_S", 300.0, minimum=0.1)
# Circuit breakers per catalog model: open after this many failures within the window that
# are also at least this share of its calls (once it holds LLMOPS_BREAKER_MIN_CALLS calls);
# closed again by one probe after the cool-down.
LLMOPS_BREAKER_FAILURES = env_int("LLMOPS_BREAKER_FAILURES", 5, minimum=1)
LLMOPS_BREAKER_FAILURE_RATE = env_float("LLMOPS_BREAKER_FAILURE_RATE", 0.5, minimum=0.0)
LLMOPS_BREAKER_MIN_CALLS = env_int("LLMOPS_BREAKER_MIN_CALLS", 20, minimum=1)
# However few calls the window holds, this many failures in a row open it (a model that died).
LLMOPS_BREAKER_CONSECUTIVE_FAILURES = env_int("LLMOPS_BREAKER_CONSECUTIVE_FAILURES", 20, minimum=1)
LLMOPS_BREAKER_WINDOW_S = env_float("LLMOPS_BREAKER_WINDOW_S", 30.0, minimum=1.0)
LLMOPS_BREAKER_COOLDOWN_S = env_float("LLMOPS_BREAKER_COOLDOWN_S", 15.0, minimum=0.05)
LLMOPS_BREAKER_SYNC_S = env_float("LLMOPS_BREAKER_SYNC_S", 0.5, minimum=0.0)
# Requests identical to one asking the model wait for its answer at most this long.
LLMOPS_CACHE_JOIN_TIMEOUT_S = env_float("LLMOPS_CACHE_JOIN_TIMEOUT_S", 150.0, minimum=0.01)
# The output a request is assumed to use, for its limits, when it sets no max_tokens.
LLMOPS_ESTIMATED_OUTPUT_TOKENS = env_int("LLMOPS_ESTIMATED_OUTPUT_TOKENS", 256, minimum=1)
# Routing under a request's limits reads what was measured over this window, from requests
# answered by each option (a model, or a cascade), refreshed in the background this often;
# an option with fewer samples than LLMOPS_ROUTING_MIN_SAMPLES is judged by the catalog's priors.
LLMOPS_ROUTING_WINDOW_S = env_float("LLMOPS_ROUTING_WINDOW_S", 24 * 3600.0, minimum=1.0)
LLMOPS_ROUTING_MIN_SAMPLES = env_int("LLMOPS_ROUTING_MIN_SAMPLES", 20, minimum=1)
LLMOPS_ROUTING_STATS_TTL_S = env_float("LLMOPS_ROUTING_STATS_TTL_S", 30.0, minimum=0.0)
LLMOPS_ROUTING_STATS_MAX_ROWS = env_int("LLMOPS_ROUTING_STATS_MAX_ROWS", 2000, minimum=1)
LLMOPS_CONFIG_TTL_S = env_float("LLMOPS_CONFIG_TTL_S", 2.0, minimum=0.0)
LLMOPS_METRICS_FLUSH_INTERVAL_S = env_float("LLMOPS_METRICS_FLUSH_INTERVAL_S", 1.0, minimum=0.0)
LLMOPS_METRICS_BATCH_SIZE = env_int("LLMOPS_METRICS_BATCH_SIZE", 500, minimum=1)
LLMOPS_METRICS_MAX_BUFFER = env_int("LLMOPS_METRICS_MAX_BUFFER", 100_000, minimum=1)
# The writer adds every metric row to per-minute, per-hour and per-day rollups, which the
# dashboards, the metrics API and the regression checks read (off only to measure their cost:
# without them those figures stay empty). Raw rows and minute rollups are pruned after
# LLMOPS_METRICS_RETENTION_DAYS, hour and day rollups after LLMOPS_METRICS_ROLLUP_RETENTION_DAYS.
LLMOPS_METRICS_ROLLUPS = env_bool("LLMOPS_METRICS_ROLLUPS", True)
LLMOPS_METRICS_RETENTION_DAYS = env_int("LLMOPS_METRICS_RETENTION_DAYS", 30, minimum=1)
LLMOPS_METRICS_ROLLUP_RETENTION_DAYS = env_int("LLMOPS_METRICS_ROLLUP_RETENTION_DAYS", 400, minimum=1)
if LLMOPS_METRICS_ROLLUP_RETENTION_DAYS < LLMOPS_METRICS_RETENTION_DAYS:
    raise ImproperlyConfigured(
        "LLMOPS_METRICS_ROLLUP_RETENTION_DAYS must be at least LLMOPS_METRICS_RETENTION_DAYS: the windows "
        "the metrics API serves are read from the rollups."
    )
# Prometheus: GET /metrics (monitoring.prometheus). Served to a request with this bearer
# token, else only to these addresses or networks (comma-separated; a bad one stops start-up);
# blank token: by address alone. false: nothing is observed (to measure what it costs). Set
# PROMETHEUS_MULTIPROC_DIR in the environment (prometheus-client reads it at import, so it
# is no setting) and every process started with it adds to what any one of them serves.
LLMOPS_PROMETHEUS_ENABLED = env_bool("LLMOPS_PROMETHEUS_ENABLED", True)
LLMOPS_PROMETHEUS_TOKEN = env_secret("LLMOPS_PROMETHEUS_TOKEN")
# With a token, no address is trusted unless named: behind a proxy on the same machine every
# request comes from loopback.
LLMOPS_PROMETHEUS_ALLOWED_IPS = env_list(
    "LLMOPS_PROMETHEUS_ALLOWED_IPS", "" if LLMOPS_PROMETHEUS_TOKEN else "127.0.0.1,::1"
)
LLMOPS_CACHE_RETRY_AFTER_S = env_float("LLMOPS_CACHE_RETRY_AFTER_S", 5.0, minimum=0.0)
LLMOPS_LIMITS_REDIS_URL = env_secret("LLMOPS_LIMITS_REDIS_URL") or REDIS_URL  # key limits; blank: in process
LLMOPS_SEMANTIC_REFRESH_S = env_float("LLMOPS_SEMANTIC_REFRESH_S", 30.0, minimum=0.0)
LLMOPS_SEMANTIC_MAX_GROUPS = env_int("LLMOPS_SEMANTIC_MAX_GROUPS", 10_000, minimum=1)
LLMOPS_EMBED_TIMEOUT_S = env_float("LLMOPS_EMBED_TIMEOUT_S", 2.0, minimum=0.05)
LLMOPS_LOCAL_MODEL_THREADS = env_int("LLMOPS_LOCAL_MODEL_THREADS", 0, minimum=0)
LLMOPS_LOCAL_MODEL_CONTEXT = env_int("LLMOPS_LOCAL_MODEL_CONTEXT", 2048, minimum=256)

# Batches (OpenAI's Files and Batches API, run by the gateway). Uploads are refused past
# these sizes, as OpenAI's are.
LLMOPS_BATCH_MAX_FILE_BYTES = env_int("LLMOPS_BATCH_MAX_FILE_BYTES", 200 * 1024 * 1024, minimum=1024)
LLMOPS_BATCH_MAX_LINES = env_int("LLMOPS_BATCH_MAX_LINES", 50_000, minimum=1)
# Where batches run: "in_process" (a thread of the server, the default without a broker),
# "celery" (workers, the default with CELERY_BROKER_URL), or "off" (nothing here runs them).
LLMOPS_BATCH_EXECUTOR = env_str("LLMOPS_BATCH_EXECUTOR", "celery" if CELERY_BROKER_URL else "in_process")
if LLMOPS_BATCH_EXECUTOR not in ("in_process", "celery", "off"):
    raise ImproperlyConfigured(f"LLMOPS_BATCH_EXECUTOR={LLMOPS_BATCH_EXECUTOR!r} must be in_process, celery or off")
# Batch items hold at most this share of a model's concurrency (max_concurrency), so that
# interactive requests to it keep their latency while a batch runs.
LLMOPS_BATCH_CONCURRENCY_SHARE = env_float("LLMOPS_BATCH_CONCURRENCY_SHARE", 0.5, minimum=0.0)
if LLMOPS_BATCH_CONCURRENCY_SHARE > 1:
    raise ImproperlyConfigured("LLMOPS_BATCH_CONCURRENCY_SHARE must be between 0 and 1")
# Items one runner holds at once (claimed, waiting for a slot or answering).
LLMOPS_BATCH_RUNNER_ITEMS = env_int("LLMOPS_BATCH_RUNNER_ITEMS", 256, minimum=1)
# A runner's claim on its items lasts this long and is renewed at a third of it; a claim
# that lapses (the runner died) is taken over by another runner.
LLMOPS_BATCH_LEASE_S = env_float("LLMOPS_BATCH_LEASE_S", 60.0, minimum=0.5)
LLMOPS_BATCH_POLL_S = env_float("LLMOPS_BATCH_POLL_S", 1.0, minimum=0.01)
LLMOPS_BATCH_PROVIDER_POLL_S = env_float("LLMOPS_BATCH_PROVIDER_POLL_S", 30.0, minimum=0.01)
# An item failing transiently (429, 5xx, a timeout) after the attempt loop's own retries is
# queued again, up to this many runs in all, before it is failed.
LLMOPS_BATCH_ITEM_RUNS = env_int("LLMOPS_BATCH_ITEM_RUNS", 3, minimum=1)
# A Celery task runs a batch for at most this long, then hands it to the next task (well
# inside CELERY_TASK_SOFT_TIME_LIMIT).
LLMOPS_BATCH_TASK_SLICE_S = env_float("LLMOPS_BATCH_TASK_SLICE_S", 600.0, minimum=1.0)
# On the embedded default the executor starts with the server (resuming what a restart
# left unfinished); the tests start it themselves.
LLMOPS_BATCH_START_WITH_SERVER = env_bool("LLMOPS_BATCH_START_WITH_SERVER", True)
LLMOPS_BATCH_ITEM_DEADLINE_S = env_float("LLMOPS_BATCH_ITEM_DEADLINE_S", 3600.0, minimum=1.0)
# An interactive request waits at most this long for its model's requests- or tokens-per-
# minute limit (the provider's, in the catalog) before it is sent to the model's fallback.
LLMOPS_MODEL_RATE_MAX_WAIT_S = env_float("LLMOPS_MODEL_RATE_MAX_WAIT_S", 1.0, minimum=0.0)
# Batch items fill a model's minute (its requests and tokens per minute) only up to this
# share short of it: the rest is kept for interactive requests.
LLMOPS_MODEL_RATE_INTERACTIVE_RESERVE = env_float("LLMOPS_MODEL_RATE_INTERACTIVE_RESERVE", 0.1, minimum=0.0)
if LLMOPS_MODEL_RATE_INTERACTIVE_RESERVE >= 1:
    raise ImproperlyConfigured("LLMOPS_MODEL_RATE_INTERACTIVE_RESERVE must be below 1")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "django.channels.server": {"level": env_str("ACCESS_LOG_LEVEL", "WARNING")},
    },
}
