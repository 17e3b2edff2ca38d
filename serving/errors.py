"""Errors that carry the HTTP status they answer with.

Validation code raises them where the problem is found, with a message meant for the client;
the app turns every one into ``{"error": message}`` with its status, as the Open Inference
Protocol asks.
"""

from __future__ import annotations

__all__ = [
    "BadRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ServingError",
    "TimeoutExceededError",
    "UnavailableError",
]


class ServingError(Exception):
    """A request that cannot be served; ``status`` is the HTTP status of the answer."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequestError(ServingError):
    """The request is malformed or does not fit the model (400)."""

    status = 400


class NotFoundError(ServingError):
    """No such model, version or resource (404)."""

    status = 404


class PayloadTooLargeError(ServingError):
    """The request body is over the server's limit (413)."""

    status = 413


class UnavailableError(ServingError):
    """The model cannot take requests now: starting or shutting down (503)."""

    status = 503


class TimeoutExceededError(ServingError):
    """The request did not finish within the server's per-request timeout (504)."""

    status = 504
