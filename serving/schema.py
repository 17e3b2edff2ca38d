"""OpenAPI documentation of the routes that parse their own request bodies.

Routes read their bodies themselves (any content type is taken, binary data may follow the
JSON, parsing may run off the event loop), so FastAPI cannot see the body models: the app's
schema lists them (``with_schemas``) and each route points at its own (``body_docs``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

__all__ = ["body_docs", "with_schemas"]


def with_schemas(app: FastAPI, *models: type[BaseModel]) -> Callable[[], dict[str, Any]]:
    """An ``app.openapi`` that also lists ``models``: the request bodies that routes parse
    themselves, which FastAPI cannot see."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                defs = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(defs.pop("$defs", {}))
                components[model.__name__] = defs
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def body_docs(
    models: type[BaseModel] | tuple[type[BaseModel], ...], responses: dict[int | str, Any]
) -> dict[str, Any]:
    """Route documentation for a body the route parses itself: one of ``models`` (listed by
    ``with_schemas``), and the route's ``responses``."""
    refs = [
        {"$ref": f"#/components/schemas/{m.__name__}"}
        for m in (models if isinstance(models, tuple) else (models,))
    ]
    return {
        "responses": responses,
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": refs[0] if len(refs) == 1 else {"oneOf": refs}}
                },
            }
        },
    }
