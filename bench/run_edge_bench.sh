#!/usr/bin/env bash
# Run the edge benchmark with one command: bash bench/run_edge_bench.sh [edge_bench options]
# Installs what it needs when missing (wrk and nginx from Debian, LiteLLM in its own venv),
# then runs bench/edge_bench.py, which prints the tables and writes bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
LITELLM_VERSION=1.106.2
LITELLM_VENV=bench/.venv-litellm
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

if [ ! -x "$PY" ]; then
    echo "bench: $PY is missing; run 'make test' or 'make demo' once to create the venv" >&2
    exit 2
fi

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

# LiteLLM lives in its own venv so that its dependencies never touch the project's.
if ! "$LITELLM_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('litellm') != '$LITELLM_VERSION')" 2>/dev/null; then
    python3.11 -m venv "$LITELLM_VENV"
    "$LITELLM_VENV/bin/pip" install --disable-pip-version-check --quiet "litellm[proxy]==$LITELLM_VERSION"
fi

exec "$PY" -m bench.edge_bench --litellm "$LITELLM_VENV/bin/litellm" \
    --command "bash bench/run_edge_bench.sh${*:+ $*}" "$@"
