"""Content-Security-Policy and Permissions-Policy on every web response.

The console has no inline script or style (behaviour lives in files under ``static/``), so
one fixed policy serves every page and no nonce is needed. Django 5.2 has no CSP support of
its own; this middleware is the whole of it.
"""

from urllib.parse import urlsplit

from django.conf import settings

# Views whose form hands the browser on to a client's own redirect URI: the OpenID Connect
# provider's consent and logout pages. Browsers check form-action along the redirect chain,
# and those URIs are per client, so these pages carry no form-action.
_REDIRECTING_FORMS = frozenset({"idp:oidc:authorization", "idp:oidc:logout"})

# Nothing in the console uses these. Payment stays off: Stripe's checkout runs on Stripe's
# own origin, which this header does not govern. WebAuthn sign-in asks on this origin only.
PERMISSIONS_POLICY = ", ".join(
    [
        "camera=()",
        "microphone=()",
        "geolocation=()",
        "payment=()",
        "usb=()",
        "publickey-credentials-get=(self)",
    ]
)


def sso_origins() -> list[str]:
    """Return the origins of the configured SSO providers' sign-in pages.

    Signing in with SSO posts a form that the server answers with a redirect to the
    provider, and browsers apply form-action to that redirect too.
    """
    providers = settings.SOCIALACCOUNT_PROVIDERS
    origins = set()
    for app in providers.get("openid_connect", {}).get("APPS", []):
        parts = urlsplit(app["settings"]["server_url"])
        origins.add(f"{parts.scheme}://{parts.netloc}")
    if "github" in providers:
        origins.add("https://github.com")
    return sorted(origins)


def content_security_policy(*, form_action: list[str] | None) -> str:
    """Build the policy; without ``form_action`` the directive is left out."""
    directives = [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        # data: images: Pico's form icons and the TOTP QR code.
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'self'",
        "frame-ancestors 'none'",
    ]
    if form_action is not None:
        directives.append("form-action " + " ".join(form_action))
    return "; ".join(directives)


class SecurityHeadersMiddleware:
    """Add the CSP and Permissions-Policy headers unless a view set its own."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.policy = content_security_policy(form_action=["'self'", *sso_origins()])
        self.redirecting_policy = content_security_policy(form_action=None)

    def __call__(self, request):
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        redirecting = match is not None and match.view_name in _REDIRECTING_FORMS
        response.headers.setdefault(
            "Content-Security-Policy", self.redirecting_policy if redirecting else self.policy
        )
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response
