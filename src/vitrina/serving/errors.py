"""The requests a server refuses: one exception class per HTTP status and error code."""
from __future__ import annotations

from vitrina.errors import VitrinaError


class ServingError(VitrinaError):
    """A request the server refuses; rendered as ``{"error": code, "detail": message}``."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class PayloadTooLarge(ServingError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServingError):
    status, code = 415, "unsupported_media_type"


class InvalidImage(ServingError):
    status, code = 422, "invalid_image"


class UnknownCategory(ServingError):
    status, code = 422, "unknown_category"


class Overloaded(ServingError):
    status, code = 503, "overloaded"


class NotReady(ServingError):
    status, code = 503, "not_ready"


class LogUnavailable(ServingError):
    status, code = 503, "log_unavailable"


class InvalidQuery(ServingError):
    status, code = 422, "invalid_request"
