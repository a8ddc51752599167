"""Settings for My OCR, all read from the environment (an optional ``.env`` file for development).

The defaults run a single local process: SQLite under ``_data/``, the embedded OCR engine, an in-memory channel
layer. Production sets ``DEBUG=false`` (the default), a ``SECRET_KEY``, ``ALLOWED_HOSTS`` and usually
``DATABASE_URL``, ``REDIS_URL`` and ``LLM_BASE_URL``. The README lists every variable with its default.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from myocr.env import (
    env_bool,
    env_bytes,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_str,
    load_dotenv,
)

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv(BASE_DIR / ".env")

DATA_DIR = Path(env_str("OCR_DATA_DIR") or BASE_DIR / "_data")

# --- Core ----------------------------------------------------------------------------------------------------

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (see README: Configuration).")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"  # noqa: S105 - DEBUG only

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if not DEBUG else ["*"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "template_partials",
    "django_prometheus",
    "myocr",
    "accounts",
    "ocr",
]

# The whole stack, outermost first. Django's standard middleware are subclasses that run their hooks inline under
# ASGI (see myocr/middleware.py).
MIDDLEWARE = [
    # Under /api/ every error is the JSON error body, whichever layer inside it answered (myocr/http.py). Outside
    # the metrics middleware: Django offers a view's exception to the innermost middleware first and stops at the
    # first answer, and the metrics middleware must count it before this one answers it.
    "myocr.http.ApiErrorsMiddleware",
    # django-prometheus' HTTP metrics, recorded by one middleware instead of its two, which cost two thread hops
    # per request under ASGI and stop timing a stream when the view returns. Early, so that it times the rest.
    "myocr.metrics.PrometheusMiddleware",
    "myocr.middleware.SecurityMiddleware",
    # Content-Security-Policy, Permissions-Policy and the other headers Django does not set (myocr/security.py).
    "myocr.security.SecurityHeadersMiddleware",
    # WhiteNoise serves collected static files, with async responses under ASGI (see myocr/staticfiles.py);
    # under DEBUG, Django's staticfiles app serves them.
    *([] if DEBUG else ["myocr.staticfiles.AsyncWhiteNoiseMiddleware"]),
    "myocr.middleware.SessionMiddleware",
    "myocr.middleware.LocaleMiddleware",
    "myocr.middleware.CommonMiddleware",
    "myocr.middleware.CsrfViewMiddleware",
    "myocr.middleware.AuthenticationMiddleware",
    "myocr.middleware.MessageMiddleware",
    "myocr.middleware.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "myocr.urls"
ASGI_APPLICATION = "myocr.asgi.application"
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
                "django.template.context_processors.i18n",
            ],
        },
    },
]

# --- Database ------------------------------------------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'myocr.sqlite3'}"
# Connections are kept: requests' synchronous work runs on a few long-lived threads (myocr/handler.py), so a
# connection per thread is reused instead of being opened for every request.
_database = dj_database_url.parse(
    DATABASE_URL,
    conn_max_age=env_int("DB_CONN_MAX_AGE", 300, minimum=0),
    conn_health_checks=True,
)
# django-prometheus' wrappers of the same backends count queries, their duration, errors and new connections
# (``django_db_*``); they behave as Django's own otherwise. SQLite's is subclassed to build its cursor class once per
# connection instead of once per query (myocr/db/sqlite3/base.py).
_PROMETHEUS_BACKENDS = {
    "django.db.backends.sqlite3": "myocr.db.sqlite3",
    "django.db.backends.postgresql": "django_prometheus.db.backends.postgresql",
}
_database["ENGINE"] = _PROMETHEUS_BACKENDS.get(_database["ENGINE"], _database["ENGINE"])
_SQLITE = _database["ENGINE"] == "myocr.db.sqlite3"
if _SQLITE:
    Path(_database["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # WAL lets readers run beside the single writer; IMMEDIATE transactions take the write lock up front so
    # concurrent writers queue on the busy timeout instead of failing with "database is locked".
    _database.setdefault("OPTIONS", {}).update(
        {
            "timeout": env_float("SQLITE_BUSY_TIMEOUT", 30.0, minimum=1),
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DATABASES = {"default": _database}
# Threads that run requests' synchronous work (myocr/handler.py): one for SQLite (a single writer), more for a
# database server.
DJANGO_SYNC_THREADS = env_int("DJANGO_SYNC_THREADS", 1 if _SQLITE else 4, minimum=1)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth ----------------------------------------------------------------------------------------------------

AUTH_ENABLED = env_bool("AUTH_ENABLED", True)
ANONYMOUS_USERNAME = "anonymous"
BOOTSTRAP_USER = env_str("BOOTSTRAP_USER")
BOOTSTRAP_PASS = env_str("BOOTSTRAP_PASS")
ACCESS_TOKEN_EXPIRE_MINUTES = env_int("ACCESS_TOKEN_EXPIRE_MINUTES", 60 * 24, minimum=1)
REGISTRATION_OPEN = env_bool("REGISTRATION_OPEN", True)
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "ocr:home"
LOGOUT_REDIRECT_URL = "accounts:login"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Internationalisation ------------------------------------------------------------------------------------

LANGUAGE_CODE = env_str("LANGUAGE_CODE", "en")
LANGUAGES = [("en", _("English")), ("zh-hans", _("Simplified Chinese"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Static and uploaded files -------------------------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT") or DATA_DIR / "static")
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = Path(env_str("MEDIA_ROOT") or DATA_DIR / "media")
MEDIA_URL = "/media/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# --- Channels and cache --------------------------------------------------------------------------------------

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}}
    # django-prometheus' Redis cache is django-redis' backend with hit and miss counters (``django_cache_*``).
    CACHES = {"default": {"BACKEND": "django_prometheus.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    # Sessions are read through the shared cache (and written to the database too, so a restart keeps them): a
    # signed-in page view is a cache hit instead of a query. Not with the per-process local-memory cache: another
    # process would go on accepting a session signed out in this one.
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django_prometheus.cache.backends.locmem.LocMemCache"}}


# --- Security ------------------------------------------------------------------------------------------------

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 60 * 60 * 24 * 365, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SECURE_REDIRECT_EXEMPT = [r"^metrics$", r"^api/metrics$", r"^healthz$"]
if env_bool("USE_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- OCR -----------------------------------------------------------------------------------------------------

LLM_BASE_URL = env_str("LLM_BASE_URL")
LLM_API_KEY = env_str("LLM_API_KEY", "EMPTY")
LLM_MODEL = env_str("LLM_MODEL", "deepseek-ai/DeepSeek-OCR")
LLM_PROMPT = env_str("LLM_PROMPT", "Free OCR.")
# An upper bound: each request asks for at most what the context leaves after that page's prompt
# (ocr/engines/profiles.py), so it may be as high as the context.
LLM_MAX_TOKENS = env_int("LLM_MAX_TOKENS", 4096, minimum=16, maximum=1_000_000)
LLM_MODEL_PROFILE = env_choice("LLM_MODEL_PROFILE", "auto", ("auto", "deepseek-ocr", "deepseek-ocr-2", "generic"))
# A page whose text ends in this many characters of one repeated unit is a repetition loop (0: no detection).
LLM_LOOP_CHARS = env_int("LLM_LOOP_CHARS", 2000, minimum=0)
LLM_NGRAM_SIZE = env_int("LLM_NGRAM_SIZE", 30, minimum=0)
LLM_NGRAM_WINDOW = env_int("LLM_NGRAM_WINDOW", 90, minimum=1)
# <td> and </td> may repeat in tables. Servers older than vLLM PR #27560 reject list values: set it empty.
LLM_NGRAM_WHITELIST = [int(token) for token in env_list("LLM_NGRAM_WHITELIST", ["128821", "128822"])]

OCR_ENGINE = env_choice("OCR_ENGINE", "auto", ("auto", "local", "openai"))
OCR_MAX_UPLOAD_BYTES = env_bytes("OCR_MAX_UPLOAD_BYTES", 50 * 1024 * 1024)
OCR_MAX_PDF_PAGES = env_int("OCR_MAX_PDF_PAGES", 500, minimum=1)
OCR_MAX_IMAGE_PIXELS = env_int("OCR_MAX_IMAGE_PIXELS", 50_000_000, minimum=1)
OCR_PDF_DPI = env_int("OCR_PDF_DPI", 144, minimum=36, maximum=600)
OCR_MAX_RENDER_PIXELS = env_int("OCR_MAX_RENDER_PIXELS", 6_000_000, minimum=100_000)
OCR_PAGE_FORMAT = env_choice("OCR_PAGE_FORMAT", "png", ("png", "jpeg"))
OCR_PDF_TEXT_LAYER = env_choice("OCR_PDF_TEXT_LAYER", "auto", ("auto", "ocr"))
OCR_PAGE_CONCURRENCY = env_int("OCR_PAGE_CONCURRENCY", 8, minimum=1, maximum=256)
OCR_ENGINE_CONCURRENCY = env_int("OCR_ENGINE_CONCURRENCY", 0, minimum=0)  # 0: engine's own default
OCR_LOCAL_THREADS = env_int("OCR_LOCAL_THREADS", 0, minimum=0)  # 0: one per core
OCR_ENGINE_CONNECT_TIMEOUT = env_float("OCR_ENGINE_CONNECT_TIMEOUT", 5.0, minimum=0.1)
OCR_ENGINE_FIRST_TOKEN_TIMEOUT = env_float("OCR_ENGINE_FIRST_TOKEN_TIMEOUT", 180.0, minimum=0.1)
OCR_ENGINE_IDLE_TIMEOUT = env_float("OCR_ENGINE_IDLE_TIMEOUT", 60.0, minimum=0.1)
OCR_ENGINE_TOTAL_TIMEOUT = env_float("OCR_ENGINE_TOTAL_TIMEOUT", 900.0, minimum=1)
OCR_WARMUP = env_bool("OCR_WARMUP", True)
OCR_KEEP_UPLOADS = env_bool("OCR_KEEP_UPLOADS", True)
OCR_UPLOAD_RETENTION_DAYS = env_int("OCR_UPLOAD_RETENTION_DAYS", 30, minimum=0)

# Django itself must not refuse the upload before our own checks give a clear error.
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 4 * 1024 * 1024
FILE_UPLOAD_TEMP_DIR = env_str("FILE_UPLOAD_TEMP_DIR") or None

# --- Logging -------------------------------------------------------------------------------------------------

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"level": LOG_LEVEL, "propagate": True},
        "RapidOCR": {"level": "WARNING", "propagate": True},
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "pika": {"level": "WARNING"},
        "openai": {"level": "WARNING"},
    },
}

# --- Live jobs in the browser (ocr/live.py) ------------------------------------------------------------------

#: Live browser jobs store the partial text of running pages this often (a reconnecting browser starts there).
OCR_LIVE_FLUSH_SECONDS = env_float("OCR_LIVE_FLUSH_SECONDS", 1.0, minimum=0.05)
#: A live job publishes its events at most this often (one message per interval instead of one per token).
OCR_LIVE_PUBLISH_SECONDS = env_float("OCR_LIVE_PUBLISH_SECONDS", 0.05, minimum=0.0)
#: An open job page re-reads the job this often when no event arrives (and sends an SSE keep-alive).
OCR_LIVE_POLL_SECONDS = env_float("OCR_LIVE_POLL_SECONDS", 10.0, minimum=0.1)
# A follower that falls behind loses messages beyond the capacity and then catches up from the database.
CHANNEL_LAYERS["default"].setdefault("CONFIG", {})["capacity"] = 1000

# --- Metrics and monitoring (myocr/metrics.py, ocr/metrics.py) -----------------------------------------------

#: Its migrations gauges run queries in ``AppConfig.ready()``, which under ASGI is inside the event loop and fails
#: (django-prometheus issue #260); ``manage.py migrate --check`` answers the question at deploy time instead.
PROMETHEUS_EXPORT_MIGRATIONS = False
#: django-prometheus' latency histograms: a stream lasts as long as a PDF takes, up to an hour on the CPU engine.
PROMETHEUS_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    float("inf"),
)  # fmt: skip
#: Bearer token Prometheus must send to read /metrics (empty: no token needed).
METRICS_TOKEN = env_str("METRICS_TOKEN")
#: Client addresses or networks allowed to read /metrics, e.g. "127.0.0.1,10.0.0.0/8" (empty: any).
METRICS_ALLOWED_IPS = env_list("METRICS_ALLOWED_IPS", [])
try:
    import ipaddress

    for _network in METRICS_ALLOWED_IPS:
        ipaddress.ip_network(_network, strict=False)
except ValueError as _error:
    raise ImproperlyConfigured(f"METRICS_ALLOWED_IPS: {_error}") from None

# --- Limits per user and address, process heartbeats (accounts/, ocr/workers.py) -----------------------------

#: OCR jobs one user may have running at once, API and browser together (0: no limit). Staff can set a different
#: limit for one user in the admin (accounts › User limits).
OCR_USER_MAX_RUNNING_JOBS = env_int("OCR_USER_MAX_RUNNING_JOBS", 8, minimum=0)
#: Pages one user may submit per day, in ``TIME_ZONE`` (0: no limit); per-user overrides as above.
OCR_USER_DAILY_PAGES = env_int("OCR_USER_DAILY_PAGES", 2000, minimum=0)
#: Failed sign-ins (login form, admin login, /api/auth/token) allowed per user name and client address, and per
#: client address over all user names, within ``OCR_LOGIN_WINDOW_SECONDS``; then 429 until the window ends.
OCR_LOGIN_MAX_FAILURES = env_int("OCR_LOGIN_MAX_FAILURES", 10, minimum=1)
OCR_LOGIN_MAX_FAILURES_PER_IP = env_int("OCR_LOGIN_MAX_FAILURES_PER_IP", 50, minimum=1)
OCR_LOGIN_WINDOW_SECONDS = env_int("OCR_LOGIN_WINDOW_SECONDS", 15 * 60, minimum=1)
#: Registrations (form and API) allowed per client address within ``OCR_REGISTER_WINDOW_SECONDS``.
OCR_REGISTER_MAX_PER_IP = env_int("OCR_REGISTER_MAX_PER_IP", 10, minimum=1)
OCR_REGISTER_WINDOW_SECONDS = env_int("OCR_REGISTER_WINDOW_SECONDS", 60 * 60, minimum=1)
#: Each server process records that it is alive this often. The running jobs of a process silent for four
#: heartbeats (or, on the same host, of a process that no longer exists) are marked interrupted.
OCR_WORKER_HEARTBEAT_SECONDS = env_float("OCR_WORKER_HEARTBEAT_SECONDS", 15.0, minimum=0.1)

# --- The task queue (ocr/queue.py, ocr/sharing.py) -----------------------------------------------------------
#: A ``redis://`` or ``amqp://`` URL: browser uploads and the job API then run as tasks of worker processes
#: (``manage.py ocr_worker``) on any number of machines. Unset: they run in the web process that received them.
OCR_QUEUE_URL = env_str("OCR_QUEUE_URL")
if OCR_QUEUE_URL and not OCR_QUEUE_URL.startswith(("redis://", "rediss://", "amqp://", "amqps://")):
    raise ImproperlyConfigured("OCR_QUEUE_URL must be a redis:// or amqp:// URL (see README: Configuration).")
if OCR_QUEUE_URL and not REDIS_URL:
    # Events of a job run by a worker reach the browser through the channel layer, which must then span processes.
    raise ImproperlyConfigured("OCR_QUEUE_URL needs REDIS_URL: workers publish job events through Redis.")
#: The queue's name on the broker: deployments (or test runs) sharing one broker keep apart by it.
OCR_QUEUE_NAME = env_str("OCR_QUEUE_NAME", "ocr")
#: Jobs one worker process runs at once (each with up to OCR_PAGE_CONCURRENCY pages in flight).
OCR_WORKER_JOBS = env_int("OCR_WORKER_JOBS", 2, minimum=1, maximum=256)
#: A queued PDF with more pages left than this is shared: its runner asks other workers to take pages of it too
#: (ocr/sharing.py), one more worker per this many pages, up to OCR_JOB_MAX_WORKERS workers on one job.
OCR_JOB_PAGES_PER_WORKER = env_int("OCR_JOB_PAGES_PER_WORKER", 16, minimum=1)
OCR_JOB_MAX_WORKERS = env_int("OCR_JOB_MAX_WORKERS", 4, minimum=1, maximum=64)
#: How often the runner of a shared job reads which pages the other workers stored or left behind.
OCR_JOB_SHARE_POLL_SECONDS = env_float("OCR_JOB_SHARE_POLL_SECONDS", 1.0, minimum=0.05)
#: A page whose engine request failed transiently (refused, 503, a dropped stream) is tried this many times more,
#: after 1 s, 2 s, 4 s…
OCR_ENGINE_RETRIES = env_int("OCR_ENGINE_RETRIES", 2, minimum=0, maximum=10)
OCR_ENGINE_RETRY_SECONDS = env_float("OCR_ENGINE_RETRY_SECONDS", 1.0, minimum=0.0)

# --- Webhooks (ocr/webhooks.py) ------------------------------------------------------------------------------
#: Allow callback URLs on loopback, private and link-local addresses (a receiver on the same network; tests).
OCR_WEBHOOK_ALLOW_PRIVATE = env_bool("OCR_WEBHOOK_ALLOW_PRIVATE", False)
OCR_WEBHOOK_TIMEOUT_SECONDS = env_float("OCR_WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1)
#: A failed attempt is tried again after this, doubling each time (at most an hour), up to the maximum attempts.
OCR_WEBHOOK_RETRY_SECONDS = env_float("OCR_WEBHOOK_RETRY_SECONDS", 10.0, minimum=0.0)
OCR_WEBHOOK_MAX_ATTEMPTS = env_int("OCR_WEBHOOK_MAX_ATTEMPTS", 8, minimum=1, maximum=50)

#: The Content-Security-Policy of every response. The pages use no inline script or style, no eval and no
#: third-party origin: page previews are ``data:`` images, and the API docs' assets are vendored.
CONTENT_SECURITY_POLICY = env_str(
    "CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'",
)
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Django's deploy checks find the security middleware by dotted path; ours are subclasses under other paths
# (myocr/middleware.py), which re-runs those checks under its own ids, so these three are silenced.
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]
