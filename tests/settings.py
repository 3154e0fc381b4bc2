"""Settings for the test suite: a fixed test environment, then the real portal settings."""

import os

os.environ.setdefault("DEBUG", "false")
os.environ.setdefault("SECRET_KEY", "test-secret-key-" + "k" * 50)
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("SESSION_COOKIE_SECURE", "false")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tollgate")
# One Redis database per xdist worker, so that per-test flushes never collide. Always set,
# never inherited: the xdist controller imports these settings too and its environment
# is passed to the workers.
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
_redis_db = int(os.environ.get("TEST_REDIS_DB_BASE", "8")) + int(_worker.removeprefix("gw") or 0)
os.environ["REDIS_URL"] = f"{os.environ.get('TEST_REDIS_SERVER', 'redis://127.0.0.1:6379')}/{_redis_db}"
os.environ.pop("CELERY_BROKER_URL", None)
os.environ.setdefault("EMAIL_BACKEND", "django.core.mail.backends.locmem.EmailBackend")
os.environ.setdefault("CELERY_TASK_ALWAYS_EAGER", "true")
os.environ.setdefault("SITE_URL", "http://testserver")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("KEY_PEPPER", "test-pepper-" + "q" * 40)
if "OIDC_IDP_PRIVATE_KEY" not in os.environ:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    _key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    os.environ["OIDC_IDP_PRIVATE_KEY"] = _key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()

from portal.settings import *  # noqa: E402, F403

# Fast hashing keeps the suite quick; production uses Django's default PBKDF2.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
