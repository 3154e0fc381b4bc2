"""RFC 9457 problem details for every API error."""

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

from portal.errors import DomainError

PROBLEM_CONTENT_TYPE = "application/problem+json"

_TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
}


def problem(
    status_code: int, code: str, detail: str, *, errors: dict | None = None, headers=None
) -> Response:
    """Build a problem+json response."""
    body = {
        "type": f"urn:tollgate:problem:{code}",
        "title": _TITLES.get(status_code, "Error"),
        "status": status_code,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    response = Response(body, status=status_code, headers=headers)
    response.content_type = PROBLEM_CONTENT_TYPE
    return response


def _flatten(detail, prefix: str = "") -> dict[str, list[str]]:
    """Turn DRF's nested error details into ``{"field.sub": ["message", ...]}``."""
    flat: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = "" if key == "non_field_errors" else str(key)
            for sub, messages in _flatten(
                value, f"{prefix}.{name}" if prefix and name else prefix or name
            ).items():
                flat.setdefault(sub, []).extend(messages)
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            flat.setdefault(prefix, []).extend(str(item) for item in detail)
        else:
            for index, item in enumerate(detail):
                for sub, messages in _flatten(item, f"{prefix}[{index}]").items():
                    flat.setdefault(sub, []).extend(messages)
    else:
        flat.setdefault(prefix, []).append(str(detail))
    return flat


def exception_handler(exc, context):
    if isinstance(exc, DomainError):
        errors = {exc.field: [exc.message]} if exc.field else None
        # A refused field reads like any other validation error, whichever layer refused it.
        code = "validation_error" if exc.field and exc.code == DomainError.code else exc.code
        return problem(exc.status, code, exc.message, errors=errors)
    if isinstance(exc, Http404):
        return problem(404, "not_found", "Not found.")
    if isinstance(exc, PermissionDenied):
        return problem(403, "permission_denied", str(exc) or "You do not have permission to do this.")
    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        return problem(400, "validation_error", "The request has invalid fields.", errors=errors)
    if isinstance(exc, exceptions.Throttled):
        wait = int(exc.wait or 1)
        return problem(
            429,
            "rate_limited",
            f"Too many requests. Retry in {wait} seconds.",
            headers={"Retry-After": str(max(wait, 1))},
        )
    if isinstance(exc, exceptions.APIException):
        headers = {}
        if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
            authenticator = context["request"].authenticators
            if authenticator:
                headers["WWW-Authenticate"] = authenticator[0].authenticate_header(context["request"])
            status_code = status.HTTP_401_UNAUTHORIZED
        else:
            status_code = exc.status_code
        detail = exc.detail if isinstance(exc.detail, str) else "; ".join(str(d) for d in exc.detail)
        return problem(status_code, exc.default_code, str(detail), headers=headers or None)
    return None
