"""Rotation reminders: owners hear once per due period when a key's secret gets old."""

from datetime import timedelta

import pytest
from django.core import mail

from keys import services
from keys.models import ApiKey
from keys.reminders import rotation_reminders_send
from keys.tasks import send_rotation_reminders
from portal.audit import Actor
from portal.models import AuditEvent
from portal.roles import Role
from tests.factories import add_member, make_org, make_user

pytestmark = [pytest.mark.django_db, pytest.mark.clock]


@pytest.fixture
def organization(owner):
    organization = make_org(owner, name="Acme")
    add_member(organization, Role.OWNER, make_user("second-owner@example.com"))
    add_member(organization, Role.ADMIN, make_user("admin@example.com"))
    add_member(organization, Role.DEVELOPER, make_user("dev@example.com"))
    return organization


@pytest.fixture
def run(django_capture_on_commit_callbacks):
    """Send reminders and deliver the emails they queue on commit."""

    def run_once() -> int:
        with django_capture_on_commit_callbacks(execute=True):
            return rotation_reminders_send()

    return run_once


def _key(owner, organization, **fields):
    key, _plaintext = services.api_key_create(
        actor=Actor(user=owner), organization=organization, name="billing-service", **fields
    )
    return key


def test_key_with_a_secret_older_than_the_policy_reminds_every_owner(
    owner, organization, run, start, time_machine
):
    key = _key(owner, organization, rotation_reminder_days=30)
    _key(owner, organization, rotation_reminder_days=None)  # no policy: never reminded

    time_machine.move_to(start + timedelta(days=29, hours=23), tick=False)
    assert run() == 0
    assert mail.outbox == []

    time_machine.move_to(start + timedelta(days=31), tick=False)
    assert run() == 1

    assert sorted(message.to[0] for message in mail.outbox) == [
        "owner@example.com",
        "second-owner@example.com",
    ]
    for message in mail.outbox:
        assert message.to == [message.to[0]]
        assert message.subject == '[Tollgate] Time to rotate the API key "billing-service"'
        assert f"({key.public_id}) in Acme has used the same secret for more than 30 days" in message.body
        assert f"POST /api/v1/keys/{key.public_id}/rotate" in message.body
    event = AuditEvent.objects.get(action="key.rotation_due")
    assert (event.actor_type, event.organization, event.target_id) == ("system", organization, key.public_id)
    assert event.metadata == {
        "policy_days": 30,
        "secret_created_at": key.secrets.get().created_at.isoformat(),
    }
    assert ApiKey.unscoped.get(pk=key.pk).rotation_reminded_at == start + timedelta(days=31)


def test_reminder_is_sent_once_per_due_period(owner, organization, run, start, time_machine):
    _key(owner, organization, rotation_reminder_days=30)
    time_machine.move_to(start + timedelta(days=31), tick=False)
    assert run() == 1
    assert len(mail.outbox) == 2

    time_machine.move_to(start + timedelta(days=31, hours=6), tick=False)
    assert run() == 0
    time_machine.move_to(start + timedelta(days=45), tick=False)
    assert run() == 0
    assert len(mail.outbox) == 2
    assert AuditEvent.objects.filter(action="key.rotation_due").count() == 1


def test_rotation_restarts_the_policy_clock(owner, organization, run, start, time_machine):
    key = _key(owner, organization, rotation_reminder_days=30)
    time_machine.move_to(start + timedelta(days=31), tick=False)
    assert run() == 1
    rotated_at = start + timedelta(days=31, hours=1)
    time_machine.move_to(rotated_at, tick=False)
    services.api_key_rotate(actor=Actor(user=owner), key=key, grace_period=timedelta(hours=1))
    assert ApiKey.unscoped.get(pk=key.pk).rotation_reminded_at is None
    mail.outbox.clear()

    time_machine.move_to(rotated_at + timedelta(days=29, hours=23), tick=False)
    assert run() == 0
    assert mail.outbox == []

    time_machine.move_to(rotated_at + timedelta(days=30, minutes=1), tick=False)
    assert run() == 1
    assert len(mail.outbox) == 2
    assert AuditEvent.objects.filter(action="key.rotation_due").count() == 2


def test_revoked_and_expired_keys_are_not_reminded(owner, organization, run, start, time_machine):
    revoked = _key(owner, organization, rotation_reminder_days=30)
    services.api_key_revoke(actor=Actor(user=owner), key=revoked)
    _key(owner, organization, rotation_reminder_days=30, expires_at=start + timedelta(days=10))
    other = make_org(make_user("other-owner@example.com"), name="Other")
    due = _key(other.memberships.get().user, other, rotation_reminder_days=30)

    time_machine.move_to(start + timedelta(days=31), tick=False)
    assert run() == 1
    assert [message.to for message in mail.outbox] == [["other-owner@example.com"]]
    assert AuditEvent.objects.get(action="key.rotation_due").target_id == due.public_id


def test_celery_task_sends_the_reminders(
    owner, organization, start, time_machine, django_capture_on_commit_callbacks
):
    _key(owner, organization, rotation_reminder_days=7)
    time_machine.move_to(start + timedelta(days=8), tick=False)
    with django_capture_on_commit_callbacks(execute=True):
        assert send_rotation_reminders.delay().get() == 1
    assert len(mail.outbox) == 2
