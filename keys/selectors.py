from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone

from keys.models import ApiKey, ApiKeySecret, ServiceAccount


def api_keys_list(
    *, organization, status: str = "", environment: str = "", name: str = ""
) -> QuerySet[ApiKey]:
    now = timezone.now()
    keys = ApiKey.objects.for_organization(organization).prefetch_related(
        Prefetch(
            "secrets", queryset=ApiKeySecret.objects.live(now).order_by("-created_at"), to_attr="live_secrets"
        )
    )
    if status == ApiKey.Status.REVOKED:
        keys = keys.exclude(revoked_at=None)
    elif status == ApiKey.Status.EXPIRED:
        keys = keys.filter(revoked_at=None, expires_at__lte=now)
    elif status == ApiKey.Status.ACTIVE:
        keys = keys.filter(revoked_at=None).filter(Q(expires_at=None) | Q(expires_at__gt=now))
    if environment:
        keys = keys.filter(environment=environment)
    if name:
        keys = keys.filter(name__icontains=name)
    return keys


def api_key_get(*, organization, key_id: str) -> ApiKey | None:
    return api_keys_list(organization=organization).filter(public_id=key_id).first()


def service_accounts_list(*, organization) -> QuerySet[ServiceAccount]:
    return ServiceAccount.objects.for_organization(organization).select_related("created_by")


def service_account_get(*, organization, account_id: str) -> ServiceAccount | None:
    return service_accounts_list(organization=organization).filter(public_id=account_id).first()
