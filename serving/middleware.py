"""ASGI middleware around every route: metrics, a last-resort 500, and the body size limit.
Their errors take the shape of the path's API (``serving.errors.error_body``).

They are plain ASGI (not Starlette's BaseHTTPMiddleware) so that they neither buffer responses
nor run the app in another task, which later streaming responses (SSE) need.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from starlette.routing import BaseRoute, Match

from serving.errors import error_body
from serving.metrics import Metrics

__all__ = [
    "CLIENT_GONE",
    "BodyLimitMiddleware",
    "ErrorMiddleware",
    "MetricsMiddleware",
    "send_error",
]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLIENT_GONE = 499  # nginx's "client closed request": the status a disconnect is counted under


async def send_error(send: Send, status: int, message: str, path: str = "") -> None:
    """Answer ``message`` with ``status``, in the error shape of ``path`` (``error_body``)."""
    body = json.dumps(error_body(path, status, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Counts requests by method, route template and status, and times them.

    The route template (``/v2/models/{model_name}/infer``) keeps the label set bounded; requests
    that match no route count as ``<unmatched>``. ``routes`` (the app's) name the template of a
    request refused before routing, such as a 413.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _endpoint(self, scope: Scope) -> str:
        route = scope.get("route")  # set by the router on this same scope
        if route is None:
            route = next((r for r in self.routes if r.matches(scope)[0] is Match.FULL), None)
        return getattr(route, "path", "<unmatched>")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        # An app that returns without answering saw the client disconnect (a body cut off,
        # a connection closed mid-request): "client closed request", not a server error.
        status = CLIENT_GONE

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            if status == CLIENT_GONE:
                status = 500
            raise
        finally:
            seconds = time.perf_counter() - start
            self.metrics.observe_request(scope["method"], self._endpoint(scope), status, seconds)


class ErrorMiddleware:
    """Turns any exception that escaped a route into a 500 ``{"error": ...}`` answer and logs
    it; the server goes on serving."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def track(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, track)
        except Exception as e:
            log.exception("%s %s failed", scope["method"], scope["path"])
            if not started:
                message = f"internal server error: {type(e).__name__}: {e}"
                await send_error(send, 500, message, scope["path"])


class BodyLimitMiddleware:
    """Answers 413 to a request body over ``max_bytes``.

    A declared Content-Length over the limit is refused before reading; otherwise (chunked
    uploads) the body is read up to the limit and handed on whole. The server (uvicorn) reads
    and drops the rest of a refused body, so the client gets the 413, not a reset connection.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, f"{int(declared)} bytes", scope["path"])
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(send, f"more than {self.max_bytes} bytes", scope["path"])
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, size: str, path: str) -> None:
        await send_error(
            send,
            413,
            f"request body too large: {size}, the limit is {self.max_bytes} bytes "
            f"({self.max_bytes / 2**20:g} MiB, --max-body-mb)",
            path,
        )
