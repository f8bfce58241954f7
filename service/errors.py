"""One error tree: each class carries its HTTP status and machine-readable type; one handler renders them."""

from __future__ import annotations


class GlassboxError(Exception):
    """Base of every error the service reports to a client."""

    status: int = 500
    type: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


class MalformedRequest(GlassboxError):
    """The body is not valid JSON (or not an object)."""

    status = 400
    type = "malformed_request"


class Unauthorized(GlassboxError):
    """No API key, or one that matches none of the configured digests."""

    status = 401
    type = "unauthorized"


class NotFound(GlassboxError):
    status = 404
    type = "not_found"


class ModelNotFound(NotFound):
    type = "model_not_found"


class PayloadTooLarge(GlassboxError):
    status = 413
    type = "payload_too_large"


class InvalidRequest(GlassboxError):
    """A field is wrong; ``param`` names it."""

    status = 422
    type = "invalid_request"


class BudgetExceeded(InvalidRequest):
    """The request is valid but over a configured size limit; the message says which and by how much."""

    type = "budget_exceeded"


class Overloaded(GlassboxError):
    """The model's slots and queue are full; ``Retry-After`` says when to come back."""

    status = 429
    type = "overloaded"


class ClientClosedRequest(GlassboxError):
    """The client went away; nobody reads this response (499, as nginx logs it), it exists for logs and metrics."""

    status = 499
    type = "cancelled"


class ModelNotReady(GlassboxError):
    status = 503
    type = "not_ready"


class OutOfMemory(GlassboxError):
    """This request ran out of device or host memory; the model is fine and the next request may succeed."""

    status = 503
    type = "out_of_memory"


class ShuttingDown(GlassboxError):
    """The server is draining before exit: it finishes what it has and takes nothing new."""

    status = 503
    type = "shutting_down"


class DeadlineExceeded(GlassboxError):
    """The request's deadline passed (waiting or generating); the model stopped at the next token."""

    status = 504
    type = "timeout"
