import csv
import io
import re
from datetime import date

import pytest
from django.db import DatabaseError, connection, transaction

from billing.models import Invoice
from billing.selectors import plan_default
from keys.services import api_key_create
from portal.audit import Actor, audit_record
from portal.models import AuditEvent, Membership, Organization
from portal.roles import Role
from tests.factories import PASSWORD, add_member, make_org, make_user

pytestmark = pytest.mark.django_db


def test_audit_events_cannot_be_updated_or_deleted():
    event = audit_record(actor=Actor.system(), action="test.event")
    event.action = "changed"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(pk=event.pk).update(action="x")
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(pk=event.pk).delete()
    # Even raw SQL is refused by the database trigger.
    for sql in ("UPDATE portal_auditevent SET action = 'x'", "DELETE FROM portal_auditevent"):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(sql)
    assert AuditEvent.objects.get(pk=event.pk).action == "test.event"


def test_security_relevant_actions_each_write_one_audit_event(client, django_capture_on_commit_callbacks):
    owner = make_user("owner@example.com")
    organization = make_org(owner, name="Audited")
    client.post("/accounts/login/", {"login": "owner@example.com", "password": "wrong"})
    client.post("/accounts/login/", {"login": "owner@example.com", "password": PASSWORD})
    client.post(f"/o/{organization.slug}/settings/", {"name": "Audited Inc", "require_mfa": ""})
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/o/{organization.slug}/members/", {"email": "new@example.com", "role": "viewer"})
    member = add_member(organization, Role.VIEWER)
    membership = Membership.objects.for_organization(organization).get(user=member)
    client.post(f"/o/{organization.slug}/members/{membership.pk}/role/", {"role": "developer"})
    client.post(f"/o/{organization.slug}/members/{membership.pk}/remove/")

    actions = list(AuditEvent.objects.order_by("id").values_list("action", flat=True))
    assert actions == [
        "organization.created",
        "user.login_failed",
        "user.login",
        "organization.updated",
        "member.invited",
        "member.role_changed",
        "member.removed",
    ]
    updated = AuditEvent.objects.get(action="organization.updated")
    assert updated.metadata == {"changes": {"name": ["Audited", "Audited Inc"]}}
    assert updated.actor == owner and updated.ip_address == "127.0.0.1"
    failed = AuditEvent.objects.get(action="user.login_failed")
    assert failed.metadata == {"email": "owner@example.com"} and failed.actor is None


def test_audit_page_filters_and_csv_export(client):
    owner = make_user("owner@example.com")
    organization = make_org(owner)
    other = make_org()
    audit_record(
        actor=Actor(user=owner), organization=organization, action="member.invited", metadata={"n": 1}
    )
    audit_record(actor=Actor.system(), organization=other, action="member.invited")
    client.force_login(owner)
    page = client.get(f"/o/{organization.slug}/audit/", {"action": "member."})
    assert _audit_rows(page.content) == [("member.invited", "")]

    response = client.get(f"/o/{organization.slug}/audit.csv")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == [
        "time",
        "action",
        "actor",
        "actor_type",
        "target_type",
        "target_id",
        "ip",
        "user_agent",
        "metadata",
    ]
    assert sorted(row[1] for row in rows[1:]) == ["member.invited", "organization.created"]


def test_admin_status_change_is_audited_as_staff(client):
    staff = make_user("staff@example.com")
    staff.is_staff = staff.is_superuser = True
    staff.save()
    organization = make_org(name="Customer")
    client.force_login(staff)
    response = client.post(
        "/admin/portal/organization/",
        {"action": "suspend", "_selected_action": [organization.pk]},
    )
    assert response.status_code == 302
    assert Organization.objects.get(pk=organization.pk).status == Organization.Status.SUSPENDED
    event = AuditEvent.objects.get(action="organization.status_changed")
    assert (event.actor, event.actor_type, event.organization) == (staff, "staff", organization)
    assert event.metadata == {"from": "active", "to": "suspended", "reason": "staff"}


def test_admin_search_finds_organization_by_member_email(client):
    staff = make_user("staff@example.com")
    staff.is_staff = staff.is_superuser = True
    staff.save()
    make_org(make_user("findme@example.com"), name="Findable")
    make_org(name="Other")
    client.force_login(staff)
    response = client.get("/admin/portal/organization/", {"q": "findme@"})
    assert response.status_code == 200
    assert b"Findable" in response.content and b">Other" not in response.content


def test_admin_cannot_change_or_delete_audit_events(client):
    staff = make_user("staff@example.com")
    staff.is_staff = staff.is_superuser = True
    staff.save()
    event = audit_record(actor=Actor.system(), action="test.event")
    client.force_login(staff)
    assert client.get(f"/admin/portal/auditevent/{event.pk}/delete/").status_code == 403
    response = client.post(f"/admin/portal/auditevent/{event.pk}/change/", {"action": "x"})
    assert response.status_code == 403
    assert AuditEvent.objects.get(pk=event.pk).action == "test.event"


def test_staff_edit_in_admin_writes_staff_audit_event(client):
    staff = make_user("staff@example.com")
    staff.is_staff = staff.is_superuser = True
    staff.save()
    organization = make_org()
    membership = Membership.objects.for_organization(organization).get()
    client.force_login(staff)
    add_member(organization, Role.OWNER)  # so the first owner may be demoted
    response = client.post(
        f"/admin/portal/membership/{membership.pk}/change/",
        {
            "user": membership.user_id,
            "organization": organization.pk,
            "role": "admin",
            "created_at_0": "2026-01-01",
            "created_at_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    event = AuditEvent.objects.get(action="staff.changed")
    assert (event.actor_type, event.organization, event.target_type) == (
        "staff",
        organization,
        "portal.membership",
    )


@pytest.mark.parametrize(
    ("user_agent", "cell"),
    [
        ('=HYPERLINK("http://evil","x")', '"\'=HYPERLINK(""http://evil"",""x"")"'),
        ("+1+1", "'+1+1"),
        ("-1+1", "'-1+1"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", '"\'\r=1+1"'),
        ("Mozilla/5.0 (X11; Linux x86_64)", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("curl/8.5.0 -k", "curl/8.5.0 -k"),
    ],
)
def test_audit_csv_cells_beginning_like_a_formula_are_prefixed_with_a_quote(client, user_agent, cell):
    owner = make_user("owner@example.com")
    organization = make_org(owner, name="Audited")
    client.force_login(owner)
    client.post(
        f"/o/{organization.slug}/settings/",
        {"name": '=HYPERLINK("http://evil","x")', "require_mfa": ""},
        HTTP_USER_AGENT=user_agent,
    )
    event = AuditEvent.objects.get(action="organization.updated")

    response = client.get(f"/o/{organization.slug}/audit.csv", {"action": "organization.updated"})

    assert response.status_code == 200
    # The metadata cell is JSON of a dict: it begins with "{", so the name inside stays as it was.
    assert b"".join(response.streaming_content).decode() == (
        "time,action,actor,actor_type,target_type,target_id,ip,user_agent,metadata\r\n"
        f"{event.created_at.isoformat()},organization.updated,owner@example.com,user,"
        f"portal.organization,{event.target_id},127.0.0.1,{cell},"
        '"{""changes"": {""name"": [""Audited"", ""=HYPERLINK(\\""http://evil\\"",\\""x\\"")""]}}"\r\n'
    )


def _audit_rows(content: bytes) -> list[tuple[str, str]]:
    """Return (action, target) of each row of the audit table, as the page shows them."""
    body = re.search(rb"<tbody>(.*?)</tbody>", content, re.S).group(1).decode()
    return re.findall(r'<code>([^<]+)</code>.*?<td class="audit-target">([^<]*)</td>', body, re.S)


def test_audit_targets_read_as_names_and_unknown_types_keep_the_raw_text(client):
    owner = make_user("owner@example.com")
    organization = make_org(owner, name="Acme AI")
    invited = make_user("dev@example.com")
    actor = Actor(user=owner)
    key, _secret = api_key_create(actor=actor, organization=organization, name="Search backend")
    invoice = Invoice.objects.create(
        organization=organization, period=date(2026, 11, 1), plan=plan_default(), currency="usd"
    )
    # Another organization's key: its name must not show through an event that names its id.
    stranger, _ = api_key_create(actor=Actor.system(), organization=make_org(), name="Not yours")
    for target_type, target_id, action in [
        ("portal.user", str(invited.pk), "member.role_changed"),
        ("billing.invoice", invoice.public_id, "invoice.built"),
        ("keys.apikey", stranger.public_id, "key.updated"),
        ("billing.card", "pm_123", "billing.card_removed"),
    ]:
        audit_record(
            actor=actor,
            organization=organization,
            action=action,
            target_type=target_type,
            target_id=target_id,
        )
    client.force_login(owner)

    response = client.get(f"/o/{organization.slug}/audit/")

    assert response.status_code == 200
    assert _audit_rows(response.content) == [
        ("billing.card_removed", "billing.card pm_123"),
        ("key.updated", f"keys.apikey {stranger.public_id}"),
        ("invoice.built", f"Invoice {invoice.public_id} (Nov 2026)"),
        ("member.role_changed", "dev@example.com"),
        ("key.created", f"API key &quot;Search backend&quot; ({key.public_id})"),
        ("organization.created", "Acme AI"),
    ]


def test_the_action_filter_offers_the_actions_of_this_log_and_each_family(client):
    owner = make_user("owner@example.com")
    organization = make_org(owner)
    audit_record(actor=Actor(user=owner), organization=organization, action="member.invited")
    audit_record(actor=Actor.system(), organization=make_org(), action="key.revoked")
    client.force_login(owner)

    response = client.get(f"/o/{organization.slug}/audit/", {"action": "member.invited"})

    select = re.search(
        r'<select name="action" id="id_action">(.*?)</select>', response.content.decode(), re.S
    )
    assert re.findall(r"<(optgroup label|option value)=\"([^\"]*)\"( selected)?", select.group(1)) == [
        ("option value", "", ""),
        ("optgroup label", "member", ""),
        ("option value", "member.", ""),
        ("option value", "member.invited", " selected"),
        ("optgroup label", "organization", ""),
        ("option value", "organization.", ""),
        ("option value", "organization.created", ""),
    ]
    assert _audit_rows(response.content) == [("member.invited", "")]
    assert client.get(f"/o/{organization.slug}/audit/", {"action": "key.revoked"}).status_code == 200


def test_audit_dates_are_iso_text_fields(client):
    owner = make_user()
    organization = make_org(owner)
    client.force_login(owner)

    content = client.get(f"/o/{organization.slug}/audit/", {"since": "2026-11-01"}).content.decode()

    assert (
        '<input type="text" name="since" value="2026-11-01" pattern="\\d{4}-\\d{2}-\\d{2}" '
        'placeholder="YYYY-MM-DD" inputmode="numeric" id="id_since">'
    ) in content
