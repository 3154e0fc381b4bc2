#!/usr/bin/env bash
# Run all of Tollgate on this machine with demo data: `make demo`. Ctrl-C stops it.
#
# Data stores, in order of preference:
#   1. DATABASE_URL / REDIS_URL when set;
#   2. Postgres on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 when they answer;
#   3. embedded ones under .run/ (Postgres on 54329, Redis on 63799), stopped again on exit.
# TOLLGATE_EMBEDDED=1 skips 1 and 2.
set -euo pipefail

# shellcheck source=scripts/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/services.sh"
cd "$REPO_ROOT"
mkdir -p "$RUN_DIR"

embedded_forced() {
	[[ "${TOLLGATE_EMBEDDED:-0}" =~ ^(1|true|yes|on)$ ]]
}

# shellcheck disable=SC2317  # called by the EXIT trap
stop_embedded() {
	[[ -n "$stripe_pid" ]] && kill "$stripe_pid" 2>/dev/null
	[[ "$uses_embedded_redis" == 1 ]] && embedded_redis_stop
	[[ "$uses_embedded_postgres" == 1 ]] && embedded_postgres_stop
	return 0
}

uses_embedded_postgres=0
uses_embedded_redis=0
stripe_pid=""
trap stop_embedded EXIT

if ! embedded_forced && [[ -n "${DATABASE_URL:-}" ]]; then
	say "Postgres: DATABASE_URL from the environment"
elif ! embedded_forced && postgres_answers 127.0.0.1 5432; then
	say "Postgres: the local server on 127.0.0.1:5432"
	DATABASE_URL=postgres://postgres@127.0.0.1:5432/tollgate
else
	uses_embedded_postgres=1
	embedded_postgres_start
	DATABASE_URL="postgres://postgres@127.0.0.1:$EMBEDDED_PG_PORT/tollgate"
fi

if ! embedded_forced && [[ -n "${REDIS_URL:-}" ]]; then
	say "Redis: REDIS_URL from the environment"
elif ! embedded_forced && redis_answers 127.0.0.1 6379; then
	say "Redis: the local server on 127.0.0.1:6379"
	REDIS_URL=redis://127.0.0.1:6379/0
else
	uses_embedded_redis=1
	embedded_redis_start
	REDIS_URL="redis://127.0.0.1:$EMBEDDED_REDIS_PORT/0"
fi

if [[ ! -s "$RUN_DIR/secret_key" ]]; then
	(umask 077 && "$VENV_PYTHON" -c 'import secrets; print(secrets.token_urlsafe(50))' >"$RUN_DIR/secret_key")
fi

export DATABASE_URL REDIS_URL
export DEBUG=true
SECRET_KEY="$(cat "$RUN_DIR/secret_key")"
export SECRET_KEY
if [[ ! -s "$RUN_DIR/key_pepper" ]]; then
	(umask 077 && "$VENV_PYTHON" -c 'import secrets; print(secrets.token_urlsafe(48))' >"$RUN_DIR/key_pepper")
fi
KEY_PEPPER="$(cat "$RUN_DIR/key_pepper")"
export KEY_PEPPER
# The portal's own OAuth2/OIDC provider signs tokens with this key (service accounts).
if [[ ! -s "$RUN_DIR/oidc_idp_key.pem" ]]; then
	(umask 077 && "$VENV_PYTHON" - >"$RUN_DIR/oidc_idp_key.pem" <<'PY'
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
print(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption()).decode(), end="")
PY
	)
fi
export OIDC_IDP_PRIVATE_KEY_FILE="$RUN_DIR/oidc_idp_key.pem"
export EMAIL_BACKEND=django.core.mail.backends.console.EmailBackend
export SITE_URL=http://localhost:8000
export PATH="$REPO_ROOT/.venv/bin:$PATH"
# Celery's broker defaults to REDIS_URL; an inherited one would point elsewhere.
unset CELERY_BROKER_URL

# Stripe: localstripe (completed by the test suite's extension), its data kept in .run/.
STRIPE_PORT=8420
export STRIPE_SECRET_KEY=sk_test_tollgate_demo
export STRIPE_PUBLISHABLE_KEY=pk_test_tollgate_demo
export STRIPE_API_BASE="http://127.0.0.1:$STRIPE_PORT"
export STRIPE_JS_URL="$STRIPE_API_BASE/js.stripe.com/v3/"
export STRIPE_WEBHOOK_SECRET=whsec_tollgate_demo
say "Stripe: localstripe on 127.0.0.1:$STRIPE_PORT"
"$VENV_PYTHON" tests/billing/localstripe_ext.py --port "$STRIPE_PORT" --store "$RUN_DIR/localstripe.pickle" \
	>"$RUN_DIR/localstripe.log" 2>&1 &
stripe_pid=$!
wait_until "localstripe" tcp_open 127.0.0.1 "$STRIPE_PORT"
# Stripe's events reach the portal's webhook endpoint, signed as Stripe signs them.
curl -fsS -o /dev/null "$STRIPE_API_BASE/_config/webhooks/tollgate" \
	-d "url=$SITE_URL/billing/stripe/webhook/" -d "secret=$STRIPE_WEBHOOK_SECRET"

"$VENV_PYTHON" scripts/ensure_database.py
say "migrating"
"$VENV_PYTHON" manage.py migrate --noinput -v 0
"$VENV_PYTHON" manage.py collectstatic --noinput -v 0
credentials="$("$VENV_PYTHON" manage.py demo_seed)"

cat <<EOF

  Tollgate is starting. Ctrl-C stops it.

    console    $SITE_URL/
    admin      $SITE_URL/admin/
    API docs   $SITE_URL/api/docs/
    health     $SITE_URL/healthz  $SITE_URL/readyz  $SITE_URL/metrics
    edge       http://localhost:8080/v1  (OpenAI-compatible; a mock model server answers behind it)

$(while IFS= read -r line; do printf '  %s\n' "$line"; done <<<"$credentials")

  Try the edge with the demo key:
    curl http://localhost:8080/v1/chat/completions -H "Authorization: Bearer \$(cat .run/demo_api_key)" \\
      -H "Content-Type: application/json" -d '{"model": "demo-chat", "messages": [{"role": "user", "content": "Hello"}]}'

  Emails (sign-up verification, invitations) are printed below by the worker.

EOF

# honcho runs in the background so that INT and TERM reach this script at once; it then
# stops its processes, and the EXIT trap stops the embedded data stores.
honcho start -f Procfile &
honcho_pid=$!
stopping=0
trap 'stopping=1; kill -TERM "$honcho_pid" 2>/dev/null || true' INT TERM
status=0
wait "$honcho_pid" || status=$?
# A signal interrupts the first wait; this one waits for honcho to finish stopping.
wait "$honcho_pid" 2>/dev/null || true
# Stopped on request is a normal end; a process that died on its own is not.
[[ "$stopping" == 1 ]] && status=0
exit "$status"
