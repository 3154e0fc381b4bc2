"""One-time links never reach a log record: not from Celery's task logs, not from request logs."""

import logging
import re

import pytest
from celery.signals import task_prerun
from django.core import mail
from django.core.cache import cache

from portal.emails import email_queue
from portal.observability import JsonFormatter
from portal.tasks import send_email
from tests.factories import PASSWORD, make_org, make_user

pytestmark = pytest.mark.django_db

INVITATION_LINK = re.compile(r"http://testserver/invitations/([^/\s]+)/")


def _everything_logged(caplog) -> str:
    """Each record as production prints it, and every attribute a handler could read."""
    formatter = JsonFormatter()
    return "\n".join(f"{formatter.format(record)} {vars(record)!r}" for record in caplog.records)


def test_an_invitation_sent_through_eager_celery_logs_neither_its_link_nor_its_token(
    client, caplog, django_capture_on_commit_callbacks
):
    owner = make_user("owner@example.com")
    organization = make_org(owner, name="Acme")
    client.force_login(owner)
    caplog.set_level(logging.DEBUG)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            f"/o/{organization.slug}/members/", {"email": "new@example.com", "role": "developer"}
        )
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    token = INVITATION_LINK.search(mail.outbox[0].body).group(1)
    # The link is in the email, and the task ran: Celery logged it, without its arguments.
    logged = _everything_logged(caplog)
    assert "Task portal.tasks.send_email[" in logged
    assert token not in logged

    caplog.clear()
    client.logout()
    page = client.get(f"/invitations/{token}/")
    assert page.status_code == 200
    request_lines = [record for record in caplog.records if record.name == "tollgate.request"]
    assert [record.path for record in request_lines] == ["/invitations/[Filtered]/"]
    assert token not in _everything_logged(caplog)


def test_a_password_reset_logs_neither_its_link_nor_its_key(
    client, caplog, django_capture_on_commit_callbacks
):
    make_user("owner@example.com")
    caplog.set_level(logging.DEBUG)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/accounts/password/reset/", {"email": "owner@example.com"})
    assert response.status_code == 302
    link = re.search(r"http://testserver(/accounts/password/reset/key/[^\s]+/)", mail.outbox[0].body).group(1)
    key = link.rstrip("/").rsplit("-", 1)[-1]
    page = client.get(link)
    assert page.status_code == 302
    logged = _everything_logged(caplog)
    assert link not in logged
    assert key not in logged
    set_password = client.post(page["Location"], {"password1": PASSWORD + "!", "password2": PASSWORD + "!"})
    assert set_password.status_code == 302


def test_the_send_task_takes_an_id_and_forgets_the_message_once_sent(django_capture_on_commit_callbacks):
    started = []

    def on_prerun(sender=None, kwargs=None, **_):
        started.append((dict(kwargs), cache.get(f"email:{kwargs['email_id']}")))

    task_prerun.connect(on_prerun, sender=send_email, weak=False)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            email_queue(to=["ops@example.com"], subject="Report", body="https://example.com/secret-link")
    finally:
        task_prerun.disconnect(on_prerun, sender=send_email)

    [(kwargs, stashed)] = started
    assert list(kwargs) == ["email_id"]
    assert stashed == {
        "to": ["ops@example.com"],
        "subject": "Report",
        "body": "https://example.com/secret-link",
        "html": None,
    }
    assert [(m.to, m.subject, m.body) for m in mail.outbox] == [
        (["ops@example.com"], "Report", "https://example.com/secret-link")
    ]
    assert cache.get(f"email:{kwargs['email_id']}") is None


def test_celery_task_log_records_carry_no_arguments(caplog):
    caplog.set_level(logging.DEBUG)

    send_email.delay(email_id="no-such-message-3f9a1c")

    records = [record for record in caplog.records if record.name == "celery.app.trace"]
    assert len(records) == 1
    assert records[0].data["args"] == records[0].data["kwargs"] == "[Filtered]"
    assert "no-such-message-3f9a1c" not in repr(vars(records[0]))


def test_sentry_events_show_one_time_tokens_in_urls_filtered():
    from portal.observability import _before_send

    event = {"request": {"url": "https://console.example.com/invitations/s3cr3t-t0ken/", "method": "GET"}}

    assert _before_send(event, None)["request"] == {
        "url": "https://console.example.com/invitations/[Filtered]/",
        "method": "GET",
    }
