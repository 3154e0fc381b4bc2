"""The console's tenant resolution: one mixin every organization page inherits."""

from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import render

from portal import selectors
from portal.errors import DomainError
from portal.roles import ROLE_PERMISSIONS, role_has_permission

SESSION_ORG_KEY = "tollgate_org"


class OrganizationMixin(LoginRequiredMixin):
    """Resolve ``self.organization`` and ``self.membership`` from the URL, once.

    Not a member: 404, exactly like an organization that does not exist. A member whose
    role lacks ``required_permission``: 403. An organization that requires MFA refuses a
    member without it, with a page that says how to fix it.
    """

    required_permission: str | None = None
    # Methods other than GET/HEAD may need a stronger permission (e.g. view vs manage).
    write_permission: str | None = None

    def dispatch(self, request, *args, **kwargs):
        if not request.user.is_authenticated:
            return self.handle_no_permission()
        membership = selectors.membership_for(user=request.user, organization_slug=kwargs["org_slug"])
        if membership is None:
            raise Http404("No such organization.")
        self.membership = membership
        self.organization = membership.organization
        request.organization = self.organization
        request.membership = membership
        request.session[SESSION_ORG_KEY] = self.organization.slug
        if self.organization.require_mfa and not selectors.user_has_mfa(user=request.user):
            return render(
                request,
                "portal/mfa_required.html",
                {"organization": self.organization},
                status=403,
            )
        permission = self.required_permission
        if request.method not in ("GET", "HEAD") and self.write_permission:
            permission = self.write_permission
        if permission and not self.can(permission):
            raise PermissionDenied(f"Your role ({self.membership.get_role_display()}) cannot do this.")
        return super().dispatch(request, *args, **kwargs)

    def can(self, permission: str) -> bool:
        return role_has_permission(self.membership.role, permission)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(
            organization=self.organization,
            membership=self.membership,
            perms_in_org=ROLE_PERMISSIONS.get(self.membership.role, frozenset()),
        )
        return context

    def domain_error(self, error: DomainError) -> None:
        messages.error(self.request, error.message)
