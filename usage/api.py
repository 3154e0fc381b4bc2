"""Usage over the REST API: post events from another gateway; read usage from the rollups."""

from datetime import timedelta

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response

from keys.models import ApiKey
from portal.api.base import OrganizationAPIView
from portal.api.views import IDEMPOTENCY_HEADER, ORG_HEADER, responses
from portal.errors import DomainError
from portal.roles import Perm
from usage import selectors, services
from usage.export import usage_cost_total, usage_csv_response, usage_rows


class UsageEventInSerializer(serializers.Serializer):
    event_id = serializers.UUIDField(
        help_text="Your idempotency key for this event (UUID), unique within your organization."
    )
    key_id = serializers.CharField(max_length=40, help_text="The Tollgate key that was used (key_…).")
    model = serializers.CharField(max_length=200)
    timestamp = serializers.DateTimeField(help_text="When the request finished (ISO 8601).")
    input_tokens = serializers.IntegerField(min_value=0, max_value=10**12)
    output_tokens = serializers.IntegerField(min_value=0, max_value=10**12)
    cached_tokens = serializers.IntegerField(min_value=0, max_value=10**12, default=0)
    status = serializers.IntegerField(min_value=100, max_value=599, default=200)
    endpoint = serializers.CharField(max_length=32, required=False, allow_blank=True)
    request_id = serializers.CharField(max_length=128, required=False, allow_blank=True)
    latency_ms = serializers.FloatField(min_value=0, required=False)
    estimated = serializers.BooleanField(default=False)


class UsageEventsInSerializer(serializers.Serializer):
    events = serializers.ListField(child=serializers.DictField(), min_length=1, max_length=services.MAX_BATCH)


class UsageEventResultSerializer(serializers.Serializer):
    event_id = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(choices=["accepted", "duplicate", "rejected"])
    reason = serializers.CharField(required=False)


class UsageEventsResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()
    results = UsageEventResultSerializer(many=True)


class UsageEventsView(OrganizationAPIView):
    required_permissions = {"POST": Perm.USAGE_INGEST}

    @extend_schema(
        operation_id="usage_events_create",
        parameters=[ORG_HEADER, IDEMPOTENCY_HEADER],
        request=UsageEventsInSerializer,
        responses=responses(UsageEventsResultSerializer, 400, 401, 403, 404, 415, 422, 429),
        description="Post up to 1,000 usage events. Each gets a result: accepted, duplicate (not an error: "
        "this organization already posted an event with that `event_id`, whatever its timestamp) or "
        "rejected with the reason. Event ids are unique per organization: another organization's event "
        "with the same id is counted on its own. Invalid items never stop the valid ones.",
    )
    def post(self, request):
        batch = UsageEventsInSerializer(data=request.data)
        batch.is_valid(raise_exception=True)
        items: list[dict | None] = []
        results: list[dict | None] = []
        for raw in batch.validated_data["events"]:
            item = UsageEventInSerializer(data=raw)
            if item.is_valid():
                items.append(item.validated_data)
                results.append(None)
            else:
                reason = "; ".join(
                    f"{field}: {' '.join(map(str, errors))}" for field, errors in item.errors.items()
                )
                items.append(None)
                results.append(
                    {
                        "event_id": str(raw.get("event_id")) if raw.get("event_id") else None,
                        "status": "rejected",
                        "reason": reason,
                    }
                )
        valid = [item for item in items if item is not None]
        outcomes = iter(services.usage_events_post(organization=self.organization, items=valid))
        results = [result if result is not None else next(outcomes) for result in results]
        counts = {
            status: sum(1 for r in results if r["status"] == status)
            for status in ("accepted", "duplicate", "rejected")
        }
        return Response(
            {
                "accepted": counts["accepted"],
                "duplicates": counts["duplicate"],
                "rejected": counts["rejected"],
                "results": results,
            }
        )


class UsageQuerySerializer(serializers.Serializer):
    start = serializers.DateTimeField(required=False, help_text="Inclusive; default 7 days ago.")
    end = serializers.DateTimeField(required=False, help_text="Exclusive; default now.")
    granularity = serializers.ChoiceField(choices=["hour", "day"], default="day")
    group_by = serializers.CharField(required=False, default="", help_text="Comma-separated: model, key.")
    key = serializers.CharField(required=False, max_length=40, help_text="Only this key (key_…).")
    model = serializers.CharField(required=False, max_length=200)
    format = serializers.ChoiceField(choices=["json", "csv"], default="json")

    def validate_group_by(self, value):
        groups = tuple(part.strip() for part in value.split(",") if part.strip())
        unknown = [group for group in groups if group not in selectors.GROUPS]
        if unknown:
            raise serializers.ValidationError(f"Unknown groups: {', '.join(unknown)}. Use model and/or key.")
        return groups

    def validate(self, data):
        end = data.get("end") or timezone.now()
        start = data.get("start") or end - timedelta(days=7)
        if start >= end:
            raise serializers.ValidationError({"start": ["start must be before end."]})
        if data["granularity"] == "hour" and end - start > timedelta(days=31):
            raise serializers.ValidationError({"start": ["Hourly usage covers at most 31 days; use day."]})
        if end - start > timedelta(days=366 * 2):
            raise serializers.ValidationError({"start": ["Usage covers at most two years per request."]})
        data["start"], data["end"] = start, end
        return data


class UsageTotalsSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    errors = serializers.IntegerField(help_text="Answers with a status of 400 or more, refusals included.")
    refusals = serializers.IntegerField(
        help_text="Requests the edge refused: rate limits, budgets, the key's standing or access. Never billed."
    )
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()
    estimated_requests = serializers.IntegerField()
    cost_minor = serializers.IntegerField(
        help_text="The tokens priced with the organization's prices, in the currency's minor unit, "
        "rounded once (per row; the totals once over the whole window)."
    )
    currency = serializers.CharField(help_text="ISO 4217, lower case.")


class UsageRowSerializer(UsageTotalsSerializer):
    period = serializers.DateTimeField()
    model = serializers.CharField(required=False)
    key_id = serializers.CharField(required=False)
    key_name = serializers.CharField(required=False)


class UsageResultSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    granularity = serializers.CharField()
    group_by = serializers.ListField(child=serializers.CharField())
    data = UsageRowSerializer(many=True)
    totals = UsageTotalsSerializer()


class CSVRenderer(BaseRenderer):
    """Lets ``?format=csv`` select the CSV answer; the view builds the CSV response itself."""

    media_type = "text/csv"
    format = "csv"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data


class FormatNegotiation(DefaultContentNegotiation):
    """Leave an unknown ``?format=`` to the query serializer: a 400 naming the field, not a 404."""

    def filter_renderers(self, renderers, format):
        return [renderer for renderer in renderers if renderer.format == format] or list(renderers)


class UsageView(OrganizationAPIView):
    required_permissions = {"GET": Perm.USAGE_VIEW}
    renderer_classes = [JSONRenderer, CSVRenderer]
    content_negotiation_class = FormatNegotiation

    @extend_schema(
        operation_id="usage_retrieve",
        parameters=[ORG_HEADER, UsageQuerySerializer],
        responses=responses(
            {
                (200, "application/json"): UsageResultSerializer,
                (200, CSVRenderer.media_type): OpenApiResponse(
                    OpenApiTypes.STR, description="The rows as CSV."
                ),
            },
            400,
            401,
            403,
            404,
            429,
        ),
        description="Usage from the hourly rollups, grouped by hour or day and optionally by model and key, "
        "each row with its cost (`cost_minor`, an integer in the currency's minor unit, priced from the "
        "token counts with the organization's prices). `format=csv` (or `Accept: text/csv`) returns the "
        "same rows as CSV.",
    )
    def get(self, request):
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        key_pk = None
        if params.get("key"):
            key = ApiKey.objects.for_organization(self.organization).filter(public_id=params["key"]).first()
            if key is None:
                raise DomainError("No such key in this organization.", field="key")
            key_pk = key.pk
        data = usage_rows(
            organization=self.organization,
            start=params["start"],
            end=params["end"],
            granularity=params["granularity"],
            group_by=params["group_by"],
            key_id=key_pk,
            model=params.get("model"),
        )
        # ``?format=csv`` and ``Accept: text/csv`` both choose the CSV renderer.
        if request.accepted_renderer.format == CSVRenderer.format:
            return usage_csv_response(data, group_by=params["group_by"])
        window = {
            "organization": self.organization,
            "start": params["start"],
            "end": params["end"],
            "key_id": key_pk,
            "model": params.get("model"),
        }
        totals = {**selectors.usage_totals(**window), **usage_cost_total(**window)}
        return Response(
            {
                "start": params["start"],
                "end": params["end"],
                "granularity": params["granularity"],
                "group_by": list(params["group_by"]),
                "data": UsageRowSerializer(data, many=True).data,
                "totals": totals,
            }
        )
