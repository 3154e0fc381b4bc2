"""API keys over the REST API: list, create, retrieve, update, rotate, revoke."""

from datetime import timedelta

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from keys import selectors, services
from keys.models import ApiKey
from portal.api.base import OrganizationAPIView
from portal.api.views import IDEMPOTENCY_HEADER, ORG_HEADER, responses
from portal.errors import DomainError
from portal.roles import Perm


class SecretSerializer(serializers.Serializer):
    display = serializers.CharField(source="__str__")
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(
        allow_null=True, help_text="When this secret stops (rotation grace)."
    )


class LimitsSerializer(serializers.Serializer):
    rpm = serializers.IntegerField(source="rpm_limit", allow_null=True, min_value=1, required=False)
    tpm = serializers.IntegerField(source="tpm_limit", allow_null=True, min_value=1, required=False)
    concurrency = serializers.IntegerField(
        source="concurrency_limit", allow_null=True, min_value=1, required=False
    )


class BudgetSerializer(serializers.Serializer):
    monthly_minor = serializers.IntegerField(
        source="budget_monthly_minor",
        allow_null=True,
        min_value=0,
        required=False,
        help_text="Cents per month.",
    )
    alert_percent = serializers.IntegerField(
        source="budget_alert_percent", min_value=1, max_value=100, required=False
    )


class ApiKeySerializer(serializers.Serializer):
    id = serializers.CharField(source="public_id")
    name = serializers.CharField()
    environment = serializers.ChoiceField(choices=ApiKey.Environment.choices)
    status = serializers.ChoiceField(choices=ApiKey.Status.choices)
    secrets = SecretSerializer(source="live_secrets", many=True, help_text="Live secrets: current first.")
    allowed_models = serializers.ListField(child=serializers.CharField())
    allowed_ips = serializers.ListField(child=serializers.CharField())
    limits = LimitsSerializer(source="*")
    budget = BudgetSerializer(source="*")
    rotation_reminder_days = serializers.IntegerField(allow_null=True)
    metadata = serializers.JSONField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)


class ApiKeyWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False)
    expires_at = serializers.DateTimeField(allow_null=True, required=False)
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, max_length=100
    )
    allowed_ips = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=100
    )
    limits = LimitsSerializer(source="*", required=False)
    budget = BudgetSerializer(source="*", required=False)
    rotation_reminder_days = serializers.IntegerField(
        allow_null=True, min_value=1, max_value=3650, required=False
    )
    metadata = serializers.JSONField(required=False)


class ApiKeyCreateSerializer(ApiKeyWriteSerializer):
    name = serializers.CharField(max_length=100)
    environment = serializers.ChoiceField(choices=ApiKey.Environment.choices, default=ApiKey.Environment.LIVE)


class ApiKeyCreatedSerializer(ApiKeySerializer):
    secret = serializers.CharField(help_text="The key itself. Shown once: store it now.")


class RotateSerializer(serializers.Serializer):
    grace_period = serializers.IntegerField(
        min_value=0,
        max_value=7 * 24 * 3600,
        default=24 * 3600,
        help_text="Seconds the previous secret keeps working (0 = stop it now; at most 7 days).",
    )


class ApiKeyRotatedSerializer(ApiKeyCreatedSerializer):
    previous_secret_expires_at = serializers.DateTimeField(allow_null=True)


class KeyFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=ApiKey.Status.choices, required=False)
    environment = serializers.ChoiceField(choices=ApiKey.Environment.choices, required=False)
    name = serializers.CharField(required=False, max_length=100)


# Service field names as the API spells them, so per-field errors point at the request.
_API_FIELDS = {
    "rpm_limit": "limits.rpm",
    "tpm_limit": "limits.tpm",
    "concurrency_limit": "limits.concurrency",
    "budget_monthly_minor": "budget.monthly_minor",
    "budget_alert_percent": "budget.alert_percent",
}


def _api_field_names(call):
    try:
        return call()
    except DomainError as error:
        error.field = _API_FIELDS.get(error.field, error.field)
        raise


def _fresh(organization, key: ApiKey) -> ApiKey:
    return selectors.api_key_get(organization=organization, key_id=key.public_id)


class KeyListView(OrganizationAPIView):
    required_permissions = {"GET": Perm.KEYS_VIEW, "POST": Perm.KEYS_MANAGE}

    @extend_schema(
        operation_id="keys_list",
        parameters=[ORG_HEADER, KeyFilterSerializer],
        responses=responses(ApiKeySerializer(many=True), 400, 401, 403, 404, 429),
    )
    def get(self, request):
        filters = KeyFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        keys = selectors.api_keys_list(organization=self.organization, **filters.validated_data)
        return self.paginated(keys, ApiKeySerializer, ordering="-public_id")

    @extend_schema(
        operation_id="keys_create",
        parameters=[ORG_HEADER, IDEMPOTENCY_HEADER],
        request=ApiKeyCreateSerializer,
        responses=responses({201: ApiKeyCreatedSerializer}, 400, 401, 403, 404, 415, 422, 429),
    )
    def post(self, request):
        data = ApiKeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key, plaintext = _api_field_names(
            lambda: services.api_key_create(
                actor=self.actor, organization=self.organization, **data.validated_data
            )
        )
        key = _fresh(self.organization, key)
        key.secret = plaintext
        return Response(ApiKeyCreatedSerializer(key).data, status=201)


class _KeyView(OrganizationAPIView):
    def _key(self, key_id: str) -> ApiKey:
        key = selectors.api_key_get(organization=self.organization, key_id=key_id)
        if key is None:
            raise Http404
        return key


class KeyDetailView(_KeyView):
    required_permissions = {"GET": Perm.KEYS_VIEW, "PATCH": Perm.KEYS_MANAGE}

    @extend_schema(
        operation_id="keys_retrieve",
        parameters=[ORG_HEADER],
        responses=responses(ApiKeySerializer, 401, 403, 404, 429),
    )
    def get(self, request, key_id: str):
        return Response(ApiKeySerializer(self._key(key_id)).data)

    @extend_schema(
        operation_id="keys_update",
        parameters=[ORG_HEADER],
        request=ApiKeyWriteSerializer,
        responses=responses(ApiKeySerializer, 400, 401, 403, 404, 409, 415, 429),
    )
    def patch(self, request, key_id: str):
        key = self._key(key_id)
        data = ApiKeyWriteSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        _api_field_names(lambda: services.api_key_update(actor=self.actor, key=key, **data.validated_data))
        return Response(ApiKeySerializer(_fresh(self.organization, key)).data)


class KeyRotateView(_KeyView):
    required_permissions = {"POST": Perm.KEYS_MANAGE}

    @extend_schema(
        operation_id="keys_rotate",
        parameters=[ORG_HEADER, IDEMPOTENCY_HEADER],
        request=RotateSerializer,
        responses=responses(ApiKeyRotatedSerializer, 400, 401, 403, 404, 409, 415, 422, 429),
    )
    def post(self, request, key_id: str):
        key = self._key(key_id)
        data = RotateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key, plaintext, previous = services.api_key_rotate(
            actor=self.actor, key=key, grace_period=timedelta(seconds=data.validated_data["grace_period"])
        )
        key = _fresh(self.organization, key)
        key.secret = plaintext
        key.previous_secret_expires_at = previous.expires_at if previous else None
        return Response(ApiKeyRotatedSerializer(key).data)


class KeyRevokeView(_KeyView):
    required_permissions = {"POST": Perm.KEYS_MANAGE}

    @extend_schema(
        operation_id="keys_revoke",
        parameters=[ORG_HEADER, IDEMPOTENCY_HEADER],
        request=None,
        responses=responses(ApiKeySerializer, 401, 403, 404, 422, 429),
    )
    def post(self, request, key_id: str):
        key = services.api_key_revoke(actor=self.actor, key=self._key(key_id))
        return Response(ApiKeySerializer(_fresh(self.organization, key)).data)
