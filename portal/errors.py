"""Domain errors raised by services; views and the API turn them into responses."""


class DomainError(Exception):
    """A request that the domain refuses. ``code`` is stable, ``message`` is for people."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code

    def problem_members(self) -> dict:
        """Return members the API's problem body carries besides the standard ones."""
        return {}


class NotAllowed(DomainError):
    status = 403
    code = "permission_denied"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class NotFound(DomainError):
    status = 404
    code = "not_found"
