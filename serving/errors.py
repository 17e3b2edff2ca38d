"""Errors that carry the HTTP status they answer with, and the error bodies of the two APIs.

Validation code raises them where the problem is found, with a message meant for the client;
the app turns every one into ``{"error": message}`` with its status, as the Open Inference
Protocol asks, except under ``/v1/`` (the OpenAI-compatible API), where the body is OpenAI's
``{"error": {"message", "type", "param", "code"}}``, which the ``openai`` client reads to raise
its ``BadRequestError``, ``NotFoundError``, ... (``error_body`` picks by path).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

__all__ = [
    "OPENAI_PREFIX",
    "BadRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ServingError",
    "TimeoutExceededError",
    "UnavailableError",
    "describe_validation_error",
    "error_body",
    "openai_error",
]

OPENAI_PREFIX = "/v1/"  # paths whose errors take OpenAI's shape


class ServingError(Exception):
    """A request that cannot be served; ``status`` is the HTTP status of the answer.

    ``param`` names the request field at fault, when one is (OpenAI's ``error.param``);
    ``code`` is OpenAI's ``error.code`` (such as ``model_not_found``).
    """

    status = 500

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


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


# OpenAI's error.type by status: the client classes follow the status, the type is for people.
_OPENAI_TYPES = {429: "rate_limit_error", 499: "invalid_request_error"}


def openai_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_body(
    path: str, status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The error body an answer to ``path`` takes: OpenAI's under ``/v1/``, else the Open
    Inference Protocol's ``{"error": message}``."""
    if path.startswith(OPENAI_PREFIX):
        return openai_error(status, message, param, code)
    return {"error": message}


def describe_validation_error(error: ValidationError, what: str) -> tuple[str, str | None]:
    """One line for the client from pydantic's errors (the first three), with where they are
    (``invalid generate request: inputs[0].shape: Field required``), and the top-level field of
    the first one (for OpenAI's ``param``)."""
    errors = error.errors()
    if errors[0]["type"] == "json_invalid":
        return f"request body is not valid JSON: {errors[0]['msg']}", None
    parts = []
    for e in errors[:3]:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        parts.append(f"{where or 'request body'}: {e['msg']}")
    more = f"; {len(errors) - 3} more" if len(errors) > 3 else ""
    loc = errors[0]["loc"]
    param = loc[0] if loc and isinstance(loc[0], str) else None
    return f"invalid {what}: " + "; ".join(parts) + more, param
