"""The inference server: Open Inference Protocol v2 (KServe v2) REST over a model repository.

``create_app(repository, settings)`` gives a FastAPI app with the protocol's health, metadata
and inference endpoints, the exports' OpenQASM programs, Prometheus ``/metrics`` and OpenAPI
docs at ``/docs``. Inference goes through a per-model-version Batcher (onnxruntime off the event
loop, concurrent requests merged). Every error answers ``{"error": "<message>"}``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from serving.batching import Batcher
from serving.errors import (
    BadRequestError,
    ServingError,
    TimeoutExceededError,
    UnavailableError,
)
from serving.metrics import CONTENT_TYPE_LATEST, Metrics
from serving.middleware import BodyLimitMiddleware, ErrorMiddleware, MetricsMiddleware
from serving.protocol import (
    ErrorResponse,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    QasmResponse,
    ServerLive,
    ServerMetadata,
    ServerReady,
    encode_response,
)
from serving.repository import ModelRepository

if TYPE_CHECKING:
    from serving.model import ServedModel

__all__ = ["SERVER_NAME", "Settings", "create_app"]

log = logging.getLogger(__name__)

SERVER_NAME = "qwthn-serve"
EXTENSIONS = ["qwthn_qasm"]  # GET /v2/models/{name}[/versions/{v}]/qasm
_MODEL = "/v2/models/{model_name}"
_VERSION = "/v2/models/{model_name}/versions/{model_version}"


def _server_version() -> str:
    try:
        return version("qwthn-onnx")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


@dataclass(frozen=True)
class Settings:
    """Batching and limits of a server (the ``qwthn-serve`` flags)."""

    max_batch_size: int = 8  # rows per merged run; 1: no batching
    max_queue_delay_ms: float = 5.0  # how long a request may wait for others to join it
    max_body_bytes: int = 16 * 2**20
    timeout_s: float = 60.0  # per inference request, queue time included

    def __post_init__(self) -> None:
        checks = {
            "max_batch_size": self.max_batch_size >= 1,
            "max_queue_delay_ms": self.max_queue_delay_ms >= 0,
            "max_body_bytes": self.max_body_bytes >= 1,
            "timeout_s": self.timeout_s > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name} is out of range: {getattr(self, name)!r}")


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Malformed request, or inputs that do not fit the model",
        404: "Unknown model or version",
        413: "Request body over the limit",
        500: "Server error",
        503: "Model not ready (starting or stopping)",
        504: "The request did not finish in time",
    }.items()
}


def _describe(error: ValidationError) -> str:
    """One line for the client from pydantic's errors (the first three), with where they are:
    ``inputs[0].shape: Field required``."""
    errors = error.errors()
    if errors[0]["type"] == "json_invalid":
        return f"request body is not valid JSON: {errors[0]['msg']}"
    parts = []
    for e in errors[:3]:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        parts.append(f"{where or 'request body'}: {e['msg']}")
    more = f"; {len(errors) - 3} more" if len(errors) > 3 else ""
    return "invalid inference request: " + "; ".join(parts) + more


def _with_schemas(app: FastAPI, *models: type[BaseModel]) -> Callable[[], dict[str, Any]]:
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


def create_app(repository: ModelRepository, settings: Settings | None = None) -> FastAPI:
    """The server app for the loaded models of ``repository``.

    The batchers' worker threads start and stop with the app's lifespan (uvicorn runs it);
    the server is ready once they run.
    """
    settings = settings or Settings()
    metrics = Metrics()
    batchers = {
        (model.name, model.version): Batcher(
            model.run,
            name=model.label,
            max_batch_size=settings.max_batch_size,
            max_queue_delay_s=settings.max_queue_delay_ms / 1000,
            mergeable=model.batch_major,
            observe=partial(metrics.observe_batch, model.name, str(model.version)),
        )
        for model in repository
    }

    def stop_all() -> None:
        for batcher in batchers.values():
            batcher.stop()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for batcher in batchers.values():
            batcher.start()
        metrics.models_loaded.set(len(batchers))
        names = ", ".join(f"{m.name}/{m.version}" for m in repository)
        log.info("serving %d model version(s): %s", len(batchers), names)
        try:
            yield
        finally:
            metrics.models_loaded.set(0)
            await asyncio.to_thread(stop_all)  # queued requests finish first

    app = FastAPI(
        title=SERVER_NAME,
        version=_server_version(),
        description="Open Inference Protocol v2 (KServe v2) server for QWTHN exports",
        lifespan=lifespan,
    )
    app.openapi = _with_schemas(app, InferenceRequest)  # type: ignore[method-assign]
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ErrorMiddleware)
    # Outermost: sees every status. app.router.routes is the list the routes below join.
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.router.routes)

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = {
            404: f"no such endpoint: {request.method} {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)

    def batcher_of(name: str, version: str | None) -> tuple[ServedModel, Batcher]:
        model = repository.get(name, version)
        return model, batchers[(model.name, model.version)]

    # Health.

    @app.get("/v2/health/live", tags=["health"])
    async def server_live() -> ServerLive:
        """The server answers requests (Kubernetes livenessProbe)."""
        return ServerLive(live=True)

    @app.get("/v2/health/ready", tags=["health"], responses={503: _ERRORS[503]})
    async def server_ready() -> ServerReady:
        """Every model is loaded and taking requests (Kubernetes readinessProbe)."""
        idle = [b.name for b in batchers.values() if not b.running]
        if idle:
            raise UnavailableError(f"not ready: {', '.join(idle)} not running")
        return ServerReady(ready=True)

    def model_ready(name: str, version: str | None) -> ModelReady:
        model, batcher = batcher_of(name, version)
        if not batcher.running:
            raise UnavailableError(f"{model.label} is not ready")
        return ModelReady(name=model.name, ready=True)

    @app.get(_MODEL + "/ready", tags=["health"], responses=_ERRORS)
    async def model_default_ready(model_name: str) -> ModelReady:
        """The model's default (highest) version is ready."""
        return model_ready(model_name, None)

    @app.get(_VERSION + "/ready", tags=["health"], responses=_ERRORS)
    async def model_version_ready(model_name: str, model_version: str) -> ModelReady:
        return model_ready(model_name, model_version)

    # Metadata.

    @app.get("/v2", tags=["metadata"])
    async def server_metadata() -> ServerMetadata:
        return ServerMetadata(name=SERVER_NAME, version=app.version, extensions=EXTENSIONS)

    def model_metadata(name: str, version: str | None) -> ModelMetadata:
        model, batcher = batcher_of(name, version)
        batching = {"max_batch_size": settings.max_batch_size, "dynamic_batching": batcher.merging}
        return ModelMetadata(**model.metadata(repository.versions(name), batching))

    @app.get(_MODEL, tags=["metadata"], responses=_ERRORS)
    async def model_default_metadata(model_name: str) -> ModelMetadata:
        """Inputs and outputs (-1: variable dimension) of the default version, every version,
        and the adapters: configuration, adapted layers and their circuits, kernels on or off."""
        return model_metadata(model_name, None)

    @app.get(_VERSION, tags=["metadata"], responses=_ERRORS)
    async def model_version_metadata(model_name: str, model_version: str) -> ModelMetadata:
        return model_metadata(model_name, model_version)

    # Inference.

    async def infer(name: str, version: str | None, request: Request) -> Response:
        model, batcher = batcher_of(name, version)
        body = await request.body()

        async def run() -> bytes:
            # The body is parsed here, not as a FastAPI body parameter: any content type is
            # taken (curl -d sends form encoding), and parsing and encoding megabytes of JSON
            # run off the event loop, as onnxruntime does.
            parsed, feed, outputs = await asyncio.to_thread(parse, body)
            result = await batcher.submit(feed, outputs)
            typed = {n: (model.outputs[n].datatype, result[n]) for n in outputs}
            request_id = parsed.id if parsed.id is not None else uuid.uuid4().hex
            return await asyncio.to_thread(
                encode_response, model.name, str(model.version), request_id, typed
            )

        def parse(body: bytes) -> tuple[InferenceRequest, dict[str, Any], list[str]]:
            try:
                parsed = InferenceRequest.model_validate_json(body)
            except ValidationError as e:
                raise BadRequestError(_describe(e)) from e
            return parsed, model.prepare(parsed.inputs), model.select_outputs(parsed.outputs)

        try:
            content = await asyncio.wait_for(run(), settings.timeout_s)
        except asyncio.TimeoutError as e:
            raise TimeoutExceededError(
                f"{model.label}: inference did not finish within {settings.timeout_s:g} s "
                f"(--timeout-s)"
            ) from e
        return Response(content, media_type="application/json")

    infer_docs: dict[str, Any] = {
        "tags": ["inference"],
        "responses": {200: {"model": InferenceResponse}, **_ERRORS},
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/InferenceRequest"}
                    }
                },
            }
        },
    }

    @app.post(_MODEL + "/infer", **infer_docs)
    async def model_default_infer(model_name: str, request: Request) -> Response:
        """Run the default version. A causal LM needs only ``input_ids``: the server fills an
        empty KV cache, an all-ones ``attention_mask`` and ``position_ids``."""
        return await infer(model_name, None, request)

    @app.post(_VERSION + "/infer", **infer_docs)
    async def model_version_infer(
        model_name: str, model_version: str, request: Request
    ) -> Response:
        return await infer(model_name, model_version, request)

    # OpenQASM 3 (extension "qwthn_qasm").

    @app.get(_MODEL + "/qasm", tags=["qasm"], responses=_ERRORS)
    def model_default_qasm(model_name: str) -> QasmResponse:
        """The adapted layers' OpenQASM 3 programs (``qasm/`` of the export), by layer."""
        return QasmResponse(**repository.get(model_name).qasm())

    @app.get(_VERSION + "/qasm", tags=["qasm"], responses=_ERRORS)
    def model_version_qasm(model_name: str, model_version: str) -> QasmResponse:
        return QasmResponse(**repository.get(model_name, model_version).qasm())

    # Prometheus.

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
