"""The server's web page at ``/``: pick a model version, stream a generation, read its circuits.

A person who starts ``qwthn-serve`` and opens its address in a browser gets something to try
without writing a client. The page is plain HTML, CSS and JavaScript under ``static/`` (no
build step, nothing fetched from elsewhere: servers often run without internet access) and
uses only the public HTTP API, as any client would: the repository index, model metadata,
``/qasm`` and ``generate_stream``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "add_web_page"]

STATIC_DIR = Path(__file__).parent / "static"


def add_web_page(app: FastAPI) -> None:
    """Serve the page at ``GET /`` and its files under ``/static/``, outside the OpenAPI
    schema: they are not part of the API."""
    index = STATIC_DIR / "index.html"

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def web_page() -> FileResponse:
        # no-cache: a browser asks again each time, so an upgraded server's page is seen at once.
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", _Revalidated(directory=STATIC_DIR), name="static")


class _Revalidated(StaticFiles):
    """Static files that a browser revalidates before use (they carry an ETag): the page names
    them without a version, so a heuristically cached old ``app.js`` would outlive an upgrade."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response
