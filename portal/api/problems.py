"""RFC 9457 problem details for every API error."""

import json

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from portal.errors import DomainError

PROBLEM_CONTENT_TYPE = "application/problem+json"

_TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
    402: "Payment required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Server error",
    502: "Bad gateway",
    503: "Service unavailable",
}


class ProblemRenderer(JSONRenderer):
    """Render error bodies as JSON whatever the view's renderers are (CSV included)."""

    media_type = PROBLEM_CONTENT_TYPE


def problem_body(status_code: int, code: str, detail: str, *, errors: dict | None = None) -> dict:
    body = {
        "type": f"urn:tollgate:problem:{code}",
        "title": _TITLES.get(status_code, "Error"),
        "status": status_code,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return body


def render_as_problem(request) -> None:
    """Render this request's answer as problem+json, whichever renderer negotiation chose."""
    request.accepted_renderer = ProblemRenderer()
    request.accepted_media_type = PROBLEM_CONTENT_TYPE


def problem(
    status_code: int, code: str, detail: str, *, errors: dict | None = None, headers=None
) -> Response:
    """Build a problem+json response."""
    response = Response(
        problem_body(status_code, code, detail, errors=errors), status=status_code, headers=headers
    )
    response.content_type = PROBLEM_CONTENT_TYPE
    return response


class ProblemResponseMiddleware:
    """Turn every error answered under ``/api/`` into problem+json, whoever answered it.

    DRF views answer problems themselves; Django answers before or after a view runs: a URL
    that matches no route (a non-numeric id, say), a server error, a refused host. Their
    HTML pages become a problem with the same status and headers.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            response.status_code >= 400
            and request.path_info.startswith("/api/")
            and response.get("Content-Type") != PROBLEM_CONTENT_TYPE
            and not response.streaming
        ):
            phrase = response.reason_phrase
            code = phrase.lower().replace(" ", "_").replace("-", "_")
            body = problem_body(response.status_code, code, f"{phrase.capitalize()}.")
            response.content = json.dumps(body).encode()
            response["Content-Type"] = PROBLEM_CONTENT_TYPE
            if response.has_header("Content-Length"):
                response["Content-Length"] = str(len(response.content))
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
    response = _problem_for(exc, context)
    if response is not None:
        render_as_problem(context["request"])
    return response


def _problem_for(exc, context):
    if isinstance(exc, DomainError):
        errors = {exc.field: [exc.message]} if exc.field else None
        # A refused field reads like any other validation error, whichever layer refused it.
        code = "validation_error" if exc.field and exc.code == DomainError.code else exc.code
        response = problem(exc.status, code, exc.message, errors=errors)
        response.data.update(exc.problem_members())
        return response
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
