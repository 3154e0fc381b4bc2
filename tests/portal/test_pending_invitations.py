"""An invited person who signs up or logs in lands on the invitations waiting for them."""

import re

import pytest
from allauth.account.models import EmailAddress
from django.core import mail

from portal import services
from portal.audit import Actor
from portal.models import AuditEvent, Invitation, Membership, User
from portal.roles import Role
from tests.factories import PASSWORD, make_org, make_user

pytestmark = pytest.mark.django_db


def _invite(organization, email, role=Role.DEVELOPER) -> Invitation:
    owner = Membership.objects.for_organization(organization).get(role=Role.OWNER).user
    invitation, _token = services.invitation_create(
        actor=Actor(user=owner), organization=organization, email=email, role=role
    )
    return invitation


def _rows(html: str) -> list[list[str]]:
    table = html.split('<table id="pending-invitations">')[1].split("</table>")[0]
    return [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr id=\"pending-invitation-\d+\">(.*?)</tr>", table, re.S)
    ]


def test_an_invited_person_who_signs_up_lands_on_the_invitations_with_accept_and_decline(
    client, django_capture_on_commit_callbacks
):
    acme = make_org(make_user("owner@acme.example"), name="Acme AI")
    beta = make_org(make_user("owner@beta.example"), name="Beta Labs")
    acme_invitation = _invite(acme, "ada@example.com")
    beta_invitation = _invite(beta, "ada@example.com", Role.VIEWER)
    _invite(acme, "someone-else@example.com")
    mail.outbox.clear()

    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            "/accounts/signup/", {"email": "ada@example.com", "password1": PASSWORD, "password2": PASSWORD}
        )
    link = re.search(r"http://testserver(/accounts/confirm-email/[^\s]+/)", mail.outbox[0].body).group(1)
    response = client.post(link)
    assert response.status_code == 302
    # Logged in by the confirmation: the console sends a person without an organization on.
    assert response["Location"] == "/"
    assert client.get("/")["Location"] == "/invitations/"

    page = client.get("/invitations/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<h1>Invitations for you</h1>" in html
    expires = [
        invitation.expires_at.strftime("%Y-%m-%d %H:%M") for invitation in (acme_invitation, beta_invitation)
    ]
    assert _rows(html) == [
        ["Acme AI", "Developer", "owner@acme.example", expires[0], "Accept\n              Decline"],
        ["Beta Labs", "Viewer", "owner@beta.example", expires[1], "Accept\n              Decline"],
    ]
    assert f'action="/invitations/pending/{acme_invitation.pk}/accept/"' in html
    assert (
        f'action="/invitations/pending/{beta_invitation.pk}/decline/" class="inline" '
        'data-confirm="Decline the invitation to join Beta Labs?"'
    ) in html
    assert '<a href="/orgs/new/">create your own organization</a>' in html

    response = client.post(f"/invitations/pending/{beta_invitation.pk}/decline/")
    assert response["Location"] == "/invitations/"
    assert [str(m) for m in client.get("/invitations/").context["messages"]] == [
        "You declined the invitation to join Beta Labs."
    ]
    response = client.post(f"/invitations/pending/{acme_invitation.pk}/accept/")
    assert response["Location"] == f"/o/{acme.slug}/"

    ada = User.objects.get(email="ada@example.com")
    assert list(
        Membership.objects.all_tenants().filter(user=ada).values_list("organization__name", "role")
    ) == [("Acme AI", Role.DEVELOPER)]
    beta_invitation.refresh_from_db()
    assert beta_invitation.revoked_at is not None and beta_invitation.accepted_at is None
    acme_invitation.refresh_from_db()
    assert acme_invitation.accepted_by == ada
    assert list(
        AuditEvent.objects.filter(actor=ada).order_by("id").values_list("organization__name", "action")
    ) == [
        (None, "user.login"),
        ("Beta Labs", "member.invitation_declined"),
        ("Acme AI", "member.joined"),
    ]
    # Nothing is left waiting: the console is the organization now.
    assert client.get("/")["Location"] == f"/o/{acme.slug}/"


def test_logging_in_with_an_invitation_waiting_lands_on_it_even_with_an_organization(client):
    ada = make_user("ada@example.com")
    make_org(ada, name="Ada's own")
    acme = make_org(name="Acme AI")
    _invite(acme, "ada@example.com")

    response = client.post("/accounts/login/", {"login": "ada@example.com", "password": PASSWORD})
    assert response["Location"] == "/invitations/"
    html = client.get("/invitations/").content.decode()
    assert [row[0] for row in _rows(html)] == ["Acme AI"]
    assert '<a href="/">Back to the console</a>' in html
    # Having an organization, the console itself does not detour.
    assert client.get("/")["Location"] == "/o/adas-own/"


def test_without_invitations_the_first_login_still_leads_to_creating_an_organization(client):
    make_user("ada@example.com")
    response = client.post("/accounts/login/", {"login": "ada@example.com", "password": PASSWORD})
    assert response["Location"] == "/"
    assert client.get("/")["Location"] == "/orgs/new/"
    page = client.get("/orgs/new/").content.decode()
    assert "Create your first organization" in page
    assert 'id="invitations-waiting"' not in page
    empty = client.get("/invitations/").content.decode()
    assert '<p id="no-invitations">No invitations are waiting for you.</p>' in empty


def test_the_organization_form_points_to_invitations_waiting(client):
    ada = make_user("ada@example.com")
    _invite(make_org(name="Acme AI"), "ada@example.com")
    client.force_login(ada)
    page = client.get("/orgs/new/").content.decode()
    assert (
        '<p class="message warning" id="invitations-waiting">An invitation is waiting for you: '
        '<a href="/invitations/">accept or decline</a>.</p>'
    ) in page


@pytest.mark.parametrize("action", ["accept", "decline"])
def test_someone_elses_invitation_answers_404_like_a_missing_one(client, action):
    acme = make_org(name="Acme AI")
    invitation = _invite(acme, "ada@example.com")
    unverified = make_user("bo@example.com")
    EmailAddress.objects.create(user=unverified, email="ada@example.com", verified=False)
    client.force_login(unverified)

    assert client.get("/invitations/").context["invitations"].count() == 0
    other = client.post(f"/invitations/pending/{invitation.pk}/{action}/")
    missing = client.post(f"/invitations/pending/{invitation.pk + 1000}/{action}/")
    assert other.status_code == missing.status_code == 404
    invitation.refresh_from_db()
    assert (invitation.accepted_at, invitation.revoked_at) == (None, None)
    assert not Membership.objects.for_organization(acme).filter(user=unverified).exists()


def test_an_expired_or_revoked_invitation_is_not_listed_and_cannot_be_accepted(client):
    from datetime import timedelta

    from django.utils import timezone

    ada = make_user("ada@example.com")
    expired = _invite(make_org(name="Acme AI"), "ada@example.com")
    Invitation.objects.all_tenants().filter(pk=expired.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    revoked = _invite(make_org(name="Beta Labs"), "ada@example.com")
    Invitation.objects.all_tenants().filter(pk=revoked.pk).update(revoked_at=timezone.now())
    client.force_login(ada)

    assert client.get("/invitations/").context["invitations"].count() == 0
    for invitation in (expired, revoked):
        assert client.post(f"/invitations/pending/{invitation.pk}/accept/").status_code == 404
    assert not Membership.objects.all_tenants().filter(user=ada).exists()
