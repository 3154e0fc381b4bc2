from portal import selectors
from portal.console import SESSION_ORG_KEY
from portal.navigation import organization_nav


def console(request):
    """Give every console page the user's organizations for the switcher."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    # The console mixin leaves the membership on the request, error pages (403) included.
    membership = getattr(request, "membership", None)
    match = getattr(request, "resolver_match", None)
    return {
        "organization_nav": organization_nav(
            organization_slug=membership.organization.slug,
            role=membership.role,
            current_url_name=match.url_name if match else None,
        )
        if membership
        else [],
        "my_organizations": selectors.organizations_for_user(user=user),
        "current_org_slug": getattr(getattr(request, "organization", None), "slug", None)
        or request.session.get(SESSION_ORG_KEY),
    }
