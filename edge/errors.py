"""Errors in OpenAI's JSON shape, so any OpenAI SDK shows them as it shows OpenAI's own."""

import orjson


class EdgeError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        refusal: str = "",
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or []
        # The reason (edge/events.py REFUSAL_REASONS) when this refuses a known key's request,
        # which is then metered; and the key's record, when authentication refused it.
        self.refusal = refusal
        self.record = None
        # What the edge knew of the request when it refused it (for the request metrics), and
        # whether the exchange already metered it (an upstream error after admission).
        self.model = ""
        self.org_id: int | None = None
        self.metered = False

    def body(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        )


def invalid_key(message: str = "Incorrect API key provided.", refusal: str = "") -> EdgeError:
    return EdgeError(401, message, code="invalid_api_key", refusal=refusal)


def service_unavailable(message: str) -> EdgeError:
    """503 with ``Retry-After: 1``: the edge cannot decide now, and will shortly."""
    return EdgeError(
        503, message, type="server_error", code="service_unavailable", headers=[(b"retry-after", b"1")]
    )
