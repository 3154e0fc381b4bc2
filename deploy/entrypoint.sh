#!/usr/bin/env bash
# Start one Tollgate process in the image: the first argument names it, the rest is passed on.
#
#   web      Django (console, /api/v1, /admin, webhooks) under gunicorn on WEB_PORT (8000)
#   edge     the OpenAI-compatible sidecar on EDGE_PORT (8080), config EDGE_CONFIG
#   ingest   the usage stream consumer; metrics on INGEST_METRICS_PORT (9100)
#   worker   Celery worker; metrics on WORKER_METRICS_PORT (9101)
#   beat     Celery beat: run exactly one
#   mock     the mock model server on MOCK_PORT (9001), models MOCK_MODELS
#   migrate  apply database migrations once, then exit
#   healthcheck  probe the process this container started (the image's HEALTHCHECK)
#
# TOLLGATE_DRY_RUN=1 prints the command instead of running it (the tests check the dispatch).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The healthcheck runs in another process: it learns from this file what to probe.
STATE_FILE="${TOLLGATE_STATE_FILE:-/tmp/tollgate-process}"

web_port="${WEB_PORT:-8000}"
edge_port="${EDGE_PORT:-8080}"
ingest_metrics_port="${INGEST_METRICS_PORT:-9100}"
worker_metrics_port="${WORKER_METRICS_PORT:-9101}"
mock_port="${MOCK_PORT:-9001}"

usage() {
	echo "usage: entrypoint.sh web|edge|ingest|worker|beat|mock|migrate|healthcheck [arguments...]" >&2
	exit 64
}

# gunicorn and the Celery pool fork: each child writes its samples here, /metrics adds them up.
multiprocess_metrics() {
	local dir="${TMPDIR:-/tmp}/tollgate-metrics-$1"
	if [[ "${TOLLGATE_DRY_RUN:-0}" != 1 ]]; then
		rm -rf "$dir"
		mkdir -p "$dir"
	fi
	export PROMETHEUS_MULTIPROC_DIR="$dir"
}

# GET a local URL; Host: localhost so that Django's ALLOWED_HOSTS (which must list it) accepts it.
probe() {
	python - "$1" <<'PY'
import sys
import urllib.request

request = urllib.request.Request(sys.argv[1], headers={"Host": "localhost"})
with urllib.request.urlopen(request, timeout=4) as response:
    sys.exit(0 if response.status == 200 else 1)
PY
}

healthcheck() {
	local process
	process="$(cat "$STATE_FILE" 2>/dev/null || true)"
	case "$process" in
	web) probe "http://127.0.0.1:${web_port}/healthz" ;;
	edge) probe "http://127.0.0.1:${edge_port}/healthz" ;;
	ingest) probe "http://127.0.0.1:${ingest_metrics_port}/metrics" ;;
	worker) probe "http://127.0.0.1:${worker_metrics_port}/metrics" ;;
	mock) probe "http://127.0.0.1:${mock_port}/healthz" ;;
	# beat has no port: it is healthy while it runs, and it is this container's only process.
	beat | migrate) exit 0 ;;
	*)
		echo "healthcheck: no process started in this container" >&2
		exit 1
		;;
	esac
}

[[ $# -ge 1 ]] || usage
process="$1"
shift

case "$process" in
web)
	multiprocess_metrics web
	command=(gunicorn portal.wsgi -b "0.0.0.0:${web_port}" --workers "${WEB_WORKERS:-2}"
		--threads "${WEB_THREADS:-4}")
	;;
edge)
	command=(python -m edge --config "${EDGE_CONFIG:-deploy/edge.example.yaml}" --host 0.0.0.0
		--port "$edge_port")
	;;
ingest)
	command=(python manage.py ingest_usage --metrics-port "$ingest_metrics_port" --metrics-host 0.0.0.0)
	;;
worker)
	multiprocess_metrics worker
	export WORKER_METRICS_PORT="$worker_metrics_port" WORKER_METRICS_HOST=0.0.0.0
	command=(celery -A portal worker -l info --concurrency "${WORKER_CONCURRENCY:-2}")
	;;
beat)
	command=(celery -A portal beat -l info --schedule "${TMPDIR:-/tmp}/celerybeat-schedule")
	;;
mock)
	command=(python -m edge.mock_upstream --host 0.0.0.0 --port "$mock_port"
		--models "${MOCK_MODELS:-demo-chat,demo-embed}")
	;;
migrate)
	command=(python manage.py migrate --noinput)
	;;
healthcheck)
	healthcheck
	;;
*)
	usage
	;;
esac

command+=("$@")
if [[ "${TOLLGATE_DRY_RUN:-0}" == 1 ]]; then
	echo "${command[*]}"
	exit 0
fi
echo "$process" >"$STATE_FILE"
exec "${command[@]}"
