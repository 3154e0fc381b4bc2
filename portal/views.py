"""Console pages for tenancy: thin views over portal.services and portal.selectors."""

import csv
import json
from datetime import datetime, time, timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache
from django.views.generic import TemplateView
from django_ratelimit.decorators import ratelimit

from portal import selectors, services
from portal.audit import Actor
from portal.audit_labels import audit_target_labels
from portal.console import SESSION_ORG_KEY, OrganizationMixin
from portal.csvsafe import csv_row
from portal.errors import DomainError
from portal.forms import (
    AuditFilterForm,
    InvitationForm,
    OrganizationCreateForm,
    OrganizationSettingsForm,
    RoleForm,
)
from portal.roles import Perm, Role
from usage.views import dashboard_money, dashboard_usage


def ratelimited(request, exception):
    """Answer a request that django-ratelimit refused."""
    response = render(request, "429.html", status=429)
    response["Retry-After"] = "60"
    return response


@login_required
def console_home(request):
    """Send the user to their current organization; without one, to the invitations waiting
    for them, or to create their first organization."""
    organizations = list(selectors.organizations_for_user(user=request.user))
    if not organizations:
        if selectors.invitations_pending_for(user=request.user).exists():
            return redirect("invitations-pending")
        return redirect("org-create")
    slug = request.session.get(SESSION_ORG_KEY)
    chosen = next((org for org in organizations if org.slug == slug), organizations[0])
    return redirect("org-dashboard", org_slug=chosen.slug)


@method_decorator(login_required, name="dispatch")
class OrganizationCreateView(View):
    template_name = "portal/org_create.html"

    def get(self, request):
        first = not selectors.organizations_for_user(user=request.user).exists()
        pending = selectors.invitations_pending_for(user=request.user).count()
        return render(
            request,
            self.template_name,
            {"form": OrganizationCreateForm(), "first": first, "pending_invitations": pending},
        )

    def post(self, request):
        form = OrganizationCreateForm(request.POST)
        if form.is_valid():
            try:
                organization = services.organization_create(
                    actor=Actor.from_request(request), **form.cleaned_data
                )
            except DomainError as error:
                form.add_error(error.field, error.message)
            else:
                messages.success(request, f"Welcome to {organization.name}. You are its owner.")
                return redirect("org-dashboard", org_slug=organization.slug)
        return render(request, self.template_name, {"form": form}, status=400)


class DashboardView(OrganizationMixin, TemplateView):
    template_name = "portal/dashboard.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        if self.can(Perm.USAGE_VIEW):
            now = timezone.now()
            context["usage"] = dashboard_usage(organization=self.organization, now=now)
            context["money"] = dashboard_money(
                organization=self.organization, now=now, with_billing=self.can(Perm.BILLING_VIEW)
            )
        return context


class PlaceholderView(OrganizationMixin, TemplateView):
    """A page whose feature lands in a later release; permission-checked like the real one."""

    template_name = "portal/placeholder.html"
    title = ""

    def get_context_data(self, **kwargs):
        return super().get_context_data(title=self.title, **kwargs)


class MembersView(OrganizationMixin, TemplateView):
    template_name = "portal/members.html"
    required_permission = Perm.MEMBERS_VIEW
    write_permission = Perm.MEMBERS_MANAGE

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(
            members=selectors.members_list(organization=self.organization),
            invitations=selectors.invitations_list(organization=self.organization).filter(accepted_at=None)[
                :100
            ],
            invite_form=kwargs.get("invite_form") or InvitationForm(),
            roles=Role.choices,
        )
        return context

    @method_decorator(ratelimit(key="user", rate=lambda g, r: settings.RATELIMIT_INVITATION, method="POST"))
    def post(self, request, org_slug):
        form = InvitationForm(request.POST)
        if form.is_valid():
            try:
                invitation, _token = services.invitation_create(
                    actor=Actor.from_request(request), organization=self.organization, **form.cleaned_data
                )
            except DomainError as error:
                form.add_error(error.field if error.field in form.fields else None, error.message)
            else:
                messages.success(request, f"Invitation sent to {invitation.email}.")
                return redirect("org-members", org_slug=org_slug)
        return self.render_to_response(self.get_context_data(invite_form=form), status=400)


class MemberActionView(OrganizationMixin, View):
    required_permission = Perm.MEMBERS_MANAGE
    action = ""

    def post(self, request, org_slug, membership_id):
        membership = selectors.membership_get(organization=self.organization, membership_id=membership_id)
        if membership is None:
            raise Http404("No such member.")
        actor = Actor.from_request(request)
        try:
            if self.action == "role":
                form = RoleForm(request.POST)
                if not form.is_valid():
                    raise DomainError("Choose a valid role.")
                services.membership_change_role(
                    actor=actor, membership=membership, role=form.cleaned_data["role"]
                )
                messages.success(request, f"{membership.user.email} is now {form.cleaned_data['role']}.")
            else:
                services.membership_remove(actor=actor, membership=membership)
                messages.success(request, f"{membership.user.email} was removed.")
        except DomainError as error:
            messages.error(request, error.message)
            return redirect("org-members", org_slug=org_slug)
        if membership.user_id == request.user.id and self.action == "remove":
            return redirect("console-home")
        return redirect("org-members", org_slug=org_slug)


class InvitationActionView(OrganizationMixin, View):
    required_permission = Perm.MEMBERS_MANAGE
    action = ""

    @method_decorator(ratelimit(key="user", rate=lambda g, r: settings.RATELIMIT_INVITATION, method="POST"))
    def post(self, request, org_slug, invitation_id):
        invitation = selectors.invitation_get(organization=self.organization, invitation_id=invitation_id)
        if invitation is None:
            raise Http404("No such invitation.")
        actor = Actor.from_request(request)
        try:
            if self.action == "resend":
                services.invitation_resend(actor=actor, invitation=invitation)
                messages.success(request, f"A new link was sent to {invitation.email}.")
            else:
                services.invitation_revoke(actor=actor, invitation=invitation)
                messages.success(request, f"The invitation for {invitation.email} was revoked.")
        except DomainError as error:
            messages.error(request, error.message)
        return redirect("org-members", org_slug=org_slug)


@method_decorator(
    ratelimit(key="ip", rate=lambda g, r: settings.RATELIMIT_INVITATION, method=["GET", "POST"]),
    name="dispatch",
)
class InvitationAcceptView(View):
    """The link in the invitation email. Works once, for the invited address."""

    template_name = "portal/invitation.html"

    def get(self, request, token):
        try:
            invitation = services.invitation_check(token=token)
        except DomainError as error:
            return render(request, self.template_name, {"error": error.message}, status=400)
        if not request.user.is_authenticated:
            # The link arrived by email, so the address is proven: a new account for it
            # needs no second verification email.
            from allauth.account.adapter import get_adapter

            get_adapter(request).stash_verified_email(request, invitation.email)
        return render(request, self.template_name, {"invitation": invitation, "next": request.path})

    def post(self, request, token):
        if not request.user.is_authenticated:
            return redirect(f"{reverse('account_login')}?next={request.path}")
        try:
            membership = services.invitation_accept(actor=Actor.from_request(request), token=token)
        except DomainError as error:
            return render(request, self.template_name, {"error": error.message}, status=400)
        messages.success(
            request, f"You joined {membership.organization.name} as {membership.get_role_display()}."
        )
        return redirect("org-dashboard", org_slug=membership.organization.slug)


@method_decorator(login_required, name="dispatch")
class PendingInvitationsView(TemplateView):
    """The invitations waiting for the user, to accept or decline without their email link."""

    template_name = "portal/invitations_pending.html"

    def get_context_data(self, **kwargs):
        user = self.request.user
        return super().get_context_data(
            invitations=selectors.invitations_pending_for(user=user),
            has_organizations=selectors.organizations_for_user(user=user).exists(),
            **kwargs,
        )


@method_decorator(login_required, name="dispatch")
class PendingInvitationActionView(View):
    action: str = ""

    def post(self, request, invitation_id):
        invitation = selectors.invitation_pending_get(user=request.user, invitation_id=invitation_id)
        if invitation is None:
            raise Http404("No such invitation.")
        actor = Actor.from_request(request)
        try:
            if self.action == "accept":
                membership = services.invitation_accept_pending(actor=actor, invitation=invitation)
                messages.success(
                    request, f"You joined {membership.organization.name} as {membership.get_role_display()}."
                )
                return redirect("org-dashboard", org_slug=membership.organization.slug)
            services.invitation_decline(actor=actor, invitation=invitation)
            messages.success(request, f"You declined the invitation to join {invitation.organization.name}.")
        except DomainError as error:
            messages.error(request, error.message)
        return redirect("invitations-pending")


class SettingsView(OrganizationMixin, TemplateView):
    template_name = "portal/settings.html"
    required_permission = Perm.ORG_MANAGE

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["form"] = kwargs.get("form") or OrganizationSettingsForm(
            initial={"name": self.organization.name, "require_mfa": self.organization.require_mfa}
        )
        return context

    def post(self, request, org_slug):
        form = OrganizationSettingsForm(request.POST)
        if form.is_valid():
            try:
                services.organization_update(
                    actor=Actor.from_request(request), organization=self.organization, **form.cleaned_data
                )
            except DomainError as error:
                form.add_error(error.field, error.message)
            else:
                messages.success(request, "Settings saved.")
                return redirect("org-settings", org_slug=org_slug)
        return self.render_to_response(self.get_context_data(form=form), status=400)


def _audit_events(organization, data):
    def day_start(value):
        return timezone.make_aware(datetime.combine(value, time.min)) if value else None

    until = data.get("until")
    return selectors.audit_events_list(
        organization=organization,
        action=data.get("action", ""),
        actor=data.get("actor", ""),
        since=day_start(data.get("since")),
        until=day_start(until + timedelta(days=1)) if until else None,
    )


class AuditLogView(OrganizationMixin, TemplateView):
    template_name = "portal/audit.html"
    required_permission = Perm.AUDIT_VIEW

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        form = AuditFilterForm(
            self.request.GET, actions=selectors.audit_actions_list(organization=self.organization)
        )
        data = form.cleaned_data if form.is_valid() else {}
        page = Paginator(_audit_events(self.organization, data), 50).get_page(self.request.GET.get("page"))
        page.object_list = list(page.object_list)
        labels = audit_target_labels(organization=self.organization, events=page.object_list)
        for event in page.object_list:
            event.target_label = labels[event.pk]
        query = self.request.GET.copy()
        query.pop("page", None)
        context.update(form=form, page=page, query=query.urlencode())
        return context


class _Echo:
    def write(self, value):
        return value


class AuditExportView(OrganizationMixin, View):
    required_permission = Perm.AUDIT_VIEW

    def get(self, request, org_slug):
        form = AuditFilterForm(
            request.GET, actions=selectors.audit_actions_list(organization=self.organization)
        )
        data = form.cleaned_data if form.is_valid() else {}
        writer = csv.writer(_Echo())
        header = [
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

        def rows():
            yield writer.writerow(header)
            for event in _audit_events(self.organization, data).iterator(chunk_size=1000):
                # The user agent and the actor label come from outside: a cell may be a formula.
                yield writer.writerow(
                    csv_row(
                        [
                            event.created_at.isoformat(),
                            event.action,
                            event.actor_label,
                            event.actor_type,
                            event.target_type,
                            event.target_id,
                            event.ip_address or "",
                            event.user_agent,
                            json.dumps(event.metadata, sort_keys=True),
                        ]
                    )
                )

        response = StreamingHttpResponse(rows(), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="audit-{org_slug}.csv"'
        return response


@never_cache
def healthz(request):
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request):
    """Ready when Postgres and Redis both answer."""
    from portal.observability import readiness

    status, payload = readiness()
    return JsonResponse(payload, status=status)


def metrics(request):
    from prometheus_client import CONTENT_TYPE_LATEST

    from portal.observability import metrics_payload, metrics_refusal

    refusal = metrics_refusal(
        remote_addr=request.META.get("REMOTE_ADDR", ""),
        authorization=request.headers.get("Authorization", ""),
        token=settings.METRICS_TOKEN,
    )
    if refusal is not None:
        status, message = refusal
        response = HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")
        if status == 401:
            response["WWW-Authenticate"] = "Bearer"
        return response
    return HttpResponse(metrics_payload(), content_type=CONTENT_TYPE_LATEST)


def error_403(request, exception=None):
    return render(request, "403.html", {"reason": str(exception or "")}, status=403)


def error_404(request, exception=None):
    return render(request, "404.html", status=404)


def error_500(request):
    return render(request, "500.html", status=500)
