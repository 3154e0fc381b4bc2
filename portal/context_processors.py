from portal import selectors
from portal.console import SESSION_ORG_KEY


def console(request):
    """Give every console page the user's organizations for the switcher."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {
        "my_organizations": selectors.organizations_for_user(user=user),
        "current_org_slug": getattr(getattr(request, "organization", None), "slug", None)
        or request.session.get(SESSION_ORG_KEY),
    }
