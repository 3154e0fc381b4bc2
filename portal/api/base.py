"""The base of every tenant API view: the organization is resolved once, from the credential."""

from django.db import transaction
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import APIView

from portal import selectors
from portal.api.authentication import ServicePrincipal
from portal.api.idempotency import fingerprint, idempotency_claim
from portal.api.pagination import CursorPagination
from portal.api.problems import PROBLEM_CONTENT_TYPE, render_as_problem
from portal.audit import Actor, client_ip
from portal.errors import DomainError, NotFound
from portal.models import AuditEvent

ORGANIZATION_HEADER = "Tollgate-Organization"


class _Replay(Exception):
    def __init__(self, status: int, data):
        self.status = status
        self.data = data


class OrganizationAPIView(APIView):
    """Resolve ``self.organization`` and ``self.role`` for the caller.

    A service account acts in its own organization with its own role. A console session
    names the organization in the ``Tollgate-Organization`` header (a slug), or may omit it
    when the user belongs to exactly one. Not a member answers 404, like a missing one.
    POSTs carrying ``Idempotency-Key`` run in one transaction with their stored outcome.
    """

    required_permissions: dict[str, str] = {}
    pagination_class = CursorPagination

    def paginated(self, queryset, serializer_class, *, ordering: str):
        """Return one cursor page of the queryset, serialized."""
        paginator = self.pagination_class()
        paginator.ordering = ordering
        page = paginator.paginate_queryset(queryset, self.request, view=self)
        return paginator.get_paginated_response(serializer_class(page, many=True).data)

    def dispatch(self, request, *args, **kwargs):
        if request.method == "POST" and request.headers.get("Idempotency-Key") is not None:
            with transaction.atomic():
                response = super().dispatch(request, *args, **kwargs)
                if response.status_code >= 500:
                    transaction.set_rollback(True)
                return response
        return super().dispatch(request, *args, **kwargs)

    def initial(self, request, *args, **kwargs):
        method = request.method.lower()
        if method not in self.http_method_names or not hasattr(self, method):
            # No such operation: 405 for everyone, before the role table refuses a method it lacks.
            self.http_method_not_allowed(request)
        super().initial(request, *args, **kwargs)
        self._resolve_organization(request)
        self._publish_organization(request)
        self.check_permissions(request)
        self._claim = None
        key = request.headers.get("Idempotency-Key")
        if request.method == "POST" and key is not None:
            self._claim = idempotency_claim(
                # Scoped to the organization as well: a session acts in several, and a replay
                # must never hand one tenant's stored response to a request made in another.
                credential=f"{self.credential_id}:org:{self.organization.pk}",
                key=key,
                request_fingerprint=fingerprint(request.method, request.path, request._request.body),
            )
            if self._claim.replay is not None:
                raise _Replay(*self._claim.replay)

    def _publish_organization(self, request) -> None:
        # The request log line names the organization, as for console pages.
        request._request.organization = self.organization

    def check_permissions(self, request):
        # Permissions need the role, so they run after the organization is resolved.
        if getattr(self, "role", None) is not None:
            super().check_permissions(request)

    def _resolve_organization(self, request) -> None:
        principal = request.user
        if principal is None or not principal.is_authenticated:
            raise exceptions.NotAuthenticated()
        if isinstance(principal, ServicePrincipal):
            account = principal.service_account
            self.organization = account.organization
            self.role = account.role
            self.credential_id = principal.credential_id
            self.actor = Actor(
                user=None,
                type=AuditEvent.ActorType.SERVICE,
                ip=client_ip(request),
                user_agent=request.headers.get("User-Agent", "")[:512],
                name=f"{account.name} ({account.public_id})",
            )
            return
        slug = request.headers.get(ORGANIZATION_HEADER)
        if slug:
            membership = selectors.membership_for(user=principal, organization_slug=slug)
        else:
            memberships = list(selectors.memberships_of(user=principal)[:2])
            if len(memberships) != 1:
                raise DomainError(
                    f"Name the organization in the {ORGANIZATION_HEADER} header (its slug).",
                    code="organization_required",
                )
            membership = memberships[0]
        if membership is None:
            raise NotFound("Organization not found.")
        self.organization = membership.organization
        self.role = membership.role
        self.credential_id = f"user:{principal.pk}"
        self.actor = Actor.from_request(request._request, user=principal)
        if self.organization.require_mfa and not selectors.user_has_mfa(user=principal):
            raise exceptions.PermissionDenied(
                f"{self.organization.name} requires two-factor authentication. Set it up in the console."
            )

    def handle_exception(self, exc):
        if isinstance(exc, _Replay):
            response = Response(exc.data, status=exc.status, headers={"Idempotent-Replayed": "true"})
            if exc.status >= 400:
                response.content_type = PROBLEM_CONTENT_TYPE
                render_as_problem(self.request)
            return response
        return super().handle_exception(exc)

    def finalize_response(self, request, response, *args, **kwargs):
        claim = getattr(self, "_claim", None)
        if claim is not None and claim.record is not None and response.status_code < 500:
            claim.store(response.status_code, response.data)
        return super().finalize_response(request, response, *args, **kwargs)
