"""The demo's web process, run as the Procfile runs it: one JSON line per console request, none
for the static files a browser loads with each page, and no access log beside them."""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from tests.factories import make_org, make_user
from tests.servers import free_port

pytestmark = pytest.mark.django_db(transaction=True)

REQUESTS = 100
_ASSETS = re.compile(r'(?:href|src)="(/static/[^"]+)"')


def _web_command(port: int) -> list[str]:
    line = next(line for line in Path("Procfile").read_text().splitlines() if line.startswith("web:"))
    command = shlex.split(line.split(":", 1)[1])
    command[command.index("-b") + 1] = f"127.0.0.1:{port}"
    return [str(Path(sys.executable).parent / command[0]), *command[1:]]


def _environment() -> dict[str, str]:
    """What scripts/demo.sh exports for the web process, on this test's database and Redis."""
    database = connection.settings_dict
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DEBUG": "true",
        "LOG_LEVEL": "INFO",
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": settings.SECRET_KEY,
    }


def _wait_until_up(base: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "gunicorn exited"
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("gunicorn did not answer within 60 s")


def test_100_console_requests_write_100_lines_and_their_static_files_none(tmp_path):
    owner = make_user("owner@example.com")
    organization = make_org(owner, name="Acme AI")
    browser = Client()
    browser.force_login(owner)
    pages = [f"/o/{organization.slug}/{page}" for page in ("", "keys/", "usage/", "members/", "audit/")]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    output = tmp_path / "web.log"
    with output.open("w") as log:
        process = subprocess.Popen(
            _web_command(port),
            env=_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=settings.BASE_DIR,
        )
    try:
        _wait_until_up(base, process)
        started = len(output.read_text().splitlines())
        assets: set[str] = set()
        with httpx.Client(base_url=base, cookies={"sessionid": browser.cookies["sessionid"].value}) as http:
            for number in range(REQUESTS):
                page = http.get(pages[number % len(pages)])
                assert page.status_code == 200, page.url
                # What a browser fetches with the page: its stylesheets and scripts (once each,
                # as from its cache afterwards).
                for asset in set(_ASSETS.findall(page.text)) - assets:
                    assert http.get(asset).status_code == 200, asset
                    assets.add(asset)
        time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=10)

    lines = output.read_text().splitlines()[started:]
    during = [line for line in lines if "Handling signal" not in line and "Shutting down" not in line]
    during = [line for line in during if not re.search(r"Worker exiting|\[INFO\] Goodbye", line)]
    # The start-up probe of /healthz may log once after the count began.
    records = [record for line in during if (record := json.loads(line))["path"] != "/healthz"]
    assert len(assets) >= 6
    assert len(records) == REQUESTS
    assert {(record["logger"], record["message"]) for record in records} == {("tollgate.request", "request")}
    assert sorted({record["path"] for record in records}) == sorted(pages)
