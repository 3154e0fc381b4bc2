#!/usr/bin/env bash
# Run the usage ingestion benchmark with one command: bash bench/run_ingest_bench.sh [ingest_bench options]
# Creates and migrates the benchmark database (its usage tables are emptied on every run), then
# runs bench/ingest_bench.py, which prints the table and writes the "## Usage ingestion" section
# of bench/RESULTS.md. Needs Postgres and Redis on loopback (BENCH_DATABASE_URL, BENCH_REDIS_URL).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/tollgate_bench}
REDIS_URL=${BENCH_REDIS_URL:-redis://127.0.0.1:6379/14}

if [ ! -x "$PY" ]; then
    echo "bench: $PY is missing; run 'make test' or 'make demo' once to create the venv" >&2
    exit 2
fi

# Create the database when missing: connect to the server's "postgres" database to do it.
"$PY" - "$DATABASE_URL" <<'EOF'
import sys
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

url = urlsplit(sys.argv[1])
name = url.path.lstrip("/")
with psycopg.connect(urlunsplit(url._replace(path="/postgres")), autocommit=True) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        print(f"bench: created database {name}")
EOF
DEBUG=true DATABASE_URL="$DATABASE_URL" "$PY" manage.py migrate --no-input -v 0

exec "$PY" -m bench.ingest_bench --database-url "$DATABASE_URL" --redis-url "$REDIS_URL" \
    --command "bash bench/run_ingest_bench.sh${*:+ $*}" "$@"
