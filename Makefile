# Tollgate: `make demo` runs it on this machine, `make test` checks it (CI runs the same).

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check --quiet
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# The date-sensitive tests (marker `clock`) run again with the Python clock at the last second
# of a month, of a leap February and of a year, ticking across the boundary as they run; one
# process per instant (a handful of tests start faster without xdist workers).
CLOCK_INSTANTS := 2026-11-30T23:59:59Z 2028-02-29T23:59:59Z 2026-12-31T23:59:59Z

.PHONY: test demo lint services system-packages

test: $(VENV)/.installed-dev services system-packages lint
	DEBUG=true $(PY) manage.py makemigrations --check --dry-run
	DEBUG=true $(PY) manage.py spectacular --validate --fail-on-warn --file /dev/null
	$(VENV)/bin/pytest -n 2
	set -e; for instant in $(CLOCK_INSTANTS); do $(VENV)/bin/pytest -n 0 -q -m clock --clock=$$instant; done

demo: $(VENV)/.installed-demo
	bash scripts/demo.sh

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

services:
	bash scripts/services.sh local

# The browser tests drive Debian's Chromium (Playwright's own browser download is not used) and
# tests/deploy check the alert rules with promtool, from Debian's prometheus package. Whatever is
# missing is installed with one `apt-get update`.
system-packages:
	@chromium=$$([ -x /usr/bin/chromium ] || echo chromium); \
	prometheus=$$(command -v promtool >/dev/null || echo prometheus); \
	if [ -n "$$chromium$$prometheus" ]; then \
		$(SUDO) apt-get update && \
		{ [ -z "$$chromium" ] || $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; } && \
		{ [ -z "$$prometheus" ] || $(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends prometheus; }; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

# Stamps: reinstall only when a requirements file changed since the last install.
$(VENV)/.installed-dev: requirements-dev.txt requirements.txt | $(PY)
	$(PIP) -r requirements-dev.txt
	touch $@

$(VENV)/.installed-runtime: requirements.txt | $(PY)
	$(PIP) -r requirements.txt
	touch $@

$(VENV)/.installed-demo: requirements-demo.txt requirements.txt | $(PY)
	$(PIP) -r requirements-demo.txt
	touch $@
