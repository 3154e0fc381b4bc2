from rest_framework.throttling import SimpleRateThrottle


class CredentialRateThrottle(SimpleRateThrottle):
    """Limit each credential (service account or user session) across all web replicas."""

    scope = "credential"

    def get_cache_key(self, request, view):
        user = request.user
        if user is None or not user.is_authenticated:
            ident = f"anon:{self.get_ident(request)}"
        else:
            ident = getattr(user, "credential_id", None) or f"user:{user.pk}"
        return f"tg:api:throttle:{ident}"
