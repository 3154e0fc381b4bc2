from billing.dunning import dunning_suspends_at
from billing.models import Dunning
from portal.models import Organization


def billing_standing(request):
    """Give every console page of a past-due or billing-suspended organization its banner."""
    organization = getattr(request, "organization", None)
    if organization is None or organization.status_reason != Organization.StatusReason.BILLING:
        return {}
    dunning = Dunning.objects.filter(organization=organization, ended_at__isnull=True).first()
    suspended = organization.status == Organization.Status.SUSPENDED
    return {
        "billing_standing": {
            "suspended": suspended,
            "suspends_at": dunning_suspends_at(dunning) if dunning and not suspended else None,
        }
    }
