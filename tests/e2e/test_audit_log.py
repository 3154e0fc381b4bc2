"""The audit log page and its CSV export."""

import csv
import io

import pytest
from playwright.sync_api import expect

from portal.models import AuditEvent
from tests.e2e.conftest import log_in
from tests.factories import make_org, make_user

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CSV_HEADER = "time,action,actor,actor_type,target_type,target_id,ip,user_agent,metadata"


def test_audit_log_lists_events_and_downloads_them_as_csv(page, live_server):
    base = live_server.url
    owner = make_user("owner@example.com")
    organization = make_org(owner, name="Acme AI")

    log_in(page, base, "owner@example.com")
    page.goto(f"{base}/o/acme-ai/members/")
    page.locator("#invite-form").get_by_label("Email").fill("dev@example.com")
    page.locator("#invite-form").get_by_role("button", name="Send invitation").click()
    expect(page.get_by_role("status")).to_have_text("Invitation sent to dev@example.com.")
    user_agent = page.evaluate("navigator.userAgent")

    page.locator("aside.sidenav").get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Audit log")
    rows = page.locator("tbody tr")
    expect(rows.locator("td:nth-child(2)")).to_have_text(["member.invited", "organization.created"])
    expect(rows.locator("td:nth-child(3)")).to_have_text(["owner@example.com", "owner@example.com"])
    expect(rows.locator("td:nth-child(4)")).to_have_text(["Invitation for dev@example.com", "Acme AI"])
    expect(rows.first.locator("td:nth-child(5)")).to_have_text("127.0.0.1")

    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download CSV").click()
    download = download_info.value
    assert download.suggested_filename == "audit-acme-ai.csv"
    with open(download.path(), newline="") as file:
        text = file.read()
    assert text.splitlines()[0] == CSV_HEADER
    records = list(csv.DictReader(io.StringIO(text)))
    events = list(AuditEvent.objects.filter(organization=organization))
    assert [record["action"] for record in records] == ["member.invited", "organization.created"]
    assert [record["time"] for record in records] == [event.created_at.isoformat() for event in events]
    invited = records[0]
    assert invited["actor"] == "owner@example.com"
    assert invited["actor_type"] == "user"
    assert invited["target_type"] == "portal.invitation"
    assert invited["target_id"] == events[0].target_id
    assert invited["ip"] == "127.0.0.1"
    assert invited["user_agent"] == user_agent
    assert invited["metadata"] == '{"email": "dev@example.com", "role": "developer"}'

    page.get_by_label("Action").select_option(label="All organization events")
    page.get_by_role("button", name="Filter").click()
    expect(rows.locator("td:nth-child(2)")).to_have_text(["organization.created"])
