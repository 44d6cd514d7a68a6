"""Prism settings: one file, driven by environment variables.

With nothing set you get the embedded default: SQLite (WAL) and a file-based Celery
broker under ``var/``, so one machine runs everything with no server to install. Set
``DATABASE_URL`` and ``CELERY_BROKER_URL`` for production (PostgreSQL and Redis).

A malformed value raises ``ImproperlyConfigured`` naming the variable, so a typo in a
deployment fails at start-up rather than at the first request.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("PRISM_VAR_DIR", BASE_DIR / "var"))


def envstr(name: str, default: str) -> str:
    return os.environ.get(name, default)


def envbool(name: str, default: str) -> bool:
    value = os.environ.get(name, default).strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {value!r}")


def envint(name: str, default: str) -> int:
    value = os.environ.get(name, default)
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def envfloat(name: str, default: str) -> float:
    value = os.environ.get(name, default)
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ImproperlyConfigured(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def envcount(name: str, default: str, *, minimum: int = 0) -> int:
    value = envint(name, default)
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def envnetworks(name: str, default: str) -> list[str]:
    """Comma-separated networks in CIDR form (``10.0.0.0/8,::1/128``); an address alone
    is a network of one. Host bits set below the prefix (``10.0.0.1/8``) are refused:
    they are usually a typo for a narrower network."""
    networks = []
    for item in envlist(name, default):
        try:
            networks.append(str(ipaddress.ip_network(item)))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name} must list networks in CIDR form (e.g. 10.0.0.0/8), got {item!r}"
            ) from None
    return networks


PREPARED_STATEMENTS = envbool("PRISM_PREPARED_STATEMENTS", "true")


def database_from_url(name: str, url: str) -> dict:
    """Translate a ``DATABASE_URL`` into a Django ``DATABASES`` entry.

    Supported: ``postgres://`` / ``postgresql://`` (psycopg 3) and ``sqlite:///path``.
    """
    parts = urlsplit(url)
    shown = _without_password(url)
    if parts.scheme in {"postgres", "postgresql"}:
        options = dict(parse_qsl(parts.query))
        dbname = unquote(parts.path.lstrip("/"))
        if not dbname:
            raise ImproperlyConfigured(f"{name} names no database: {shown}")
        try:
            port = parts.port
        except ValueError:
            raise ImproperlyConfigured(f"{name} has an invalid port: {shown}") from None
        query_port = options.pop("port", "")
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": dbname,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            # An empty host means the local Unix socket; a `host` query overrides it.
            "HOST": options.pop("host", parts.hostname or ""),
            "PORT": str(port or query_port),
            "CONN_MAX_AGE": envint("DATABASE_CONN_MAX_AGE", "60"),
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": {
                # A database that is unreachable (host down, packets dropped) must fail
                # a request within seconds, as a 503 (controlplane.outage), rather than
                # hold a web thread until the client gives up.
                "connect_timeout": envint("DATABASE_CONNECT_TIMEOUT", "3"),
                # Django's default disables prepared statements; this threshold keeps
                # automatic preparation off but lets the session hot path prepare its
                # statements explicitly (controlplane.db). Behind a pooler
                # without prepared-statement support, set PRISM_PREPARED_STATEMENTS=false.
                "prepare_threshold": 2**31 - 1 if PREPARED_STATEMENTS else None,
                **options,
            },
            "TEST": {"NAME": f"test_{dbname}"},
        }
    if parts.scheme == "sqlite":
        path = unquote(parts.path)
        if url.startswith("sqlite:////"):
            path = "/" + path.lstrip("/")
        elif path.startswith("/"):
            path = str(BASE_DIR / path.lstrip("/"))
        return sqlite_database(path or str(VAR_DIR / "prism.sqlite3"))
    raise ImproperlyConfigured(
        f"{name} must start with postgres://, postgresql:// or sqlite:///, got {shown}"
    )


def _without_password(url: str) -> str:
    """The URL for an error message: start-up errors end up in logs, passwords must not."""
    parts = urlsplit(url)
    if parts.password is None:
        return repr(url)
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    host = parts.netloc.rpartition("@")[2]
    return repr(urlunsplit(parts._replace(netloc=f"{user}:***@{host}")))


def sqlite_database(path: str) -> dict:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": path,
        "OPTIONS": {
            # IMMEDIATE takes the write lock when a transaction opens, so two writers
            # queue instead of one failing with "database is locked" on upgrade.
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": (
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;"
            ),
        },
    }


def generated_secret_key(var_dir: Path, wait_s: float = 5.0) -> str:
    """The install's own key, in ``var_dir/secret_key``, made on its first start.

    1. Create the file exclusively (``O_CREAT | O_EXCL``, mode 0600): of several
       processes starting at once (web workers, the worker, the beat) exactly one
       succeeds, and it writes a fresh key and a newline in one ``write``.
    2. Every other process reads the file, waiting for the winner's line to be whole.
    3. A file still without a whole line after ``wait_s`` (a start that died between
       creating and writing it) stops start-up, naming the file.
    """
    var_dir.mkdir(parents=True, exist_ok=True)
    path = var_dir / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        key = secrets.token_urlsafe(64)
        try:
            os.write(fd, f"{key}\n".encode())
        finally:
            os.close(fd)
        return key
    deadline = time.monotonic() + wait_s
    while True:
        text = path.read_text()
        if text.endswith("\n") and text.strip():
            return text.strip()
        if time.monotonic() >= deadline:
            raise ImproperlyConfigured(
                f"{path} holds no whole secret key (did a first start die writing it?): "
                "delete the file to make a new key, or set SECRET_KEY"
            )
        time.sleep(0.05)


DEBUG = envbool("DEBUG", "false")
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    # Production (PostgreSQL, DEBUG off) runs on many machines, which must share one key
    # that an operator chose: a key generated on one of them would be that machine's.
    if not DEBUG and os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise ImproperlyConfigured("SECRET_KEY must be set when running against PostgreSQL")
    # Otherwise a key of this install's own, kept under var/ so sessions survive restarts.
    SECRET_KEY = generated_secret_key(VAR_DIR)

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "controlplane",
    "versions",
    "metrics",
    "rollouts",
    "events",
    "dashboard",
]

MIDDLEWARE = [
    "controlplane.middleware.RequestIdMiddleware",
    "controlplane.middleware.ApiErrorsAsJsonMiddleware",
    "controlplane.outage.DatabaseOutageMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "controlplane.middleware.UnstorableInputMiddleware",
    "controlplane.middleware.BodySizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "controlplane.middleware.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
WSGI_APPLICATION = "controlplane.wsgi.application"

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
    }
]

if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": database_from_url("DATABASE_URL", os.environ["DATABASE_URL"])}
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {"default": sqlite_database(str(VAR_DIR / "prism.sqlite3"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "dashboard:login"
LOGIN_REDIRECT_URL = "dashboard:home"
LOGOUT_REDIRECT_URL = "dashboard:login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(VAR_DIR / "staticfiles")))
with contextlib.suppress(OSError):  # WhiteNoise warns on every start when it is missing.
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Request bodies are bounded: a version tuple is configuration, not data. Larger
# bodies get 413 from BodySizeLimitMiddleware before any parsing happens.
PRISM_MAX_BODY_BYTES = envint("PRISM_MAX_BODY_BYTES", str(1024 * 1024))
DATA_UPLOAD_MAX_MEMORY_SIZE = PRISM_MAX_BODY_BYTES

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "controlplane.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["controlplane.auth.RolePermission"],
    "DEFAULT_PARSER_CLASSES": ["controlplane.api.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "controlplane.api.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Prism API",
    "DESCRIPTION": "Control plane for rainbow deployments of LLM agent fleets.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "COMPONENT_SPLIT_REQUEST": True,
    # Several answers have a "state"; each kind of state gets its own, named enum.
    "ENUM_NAME_OVERRIDES": {
        "SessionStateEnum": "rollouts.models.SessionState",
        "RolloutStateEnum": "rollouts.models.RolloutState",
        "EventTypeEnum": "events.models.EventType",
        "DeliveryStatusEnum": "events.models.DeliveryStatus",
        "VersionStateEnum": ["inactive", "active", "draining", "drained"],
        "LayerEnum": ["code", "model", "prompts", "tools"],
        "PromptPartStatusEnum": ["added", "removed", "unchanged", "modified"],
    },
    # Swagger UI's assets come from the sidecar package: the docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # Swagger UI would otherwise link its validator badge to validator.swagger.io.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "REDOC_DIST": "SIDECAR",
}

# Celery: a file-based broker under var/ by default, Redis in production.
CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", "filesystem://")
# Redis hands an unacknowledged message to another worker once it has been out this
# long: the time after which a task whose worker died (SIGKILL, OOM, a lost machine) runs
# again. It must exceed the longest task; ours take seconds.
PRISM_BROKER_VISIBILITY_TIMEOUT_S = envint("PRISM_BROKER_VISIBILITY_TIMEOUT_S", "300")
if PRISM_BROKER_VISIBILITY_TIMEOUT_S < 1:
    raise ImproperlyConfigured("PRISM_BROKER_VISIBILITY_TIMEOUT_S must be at least 1 second")
if CELERY_BROKER_URL == "filesystem://":
    _queue_dir = VAR_DIR / "celery"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir / "queue"),
        "data_folder_out": str(_queue_dir / "queue"),
        "processed_folder": str(_queue_dir / "processed"),
        "control_folder": str(_queue_dir / "control"),  # kombu's default is ./control
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": PRISM_BROKER_VISIBILITY_TIMEOUT_S,
        # How often a worker looks for messages whose visibility timed out: every
        # quarter of the timeout, at most every 10 s, and each time it looks (kombu's
        # default scans on every tenth look only, so about every 100 s).
        "unacked_restore_interval": max(1, min(10, PRISM_BROKER_VISIBILITY_TIMEOUT_S // 4)),
        "unacked_restore_throttle": 1,
        # A broker that vanishes without closing the connection must not hang a publish.
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
    }
CELERY_TASK_IGNORE_RESULT = True
# At-least-once: a message is acknowledged when its task has finished, and a task whose
# pool process died is put back rather than dropped. Tasks are idempotent, so a second
# run of one that had already applied its change changes nothing.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# When the broker connection drops, the messages of running tasks go back to the queue,
# so those tasks are cancelled rather than finished twice.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker whose broker went away waits for it as long as it takes (None: forever),
# instead of exiting after Celery's default of 100 attempts.
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_TIMEZONE = "UTC"
# Test only (tests/e2e/test_faults.py): rollouts.tasks.apply_transition sleeps this many
# seconds after its change has committed and before it returns (only when it applied
# one), so that a test can kill the worker inside that window. 0, the default, is off;
# never set it in production.
PRISM_TEST_ONLY_PAUSE_AFTER_TRANSITION_S = envint("PRISM_TEST_ONLY_PAUSE_AFTER_TRANSITION_S", "0")
PRISM_BEAT_SECONDS = envint("PRISM_BEAT_SECONDS", "5")
# GET /api/health/ answers 503 once the beat's last tick is older than this.
PRISM_BEAT_LATE_S = envint("PRISM_BEAT_LATE_S", str(3 * PRISM_BEAT_SECONDS))
# The beat's fan-out sends its per-agent work (drain passes, evaluations, survival
# estimates, retention) in batches of this many agents or rollouts per task.
PRISM_BEAT_BATCH = envint("PRISM_BEAT_BATCH", "10")
if PRISM_BEAT_BATCH < 1:
    raise ImproperlyConfigured("PRISM_BEAT_BATCH must be at least 1")
PRISM_SOURCE_POLL_SECONDS = envint("PRISM_SOURCE_POLL_SECONDS", "30")
# How often the beat evaluates each running rollout's gates.
PRISM_EVALUATE_SECONDS = envint("PRISM_EVALUATE_SECONDS", "10")
# A metric source failing this many polls in a row halts its agent's running rollout
# (Argo Rollouts' consecutive-error limit).
PRISM_SOURCE_ERROR_LIMIT = envint("PRISM_SOURCE_ERROR_LIMIT", "4")
# The error budget of one rollout, all its gates and the sample-ratio check together, at
# every look: the chance that a candidate as good as its baseline is wrongly halted.
PRISM_GATE_ALPHA = 0.05
# A pin id is counted into the metric rollups once it has been visible this long, so an
# insert that took a lower id and committed later is not skipped.
PRISM_PIN_SETTLE_S = envint("PRISM_PIN_SETTLE_S", "10")
# The drain ETA's survival estimate: sessions live at some point in the last
# PRISM_SURVIVAL_WINDOW_S seconds, at most PRISM_SURVIVAL_SAMPLE ended ones of them read
# per agent (a sample stratified over the window), recomputed by the beat every
# PRISM_SURVIVAL_SECONDS.
PRISM_SURVIVAL_WINDOW_S = envint("PRISM_SURVIVAL_WINDOW_S", str(7 * 86400))
PRISM_SURVIVAL_SAMPLE = envint("PRISM_SURVIVAL_SAMPLE", "5000")
PRISM_SURVIVAL_SECONDS = envint("PRISM_SURVIVAL_SECONDS", "60")
for _name in ("PRISM_SURVIVAL_WINDOW_S", "PRISM_SURVIVAL_SAMPLE", "PRISM_SURVIVAL_SECONDS"):
    if globals()[_name] < 1:
        raise ImproperlyConfigured(f"{_name} must be at least 1")
# What metrics reads sessions through (metrics.feed): rollouts sits above metrics.
PRISM_SESSION_FEED = "rollouts.feed"
# Webhooks (events/): a POST's timeout, the retry backoff (the ceiling doubles from the
# base up to the cap, the wait drawn from its upper half), the attempts before a
# delivery fails, and how often the beat sweeps due deliveries. Loopback, private and
# other non-public addresses are refused unless PRISM_WEBHOOKS_ALLOW_PRIVATE is true.
PRISM_WEBHOOKS_ALLOW_PRIVATE = envbool("PRISM_WEBHOOKS_ALLOW_PRIVATE", "false")
PRISM_WEBHOOK_TIMEOUT_S = envfloat("PRISM_WEBHOOK_TIMEOUT_S", "5")
PRISM_WEBHOOK_BACKOFF_BASE_S = envfloat("PRISM_WEBHOOK_BACKOFF_BASE_S", "10")
PRISM_WEBHOOK_BACKOFF_CAP_S = envfloat("PRISM_WEBHOOK_BACKOFF_CAP_S", "3600")
PRISM_WEBHOOK_MAX_ATTEMPTS = envint("PRISM_WEBHOOK_MAX_ATTEMPTS", "8")
PRISM_WEBHOOK_SWEEP_SECONDS = envint("PRISM_WEBHOOK_SWEEP_SECONDS", str(PRISM_BEAT_SECONDS))
if PRISM_WEBHOOK_TIMEOUT_S <= 0 or PRISM_WEBHOOK_MAX_ATTEMPTS < 1:
    raise ImproperlyConfigured(
        "PRISM_WEBHOOK_TIMEOUT_S must be above 0 and PRISM_WEBHOOK_MAX_ATTEMPTS at least 1"
    )


# Retention (rollouts.retention): ended sessions with their outcomes, the looks at
# closed rollouts, and fleet snapshots older than this many days are deleted by the
# beat; 0 keeps them forever. Rollups, the routing log and the audit trail are kept.
PRISM_RETAIN_SESSIONS_DAYS = envcount("PRISM_RETAIN_SESSIONS_DAYS", "90")
PRISM_RETAIN_EVALUATIONS_DAYS = envcount("PRISM_RETAIN_EVALUATIONS_DAYS", "90")
PRISM_RETAIN_SNAPSHOTS_DAYS = envcount("PRISM_RETAIN_SNAPSHOTS_DAYS", "90")
# How often it runs, and at most how much it deletes per agent and kind in one run:
# PRISM_RETENTION_BATCHES statements of PRISM_RETENTION_BATCH rows, each its own
# short transaction.
PRISM_RETENTION_SECONDS = envcount("PRISM_RETENTION_SECONDS", "60", minimum=1)
PRISM_RETENTION_BATCH = envcount("PRISM_RETENTION_BATCH", "5000", minimum=1)
PRISM_RETENTION_BATCHES = envcount("PRISM_RETENTION_BATCHES", "4", minimum=1)
CELERY_BEAT_SCHEDULE = {
    "sweep-webhook-deliveries": {
        "task": "events.tasks.sweep_deliveries",
        "schedule": float(PRISM_WEBHOOK_SWEEP_SECONDS),
        "options": {"expires": float(PRISM_WEBHOOK_SWEEP_SECONDS)},
    },
    "enforce-drain-policies": {
        "task": "rollouts.tasks.enforce_drain_policies",
        "schedule": float(PRISM_BEAT_SECONDS),
        "options": {"expires": float(PRISM_BEAT_SECONDS)},
    },
    "evaluate-rollouts": {
        "task": "rollouts.tasks.evaluate_rollouts",
        "schedule": float(PRISM_EVALUATE_SECONDS),
        "options": {"expires": float(PRISM_EVALUATE_SECONDS)},
    },
    "record-fleet-snapshots": {
        "task": "rollouts.tasks.record_fleet_snapshots",
        "schedule": float(PRISM_BEAT_SECONDS),
        "options": {"expires": float(PRISM_BEAT_SECONDS)},
    },
    "beat-tick": {
        "task": "controlplane.tasks.beat_tick",
        "schedule": float(PRISM_BEAT_SECONDS),
        "options": {"expires": float(PRISM_BEAT_SECONDS)},
    },
    "count-assignments": {
        "task": "metrics.tasks.count_assignments",
        "schedule": float(PRISM_BEAT_SECONDS),
        "options": {"expires": float(PRISM_BEAT_SECONDS)},
    },
    "estimate-survival": {
        "task": "rollouts.tasks.estimate_survival",
        "schedule": float(PRISM_SURVIVAL_SECONDS),
        "options": {"expires": float(PRISM_SURVIVAL_SECONDS)},
    },
    "apply-retention": {
        "task": "rollouts.tasks.apply_retention",
        "schedule": float(PRISM_RETENTION_SECONDS),
        "options": {"expires": float(PRISM_RETENTION_SECONDS)},
    },
    "poll-metric-sources": {
        "task": "metrics.tasks.poll_sources",
        "schedule": float(PRISM_SOURCE_POLL_SECONDS),
        "options": {"expires": float(PRISM_SOURCE_POLL_SECONDS)},
    },
}

# GET /metrics (rollouts.exposition) answers a scrape that presents this bearer token, or
# one that comes straight from an allowed network. Unset: no token is accepted. Only
# loopback is allowed by default; behind a proxy on the same machine every request comes
# from loopback, so a request that carries a forwarding header never counts as coming
# from the network (it must present the token).
PRISM_METRICS_TOKEN = envstr("PRISM_METRICS_TOKEN", "").strip()
if PRISM_METRICS_TOKEN and len(PRISM_METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("PRISM_METRICS_TOKEN must be at least 16 characters long")
PRISM_METRICS_ALLOW_NETWORKS = envnetworks("PRISM_METRICS_ALLOW_NETWORKS", "127.0.0.1/32,::1/128")

# Production hardening; `manage.py check --deploy` passes with DEBUG off.
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", "false")
# Only a proxy that sets X-Forwarded-Proto itself (dropping the client's) may be
# believed: trusted unasked, the header lets any client claim its request was HTTPS.
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https")
    if envbool("PRISM_TRUST_X_FORWARDED_PROTO", "false")
    else None
)
SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", "false")
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", "0")
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
