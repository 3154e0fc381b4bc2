"""Tollgate settings. Every deploy-specific value comes from the environment (portal.env)."""

from pathlib import Path
from urllib.parse import urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from edge.streams import MAX_SHARDS, parse_shards
from portal.env import (
    env_bool,
    env_days,
    env_int,
    env_list,
    env_str,
    env_url,
    oidc_providers,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY", None)
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required when DEBUG is off")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production-" + "x" * 20
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
SITE_URL = env_url("SITE_URL", "http://localhost:8000", schemes=("http", "https")).rstrip("/")
# The product's name in account emails (greeting, subject prefix) and authenticator apps.
SITE_NAME = env_str("SITE_NAME", "Tollgate").strip()
if not SITE_NAME:
    raise ImproperlyConfigured("SITE_NAME must not be empty")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "allauth.socialaccount.providers.github",
    "allauth.mfa",
    "allauth.idp.oidc",
    "portal",
    "keys",
    "usage",
    "billing",
]

MIDDLEWARE = [
    "portal.observability.RequestObservabilityMiddleware",
    "portal.api.problems.ProblemResponseMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "portal.security.SecurityHeadersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django_ratelimit.middleware.RatelimitMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
ASGI_APPLICATION = "portal.asgi.application"

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
                "portal.context_processors.console",
                "billing.context_processors.billing_standing",
            ],
        },
    },
]

# --- Data stores -----------------------------------------------------------------------
DATABASE_URL = env_url(
    "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tollgate", schemes=("postgres", "postgresql")
)
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
DATABASES["default"]["ENGINE"] = "django.db.backends.postgresql"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_url("REDIS_URL", "redis://127.0.0.1:6379/0", schemes=("redis", "rediss", "unix"))
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "tg:cache",
    }
}
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

# --- Auth -------------------------------------------------------------------------------
AUTH_USER_MODEL = "portal.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "console-home"

ACCOUNT_ADAPTER = "portal.auth.AccountAdapter"
SOCIALACCOUNT_ADAPTER = "portal.auth.SocialAccountAdapter"
MFA_ADAPTER = "portal.auth.MFAAdapter"
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_DEFAULT_HTTP_PROTOCOL = SITE_URL.split(":", 1)[0]
# login_failed: "ip" is the client address, "key" is address + account (see
# AccountAdapter._get_login_attempts_cache_key), so nobody can lock out another's account.
ACCOUNT_RATE_LIMITS = {
    "login_failed": "10/m/ip,5/5m/key",
    "signup": "20/m/ip",
    "confirm_email": "1/3m/key",
    "reset_password": "20/m/ip,5/m/key",
}
# The client address is REMOTE_ADDR for allauth as for the audit log and django-ratelimit:
# X-Forwarded-For is not read, the proxy in front sets REMOTE_ADDR.
ALLAUTH_TRUSTED_PROXY_COUNT = 0
SOCIALACCOUNT_EMAIL_AUTHENTICATION = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION_AUTO_CONNECT = True
SOCIALACCOUNT_AUTO_SIGNUP = True
SOCIALACCOUNT_EMAIL_VERIFICATION = "none"
SOCIALACCOUNT_STORE_TOKENS = False
SOCIALACCOUNT_PROVIDERS = {
    "openid_connect": {"APPS": oidc_providers(), "OAUTH_PKCE_ENABLED": True},
}
GITHUB_CLIENT_ID = env_str("GITHUB_CLIENT_ID", "")
GITHUB_CLIENT_SECRET = env_str("GITHUB_CLIENT_SECRET", "")
if bool(GITHUB_CLIENT_ID) != bool(GITHUB_CLIENT_SECRET):
    raise ImproperlyConfigured("GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET must be set together")
if GITHUB_CLIENT_ID:
    SOCIALACCOUNT_PROVIDERS["github"] = {
        "APPS": [{"client_id": GITHUB_CLIENT_ID, "secret": GITHUB_CLIENT_SECRET}],
        "SCOPE": ["user:email"],
    }
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = SITE_NAME

# Brute-force protection beyond allauth's own limits (django-ratelimit, per client IP).
RATELIMIT_USE_CACHE = "default"
RATELIMIT_VIEW = "portal.views.ratelimited"
RATELIMIT_LOGIN = env_str("RATELIMIT_LOGIN", "20/m")
RATELIMIT_SIGNUP = env_str("RATELIMIT_SIGNUP", "10/m")
RATELIMIT_INVITATION = env_str("RATELIMIT_INVITATION", "30/m")

INVITATION_TTL_HOURS = env_int("INVITATION_TTL_HOURS", 72, minimum=1)

# --- API keys ---------------------------------------------------------------------------
# The pepper keys the HMAC under which key secrets are stored; the edge needs the same value.
KEY_PEPPER = env_str("KEY_PEPPER", "")
if not KEY_PEPPER:
    if not DEBUG:
        raise ImproperlyConfigured("KEY_PEPPER is required when DEBUG is off (32+ random characters)")
    KEY_PEPPER = "insecure-development-pepper-" + "p" * 16
if len(KEY_PEPPER) < 32:
    raise ImproperlyConfigured("KEY_PEPPER must be at least 32 characters")
KEY_ROTATION_DEFAULT_GRACE_SECONDS = 24 * 3600
KEY_ROTATION_MAX_GRACE_SECONDS = 7 * 24 * 3600
EDGE_REDIS_URL = env_url("EDGE_REDIS_URL", None, schemes=("redis", "rediss", "unix"))
# The edge's data plane (key records, prices, limits, usage streams) on a Redis Cluster:
# EDGE_REDIS_URL names one of its nodes. The cache and Celery stay on REDIS_URL, one Redis.
EDGE_REDIS_CLUSTER = env_bool("EDGE_REDIS_CLUSTER", False)
if EDGE_REDIS_CLUSTER:
    if not EDGE_REDIS_URL or urlparse(EDGE_REDIS_URL).scheme == "unix":
        raise ImproperlyConfigured(
            "EDGE_REDIS_CLUSTER needs EDGE_REDIS_URL: a redis:// URL of a cluster node"
        )
    if urlparse(EDGE_REDIS_URL).path.strip("/") not in ("", "0"):
        raise ImproperlyConfigured(
            "EDGE_REDIS_CLUSTER: a Redis Cluster has only database 0; remove it from the URL"
        )
EDGE_PUBLIC_URL = env_url("EDGE_PUBLIC_URL", "http://localhost:8080", schemes=("http", "https")).rstrip("/")

# --- Usage metering ---------------------------------------------------------------------
USAGE_STREAM = "tg:usage"
USAGE_DEAD_LETTER_STREAM = "tg:usage:dead"
# Usage streams, by organization (edge/streams.py): the same number as the edges'
# usage_stream_shards. A consumer reads the shards listed in USAGE_CONSUMER_SHARDS, by default
# all of them; every shard must be read by at least one consumer.
USAGE_STREAM_SHARDS = env_int("USAGE_STREAM_SHARDS", 1, minimum=1)
if USAGE_STREAM_SHARDS > MAX_SHARDS:
    raise ImproperlyConfigured(f"USAGE_STREAM_SHARDS must be <= {MAX_SHARDS}, got {USAGE_STREAM_SHARDS}")
try:
    USAGE_CONSUMER_SHARDS = parse_shards(env_str("USAGE_CONSUMER_SHARDS", ""), USAGE_STREAM_SHARDS)
except ValueError as exc:
    raise ImproperlyConfigured(f"USAGE_CONSUMER_SHARDS {exc}") from None
USAGE_CONSUMER_GROUP = env_str("USAGE_CONSUMER_GROUP", "ingest")
USAGE_BATCH_SIZE = env_int("USAGE_BATCH_SIZE", 2000, minimum=1)
USAGE_BATCH_MAX_WAIT_MS = env_int("USAGE_BATCH_MAX_WAIT_MS", 200, minimum=1)
USAGE_CLAIM_IDLE_MS = env_int("USAGE_CLAIM_IDLE_MS", 60_000, minimum=1000)
# A replica keeps its name across restarts (StatefulSet pod name, systemd instance...) so that
# it re-reads its own pending entries at once; unset, the host name.
USAGE_CONSUMER_NAME = env_str("USAGE_CONSUMER_NAME", "")
USAGE_DEAD_CONSUMER_IDLE_MS = env_int(
    "USAGE_DEAD_CONSUMER_IDLE_MS", 10 * USAGE_CLAIM_IDLE_MS, minimum=USAGE_CLAIM_IDLE_MS
)
USAGE_LATE_WINDOW_DAYS = env_int("USAGE_LATE_WINDOW_DAYS", 35, minimum=1)
USAGE_RAW_RETENTION_MONTHS = env_int("USAGE_RAW_RETENTION_MONTHS", 13, minimum=1)
# The request log (/o/<slug>/usage/requests/) shows this many days of raw events.
USAGE_REQUEST_LOG_DAYS = env_int("USAGE_REQUEST_LOG_DAYS", 30, minimum=1)

# --- Billing -------------------------------------------------------------------------------
# A month closes this long after it ends, so that the edge's last events of the month land in it.
BILLING_CLOSE_GRACE_MINUTES = env_int("BILLING_CLOSE_GRACE_MINUTES", 60, minimum=0)
# Dunning: an organization whose payment failed is suspended this many days later unless it
# pays, and its open invoices are charged again on these days (counted from the failure).
BILLING_GRACE_DAYS = env_int("BILLING_GRACE_DAYS", 14, minimum=1)
BILLING_RETRY_DAYS = env_days("BILLING_RETRY_DAYS", ["1", "3", "5", "7"], before=BILLING_GRACE_DAYS)

# --- OAuth2 / OpenID Connect provider (machine tokens for the API) -----------------------
IDP_OIDC_PRIVATE_KEY = env_str("OIDC_IDP_PRIVATE_KEY", "")
_idp_key_file = env_str("OIDC_IDP_PRIVATE_KEY_FILE", "")
if _idp_key_file:
    try:
        IDP_OIDC_PRIVATE_KEY = Path(_idp_key_file).read_text()
    except OSError as exc:
        raise ImproperlyConfigured(f"OIDC_IDP_PRIVATE_KEY_FILE cannot be read: {exc}") from None
IDP_OIDC_ACCESS_TOKEN_EXPIRES_IN = env_int("OIDC_IDP_ACCESS_TOKEN_SECONDS", 900, minimum=60)

# --- Email ------------------------------------------------------------------------------
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_FILE_PATH = env_str("EMAIL_FILE_PATH", str(BASE_DIR / ".run" / "mail"))
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Tollgate <no-reply@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Celery -----------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- Stripe (billing/stripe_adapter.py is the only module that talks to it) ---------------
# Empty: nothing is pushed to Stripe (pushing an invoice fails with a BillingError).
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY", "")
if STRIPE_SECRET_KEY and not STRIPE_SECRET_KEY.startswith(("sk_", "rk_")):
    raise ImproperlyConfigured("STRIPE_SECRET_KEY must be a secret (sk_...) or restricted (rk_...) key")
# Another address only for a Stripe stand-in such as localstripe in tests and the demo.
STRIPE_API_BASE = env_url("STRIPE_API_BASE", "https://api.stripe.com", schemes=("http", "https")).rstrip("/")
# The signing secret of the webhook endpoint registered in Stripe; empty: webhooks are refused (503).
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "")
if STRIPE_WEBHOOK_SECRET and not STRIPE_WEBHOOK_SECRET.startswith("whsec_"):
    raise ImproperlyConfigured("STRIPE_WEBHOOK_SECRET must be an endpoint signing secret (whsec_...)")
# Stripe.js collects card numbers in the browser, so they never reach this server. It is the
# one script loaded from another host (Stripe requires it be loaded from Stripe's own).
STRIPE_PUBLISHABLE_KEY = env_str("STRIPE_PUBLISHABLE_KEY", "")
if STRIPE_PUBLISHABLE_KEY and not STRIPE_PUBLISHABLE_KEY.startswith("pk_"):
    raise ImproperlyConfigured("STRIPE_PUBLISHABLE_KEY must be a publishable key (pk_...)")
STRIPE_JS_URL = env_url("STRIPE_JS_URL", "https://js.stripe.com/v3/", schemes=("http", "https"))

# --- REST API ---------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "portal.api.authentication.ServiceAccountTokenAuthentication",
        "portal.api.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["portal.api.permissions.RolePermission"],
    "DEFAULT_THROTTLE_CLASSES": ["portal.api.throttling.CredentialRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"credential": env_str("API_RATE_LIMIT", "600/min")},
    "DEFAULT_PAGINATION_CLASS": "portal.api.pagination.CursorPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "portal.api.problems.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
}
API_IDEMPOTENCY_TTL_HOURS = env_int("API_IDEMPOTENCY_TTL_HOURS", 24, minimum=1)
SPECTACULAR_SETTINGS = {
    "TITLE": "Tollgate API",
    "DESCRIPTION": "Manage organizations, members, API keys and usage.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "oauth2": {
                "type": "oauth2",
                "flows": {"clientCredentials": {"tokenUrl": "/identity/o/api/token", "scopes": {}}},
            }
        }
    },
    "SECURITY": [{"oauth2": []}, {"cookieAuth": []}],
    "ENUM_NAME_OVERRIDES": {
        "RoleEnum": "portal.roles.Role",
        "OrganizationStatusEnum": "portal.models.OrganizationStatus",
        "KeyStatusEnum": "keys.models.KeyStatus",
        "KeyEnvironmentEnum": "keys.models.KeyEnvironment",
    },
}

# --- Static files, i18n -----------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / ".run" / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Security ---------------------------------------------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]

# --- Observability ----------------------------------------------------------------------
SENTRY_DSN = env_str("SENTRY_DSN", "")
SENTRY_ENVIRONMENT = env_str("SENTRY_ENVIRONMENT", "production" if not DEBUG else "development")
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise ImproperlyConfigured(f"LOG_LEVEL must be a logging level name, got {LOG_LEVEL!r}")
# Requests under these path prefixes get no JSON log line (they are still counted in /metrics).
REQUEST_LOG_SKIP_PREFIXES = tuple(env_list("REQUEST_LOG_SKIP_PREFIXES", ["/static/"]))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "portal.observability.JsonFormatter"}},
    "filters": {"task_arguments": {"()": "portal.observability.TaskArgumentsFilter"}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "django.server": {"level": "WARNING"},
        # Where Celery logs a task's arguments (received, succeeded), eager or in a worker.
        "celery.app.trace": {"filters": ["task_arguments"]},
        "celery.worker.strategy": {"filters": ["task_arguments"]},
        # The Stripe SDK logs every request and response at INFO; failures reach us as errors.
        "stripe": {"level": "WARNING"},
    },
}
# /metrics: the bearer of this token, or (unset) only clients on this host, as on the edge.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
if METRICS_TOKEN and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("METRICS_TOKEN must be at least 16 characters (or unset: loopback only)")
# A Celery worker serves its metrics on this port (0: none). The port has no token: keep it on a
# network only Prometheus reaches (deploy/k8s NetworkPolicy), or on the default loopback address.
WORKER_METRICS_PORT = env_int("WORKER_METRICS_PORT", 0, minimum=0)
WORKER_METRICS_HOST = env_str("WORKER_METRICS_HOST", "127.0.0.1")

if SENTRY_DSN:
    from portal.observability import sentry_init

    sentry_init(SENTRY_DSN, SENTRY_ENVIRONMENT)
