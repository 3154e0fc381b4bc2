"""Content-Security-Policy and Permissions-Policy on every web response.

The console has no inline script or style (behaviour lives in files under ``static/``), so
one fixed policy serves every page and no nonce is needed. Django 5.2 has no CSP support of
its own; this middleware is the whole of it.

The one exception is Stripe.js, which Stripe requires be loaded from its own host: the pages
that collect a card (``_STRIPE_PAGES``) also allow its script, its frames and its calls to
Stripe's API, and no other page does.
"""

from urllib.parse import urlsplit

from django.conf import settings

# Views whose form hands the browser on to a client's own redirect URI: the OpenID Connect
# provider's consent and logout pages. Browsers check form-action along the redirect chain,
# and those URIs are per client, so these pages carry no form-action.
_REDIRECTING_FORMS = frozenset({"idp:oidc:authorization", "idp:oidc:logout"})

# Pages that load Stripe.js to collect a card.
_STRIPE_PAGES = frozenset({"org-billing"})

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


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def stripe_js_sources() -> dict[str, list[str]]:
    """Return, per directive, the origins Stripe.js needs (Stripe's CSP guide), from the settings.

    Its script (``STRIPE_JS_URL``), the frames it draws the card fields and 3-D Secure in,
    and its calls to Stripe's API (``STRIPE_API_BASE``).
    """
    js = _origin(settings.STRIPE_JS_URL)
    frames = [js, "https://hooks.stripe.com"]
    if urlsplit(settings.STRIPE_JS_URL).hostname == "js.stripe.com":
        # Stripe.js serves parts of itself from subdomains of its host.
        frames.append("https://*.js.stripe.com")
        scripts = [js, "https://*.js.stripe.com"]
    else:
        scripts = [js]
    return {"script-src": scripts, "frame-src": frames, "connect-src": [_origin(settings.STRIPE_API_BASE)]}


def content_security_policy(
    *, form_action: list[str] | None, stripe: dict[str, list[str]] | None = None
) -> str:
    """Build the policy; without ``form_action`` the directive is left out.

    ``stripe`` adds the origins Stripe.js needs (see ``stripe_js_sources``).
    """
    stripe = stripe or {}
    directives = [
        "default-src 'self'",
        " ".join(["script-src 'self'", *stripe.get("script-src", [])]),
        "style-src 'self'",
        # data: images: Pico's form icons and the TOTP QR code.
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'self'",
        "frame-ancestors 'none'",
    ]
    if stripe:
        directives.append(" ".join(["frame-src", *stripe["frame-src"]]))
        directives.append(" ".join(["connect-src 'self'", *stripe["connect-src"]]))
    if form_action is not None:
        directives.append("form-action " + " ".join(form_action))
    return "; ".join(directives)


class SecurityHeadersMiddleware:
    """Add the CSP and Permissions-Policy headers unless a view set its own."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.form_action = ["'self'", *sso_origins()]
        self.policy = content_security_policy(form_action=self.form_action)
        self.redirecting_policy = content_security_policy(form_action=None)

    def __call__(self, request):
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        view_name = match.view_name if match is not None else None
        if view_name in _REDIRECTING_FORMS:
            policy = self.redirecting_policy
        elif view_name in _STRIPE_PAGES:
            # Built per request: the Stripe settings are read when used, never at start-up.
            policy = content_security_policy(form_action=self.form_action, stripe=stripe_js_sources())
        else:
            policy = self.policy
        response.headers.setdefault("Content-Security-Policy", policy)
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response
