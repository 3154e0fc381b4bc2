"""Emails leave through a real Celery worker that consumes the test's Redis broker."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection

from portal.audit import Actor
from portal.celery import app as celery_app
from portal.emails import email_queue
from portal.models import Invitation
from portal.roles import Role
from portal.services import invitation_create
from tests.factories import make_org, make_user

pytestmark = pytest.mark.django_db(transaction=True)

WAIT_SECONDS = 30


def _database_url() -> str:
    db = connection.settings_dict
    user = db["USER"] or "postgres"
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return f"postgres://{user}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def worker(tmp_path, settings):
    """Run ``celery -A portal worker`` against the test database and broker; yield its mail dir."""
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "EMAIL_FILE_PATH": str(mail_dir),
        "DEBUG": "false",
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }
    env.pop("SENTRY_DSN", None)
    # Read before the setting changes: the app loads its configuration from the settings lazily,
    # so a first read after the change would remember False and leave later tests without eager
    # tasks (and without their emails).
    was_eager = celery_app.conf.task_always_eager
    settings.CELERY_TASK_ALWAYS_EAGER = False
    celery_app.conf.task_always_eager = False
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "portal",
                "worker",
                "--pool",
                "solo",
                "--concurrency",
                "1",
                # info: the level that logs each task received and succeeded.
                "-l",
                "info",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=django_settings.BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield mail_dir, process, log_path
    finally:
        celery_app.conf.task_always_eager = was_eager
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _wait_for_mail(worker, *needles: str) -> str:
    """Poll the worker's mail directory until one message contains every needle."""
    mail_dir, process, log_path = worker
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        for path in sorted(Path(mail_dir).glob("*.log")):
            text = path.read_text()
            if all(needle in text for needle in needles):
                return text
        if process.poll() is not None:
            pytest.fail(f"celery worker exited with {process.returncode}:\n{log_path.read_text()}")
        time.sleep(0.2)
    pytest.fail(
        f"no email containing {needles!r} within {WAIT_SECONDS}s; worker log:\n{log_path.read_text()}"
    )


def test_queued_email_is_delivered_by_a_real_worker(worker, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        email_queue(
            to=["ops@example.com"],
            subject="Quarterly usage report",
            body="Your usage report for Q3 is ready.",
        )

    text = _wait_for_mail(worker, "Quarterly usage report", "Your usage report for Q3 is ready.")
    assert "To: ops@example.com" in text
    assert "Subject: Quarterly usage report" in text


def test_invitation_email_is_sent_by_the_worker_after_commit(worker):
    owner = make_user()
    organization = make_org(owner, name="Acme Robotics")

    invitation, token = invitation_create(
        actor=Actor(user=owner), organization=organization, email="new.dev@example.com", role=Role.DEVELOPER
    )

    assert Invitation.objects.for_organization(organization).filter(pk=invitation.pk).exists()
    text = _wait_for_mail(worker, f"http://testserver/invitations/{token}/")
    assert "To: new.dev@example.com" in text
    assert "Subject: [Tollgate] You are invited to join Acme Robotics" in text
    assert f"{owner.email} invited you to join Acme Robotics on Tollgate as Developer." in text
    # The worker logged the task, but not the link it sent.
    _mail_dir, _process, log_path = worker
    log = _wait_for_log(log_path, "Task portal.tasks.send_email[", " succeeded in ")
    assert token not in log


def _wait_for_log(log_path: Path, *needles: str) -> str:
    """Poll the worker's log until a line contains every needle; return the whole log."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        text = log_path.read_text()
        if any(all(needle in line for needle in needles) for line in text.splitlines()):
            return text
        time.sleep(0.2)
    pytest.fail(f"no worker log line with {needles!r} within {WAIT_SECONDS}s:\n{log_path.read_text()}")
