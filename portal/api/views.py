"""Organization, members, invitations and audit events over the REST API."""

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from portal import selectors, services
from portal.api.base import OrganizationAPIView
from portal.api.problems import PROBLEM_CONTENT_TYPE
from portal.api.serializers import (
    AuditEventSerializer,
    InvitationCreateSerializer,
    InvitationSerializer,
    MemberSerializer,
    MemberUpdateSerializer,
    OrganizationSerializer,
    OrganizationUpdateSerializer,
    ProblemSerializer,
)
from portal.roles import Perm

PROBLEMS = {
    code: OpenApiResponse(ProblemSerializer, description=text)
    for code, text in {
        400: "Invalid request (problem+json, per-field errors), or no organization named",
        401: "Not authenticated",
        402: "The card was declined (problem+json with Stripe's decline_code)",
        403: "The role lacks the permission",
        404: "Not found, or another organization's",
        406: "The Accept header names no media type this operation answers",
        409: "Conflicts with the current state (e.g. already a member, the last owner)",
        415: "The body is not JSON (see Content-Type)",
        422: "Idempotency-Key reused with a different request",
        429: "Rate limited; see Retry-After",
        502: "Stripe refused or failed the call",
        503: "Stripe could not be reached, or the invoice is being charged already; retry later",
    }.items()
}
ORG_HEADER = OpenApiParameter(
    "Tollgate-Organization",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Organization slug, for console sessions in several organizations.",
)
IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Makes a POST safe to retry: a replay returns the stored response.",
)


# Every tenant operation can answer these: no organization named (400), not authenticated
# (401), role, MFA or CSRF (403), not a member (404), nothing acceptable (406), rate limited
# (429). Operations with a body add 415.
ALWAYS = (400, 401, 403, 404, 406, 429)


def responses(ok, *codes):
    """Document the success body, then each error as the problem+json it is served as."""
    result = {**ok} if isinstance(ok, dict) else {200: ok}
    for code in sorted(set(codes) | set(ALWAYS)):
        result[(code, PROBLEM_CONTENT_TYPE)] = PROBLEMS[code]
    return result


class OrganizationView(OrganizationAPIView):
    required_permissions = {"GET": "*", "PATCH": Perm.ORG_MANAGE}

    @extend_schema(
        operation_id="organization_retrieve",
        parameters=[ORG_HEADER],
        responses=responses(OrganizationSerializer, 401, 404, 429),
    )
    def get(self, request):
        return Response(OrganizationSerializer(self.organization).data)

    @extend_schema(
        operation_id="organization_update",
        parameters=[ORG_HEADER],
        request=OrganizationUpdateSerializer,
        responses=responses(OrganizationSerializer, 400, 401, 403, 404, 415, 429),
    )
    def patch(self, request):
        data = OrganizationUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        organization = services.organization_update(
            actor=self.actor,
            organization=self.organization,
            name=data.validated_data.get("name", self.organization.name),
            require_mfa=data.validated_data.get("require_mfa", self.organization.require_mfa),
        )
        return Response(OrganizationSerializer(organization).data)


class MemberListView(OrganizationAPIView):
    required_permissions = {"GET": Perm.MEMBERS_VIEW}

    @extend_schema(
        operation_id="members_list",
        parameters=[ORG_HEADER],
        responses=responses(MemberSerializer(many=True), 401, 403, 404, 429),
    )
    def get(self, request):
        return self.paginated(
            selectors.members_list(organization=self.organization), MemberSerializer, ordering="id"
        )


class MemberDetailView(OrganizationAPIView):
    required_permissions = {
        "GET": Perm.MEMBERS_VIEW,
        "PATCH": Perm.MEMBERS_MANAGE,
        "DELETE": Perm.MEMBERS_MANAGE,
    }

    def _membership(self, member_id):
        membership = selectors.membership_get(organization=self.organization, membership_id=member_id)
        if membership is None:
            raise Http404
        return membership

    @extend_schema(
        operation_id="members_retrieve",
        parameters=[ORG_HEADER],
        responses=responses(MemberSerializer, 401, 403, 404, 429),
    )
    def get(self, request, member_id: int):
        return Response(MemberSerializer(self._membership(member_id)).data)

    @extend_schema(
        operation_id="members_update_role",
        parameters=[ORG_HEADER],
        request=MemberUpdateSerializer,
        responses=responses(MemberSerializer, 400, 401, 403, 404, 409, 415, 429),
    )
    def patch(self, request, member_id: int):
        data = MemberUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.membership_change_role(
            actor=self.actor, membership=self._membership(member_id), role=data.validated_data["role"]
        )
        return Response(MemberSerializer(membership).data)

    @extend_schema(
        operation_id="members_remove",
        parameters=[ORG_HEADER],
        responses=responses({204: None}, 401, 403, 404, 409, 429),
    )
    def delete(self, request, member_id: int):
        services.membership_remove(actor=self.actor, membership=self._membership(member_id))
        return Response(status=204)


class InvitationListView(OrganizationAPIView):
    required_permissions = {"GET": Perm.MEMBERS_VIEW, "POST": Perm.MEMBERS_MANAGE}

    @extend_schema(
        operation_id="invitations_list",
        parameters=[ORG_HEADER],
        responses=responses(InvitationSerializer(many=True), 401, 403, 404, 429),
    )
    def get(self, request):
        return self.paginated(
            selectors.invitations_list(organization=self.organization), InvitationSerializer, ordering="-id"
        )

    @extend_schema(
        operation_id="invitations_create",
        parameters=[ORG_HEADER, IDEMPOTENCY_HEADER],
        request=InvitationCreateSerializer,
        responses=responses({201: InvitationSerializer}, 400, 401, 403, 404, 409, 415, 422, 429),
    )
    def post(self, request):
        data = InvitationCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        invitation, _token = services.invitation_create(
            actor=self.actor, organization=self.organization, **data.validated_data
        )
        return Response(InvitationSerializer(invitation).data, status=201)


class InvitationRevokeView(OrganizationAPIView):
    required_permissions = {"POST": Perm.MEMBERS_MANAGE}

    @extend_schema(
        operation_id="invitations_revoke",
        parameters=[ORG_HEADER, IDEMPOTENCY_HEADER],
        request=None,
        responses=responses(InvitationSerializer, 401, 403, 404, 409, 422, 429),
    )
    def post(self, request, invitation_id: int):
        invitation = selectors.invitation_get(organization=self.organization, invitation_id=invitation_id)
        if invitation is None:
            raise Http404
        invitation = services.invitation_revoke(actor=self.actor, invitation=invitation)
        return Response(InvitationSerializer(invitation).data)


class AuditFilterSerializer(serializers.Serializer):
    action = serializers.CharField(required=False, max_length=64)
    actor = serializers.CharField(required=False, max_length=254)
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)


class AuditEventListView(OrganizationAPIView):
    required_permissions = {"GET": Perm.AUDIT_VIEW}

    @extend_schema(
        operation_id="audit_events_list",
        parameters=[ORG_HEADER, AuditFilterSerializer],
        responses=responses(AuditEventSerializer(many=True), 400, 401, 403, 404, 429),
    )
    def get(self, request):
        filters = AuditFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        events = selectors.audit_events_list(organization=self.organization, **filters.validated_data)
        return self.paginated(events, AuditEventSerializer, ordering="-id")
