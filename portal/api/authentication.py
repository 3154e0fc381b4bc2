"""API credentials: OAuth2 access tokens of service accounts, or a console session with CSRF."""

from dataclasses import dataclass

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions


@dataclass(frozen=True)
class ServicePrincipal:
    """The caller behind an OAuth2 client-credentials token."""

    service_account: object

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    pk = None
    email = ""

    @property
    def credential_id(self) -> str:
        return f"sa:{self.service_account.public_id}"

    def __str__(self) -> str:
        return f"service account {self.service_account.name}"


class ServiceAccountTokenAuthentication(authentication.BaseAuthentication):
    """Accept ``Authorization: Bearer <access token>`` issued by the portal's token endpoint."""

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != b"bearer":
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header.")
        from allauth.idp.oidc.models import Token

        token = Token.objects.lookup(Token.Type.ACCESS_TOKEN, header[1].decode("latin-1"))
        if token is None or token.client_id is None:
            raise exceptions.AuthenticationFailed("The access token is invalid or has expired.")
        from keys.models import ServiceAccount

        service_account = (
            ServiceAccount.unscoped.select_related("organization")
            .filter(client_id=token.client_id, revoked_at=None)
            .first()
        )
        if service_account is None:
            raise exceptions.AuthenticationFailed("The access token is invalid or has expired.")
        return ServicePrincipal(service_account), token

    def authenticate_header(self, request):
        return 'Bearer realm="tollgate"'


class SessionAuthentication(authentication.SessionAuthentication):
    """A logged-in console session; unsafe methods need the CSRF token like any form."""


class _ServiceAccountTokenScheme(OpenApiAuthenticationExtension):
    target_class = "portal.api.authentication.ServiceAccountTokenAuthentication"
    name = "oauth2"

    def get_security_definition(self, auto_schema):
        return {
            "type": "oauth2",
            "description": "Access token of a service account (client-credentials grant).",
            "flows": {"clientCredentials": {"tokenUrl": "/identity/o/api/token", "scopes": {}}},
        }


class _SessionScheme(OpenApiAuthenticationExtension):
    target_class = "portal.api.authentication.SessionAuthentication"
    name = "cookieAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}
