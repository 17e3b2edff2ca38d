"""The inference server: Open Inference Protocol v2 (KServe v2) REST over a model repository.

``create_app(repository, settings)`` gives a FastAPI app with the protocol's health, metadata
and inference endpoints, text generation (``generate``, and ``generate_stream`` with
server-sent events, named after Triton's generate extension), the exports' OpenQASM programs,
Prometheus ``/metrics`` and OpenAPI docs at ``/docs``. Inference goes through a
per-model-version Batcher (onnxruntime off the event loop, concurrent requests merged),
generation through a per-model-version GenerationScheduler (a token for every active request
per round, decoded as one batch).
Every error answers ``{"error": "<message>"}``; one that happens after a stream has started
is its last event, ``event: error``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from qwthn_onnx.runtime.decoding import BatchDecoder
from serving.batching import Batcher
from serving.errors import (
    BadRequestError,
    ServingError,
    TimeoutExceededError,
    UnavailableError,
)
from serving.generation import (
    GenerationJob,
    GenerationPlan,
    GenerationResult,
    TokenEvent,
    plan_generation,
)
from serving.metrics import CONTENT_TYPE_LATEST, Metrics
from serving.middleware import (
    CLIENT_GONE,
    BodyLimitMiddleware,
    ErrorMiddleware,
    MetricsMiddleware,
)
from serving.protocol import (
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    QasmResponse,
    RepositoryModel,
    ServerLive,
    ServerMetadata,
    ServerReady,
    attach_binary_data,
    encode_response,
    wants_binary,
)
from serving.repository import ModelRepository
from serving.scheduler import GenerationScheduler
from serving.webpage import add_web_page

if TYPE_CHECKING:
    from serving.model import ServedModel

__all__ = ["SERVER_NAME", "Settings", "create_app"]

log = logging.getLogger(__name__)

SERVER_NAME = "qwthn-serve"
# qwthn_qasm: GET .../qasm; generate: POST .../generate and .../generate_stream;
# model_repository: POST /v2/repository/index (Triton's, the index only: no load or unload);
# binary_tensor_data: tensors as raw bytes after the JSON, in requests and answers (Triton's)
EXTENSIONS = ["qwthn_qasm", "generate", "model_repository", "binary_tensor_data"]
_MODEL = "/v2/models/{model_name}"
_VERSION = "/v2/models/{model_name}/versions/{model_version}"


def _server_version() -> str:
    try:
        return version("qwthn-onnx")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


@dataclass(frozen=True)
class Settings:
    """Batching, scheduling and limits of a server (the ``qwthn-serve`` flags)."""

    max_batch_size: int = 8  # rows per merged run; 1: no batching
    # How long a request may wait for others to join it. 0 (as Triton's default) still merges
    # what queues up while the model runs, and a lone request never waits.
    max_queue_delay_ms: float = 0.0
    max_body_bytes: int = 16 * 2**20
    timeout_s: float = 60.0  # per request (inference or generation), queue time included
    max_tokens: int = 512  # the largest max_new_tokens a generation request may ask for
    max_concurrent_generations: int = 8  # per model version; more wait in arrival order

    def __post_init__(self) -> None:
        checks = {
            "max_batch_size": self.max_batch_size >= 1,
            "max_queue_delay_ms": self.max_queue_delay_ms >= 0,
            "max_body_bytes": self.max_body_bytes >= 1,
            "timeout_s": self.timeout_s > 0,
            "max_tokens": self.max_tokens >= 1,
            "max_concurrent_generations": self.max_concurrent_generations >= 1,
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
# No caching, no proxy buffering, and no keep-alive: a browser that aborts a stream would
# otherwise read it to its end to reuse the connection, and the generation would go on for it.
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "close"}
T = TypeVar("T")
# Up to these sizes an inference request is parsed, and its answer encoded, on the event loop:
# each takes well under a millisecond there (measured: 25 µs for a 16-token request, 23 µs for
# its 1,280 logits).
_INLINE_BYTES = 64 * 2**10
_BINARY_HEADER = "Inference-Header-Content-Length"  # the binary tensor data extension
_INLINE_ELEMENTS = 32 * 2**10


def _describe(error: ValidationError, what: str) -> str:
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
    return f"invalid {what}: " + "; ".join(parts) + more


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


def _body_docs(model: type[BaseModel], responses: dict[int | str, Any]) -> dict[str, Any]:
    """Route documentation for a body the route parses itself (listed by ``_with_schemas``)."""
    return {
        "responses": {**responses, **_ERRORS},
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                    }
                },
            }
        },
    }


def _json_length(request: Request, size: int) -> int:
    """How many bytes of a ``size``-byte body are JSON: all, unless binary tensor data follows
    (the Inference-Header-Content-Length header says where)."""
    declared = request.headers.get(_BINARY_HEADER)
    if declared is None:
        return size
    if not declared.isdigit() or int(declared) > size:
        raise BadRequestError(
            f"{_BINARY_HEADER} must be the byte length of the JSON part of the body (0..{size}),"
            f" got {declared!r}"
        )
    return int(declared)


async def _on_loop_if_small(work: Callable[[], T], size: int, limit: int) -> T:
    """``work()`` on the event loop when ``size`` is within ``limit``, else in a thread."""
    return work() if size <= limit else await asyncio.to_thread(work)


def _sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    """One server-sent event; JSON escapes newlines, so ``data`` is one line."""
    line = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "").encode() + f"data: {line}\n\n".encode()


async def _until_disconnected(request: Request) -> None:
    """Return when the client disconnects (the request body must have been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, awaitable: Awaitable[T]) -> T | None:
    """What ``awaitable`` gives, or None when the client disconnects first (``awaitable`` is
    then cancelled): an answer nobody will read is not worth computing."""
    work = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        work.cancel()
        gone.cancel()
    return work.result() if work.done() else None


async def _events(
    job: GenerationJob, answer: Callable[[GenerationResult], GenerateResponse]
) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed generation: its tokens, ``answer`` of its result,
    ``[DONE]``; or an error event. Starlette cancels this when the client disconnects, and
    ``finally`` then stops the generation."""
    try:
        while isinstance(event := await job.next_event(), TokenEvent):
            yield _sse(asdict(event))
        yield _sse(answer(event).model_dump_json())
        yield _sse("[DONE]")
    except ServingError as e:
        yield _sse({"error": e.message}, event="error")
    finally:
        job.cancel()


def create_app(repository: ModelRepository, settings: Settings | None = None) -> FastAPI:
    """The server app for the loaded models of ``repository``.

    The batchers' and schedulers' worker threads start and stop with the app's lifespan
    (uvicorn runs it), after the tokenizers are loaded; the server is ready once they run.
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
    generation_metrics = {
        (model.name, model.version): metrics.generation(model.name, str(model.version))
        for model in repository
    }
    schedulers = {
        (model.name, model.version): GenerationScheduler(
            name=model.label,
            decode=BatchDecoder(
                model.session.run,
                model.session.metadata.cache,
                model.session.cache_dtype,
                max_batch=settings.max_batch_size,
                observe=generation_metrics[(model.name, model.version)].decode_batch.observe,
            ).step,
            max_active=settings.max_concurrent_generations,
            in_flight=generation_metrics[(model.name, model.version)].in_flight,
        )
        for model in repository
    }
    workers: list[Batcher | GenerationScheduler] = [*batchers.values(), *schedulers.values()]

    def load_tokenizers() -> None:
        for model in repository:
            if model.generation_problem is None:
                model.load_tokenizers()

    def stop_all() -> None:
        for worker in workers:
            worker.stop()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(load_tokenizers)
        # What is loaded now (models, tokenizers, torch and transformers modules: ~270k
        # objects) lives as long as the server; frozen, the collector no longer walks it. A
        # full collection of it took 120 ms, every request then in flight waited, and p99
        # latency under load was that pause.
        gc.collect()
        gc.freeze()
        for worker in workers:
            worker.start()
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
    app.openapi = _with_schemas(app, InferenceRequest, GenerateRequest)  # type: ignore[method-assign]
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
        idle = list(dict.fromkeys(w.name for w in workers if not w.running))
        if idle:
            raise UnavailableError(f"not ready: {', '.join(idle)} not running")
        return ServerReady(ready=True)

    def model_is_ready(model: ServedModel) -> bool:
        key = (model.name, model.version)
        return batchers[key].running and schedulers[key].running

    def model_ready(name: str, version: str | None) -> ModelReady:
        model = repository.get(name, version)
        if not model_is_ready(model):
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

    @app.post("/v2/repository/index", tags=["metadata"])
    async def repository_index() -> list[RepositoryModel]:
        """Every model version served, by name then version (Triton's repository index)."""
        return [
            RepositoryModel(
                name=model.name,
                version=str(model.version),
                state="READY" if model_is_ready(model) else "UNAVAILABLE",
                generation=model.generation_problem is None,
            )
            for model in sorted(repository, key=lambda m: (m.name, m.version))
        ]

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
        json_length = _json_length(request, len(body))

        async def run() -> tuple[bytes, int | None]:
            # The body is parsed here, not as a FastAPI body parameter: any content type is
            # taken (curl -d sends form encoding), and binary tensor data may follow the JSON.
            # Small bodies and answers are handled on the event loop (tens of microseconds,
            # less than a hop to a thread and back); large ones in a thread, so that megabytes
            # of JSON do not stall other requests.
            parsed, feed, outputs = await _on_loop_if_small(parse, len(body), _INLINE_BYTES)
            result = await batcher.submit(feed, outputs)
            typed = {n: (model.outputs[n].datatype, result[n]) for n in outputs}
            request_id = parsed.id if parsed.id is not None else uuid.uuid4().hex
            binary = [n for n in outputs if wants_binary(parsed, n)]
            encode = partial(
                encode_response, model.name, str(model.version), request_id, typed, binary
            )
            size = sum(a.size for n, (_, a) in typed.items() if n not in binary)
            return await _on_loop_if_small(encode, size, _INLINE_ELEMENTS)

        def parse() -> tuple[InferenceRequest, dict[str, Any], list[str]]:
            try:
                parsed = InferenceRequest.model_validate_json(body[:json_length])
            except ValidationError as e:
                raise BadRequestError(_describe(e, "inference request")) from e
            attach_binary_data(parsed, body[json_length:])
            return parsed, model.prepare(parsed.inputs), model.select_outputs(parsed.outputs)

        try:
            content, header_length = await asyncio.wait_for(run(), settings.timeout_s)
        except asyncio.TimeoutError as e:
            raise TimeoutExceededError(
                f"{model.label}: inference did not finish within {settings.timeout_s:g} s "
                f"(--timeout-s)"
            ) from e
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content,
            media_type="application/octet-stream",
            headers={_BINARY_HEADER: str(header_length)},
        )

    infer_docs = _body_docs(InferenceRequest, {200: {"model": InferenceResponse}})

    @app.post(_MODEL + "/infer", tags=["inference"], **infer_docs)
    async def model_default_infer(model_name: str, request: Request) -> Response:
        """Run the default version. A causal LM needs only ``input_ids``: the server fills an
        empty KV cache, an all-ones ``attention_mask`` and ``position_ids``."""
        return await infer(model_name, None, request)

    @app.post(_VERSION + "/infer", tags=["inference"], **infer_docs)
    async def model_version_infer(
        model_name: str, model_version: str, request: Request
    ) -> Response:
        return await infer(model_name, model_version, request)

    # Text generation (extension "generate").

    async def generate(name: str, version: str | None, request: Request, stream: bool) -> Response:
        received = time.monotonic()
        model = repository.get(name, version)
        key = (model.name, model.version)
        problem = model.generation_problem
        if problem is not None:
            raise BadRequestError(problem)
        body = await request.body()

        def parse(body: bytes) -> tuple[GenerateRequest, GenerationPlan]:
            try:
                parsed = GenerateRequest.model_validate_json(body)
            except ValidationError as e:
                raise BadRequestError(_describe(e, "generate request")) from e
            return parsed, plan_generation(model, parsed, settings.max_tokens)

        # Off the event loop: the tokenizer may take a while over a long prompt.
        parsed, plan = await asyncio.to_thread(parse, body)
        job = GenerationJob(
            model,
            plan,
            generation_metrics[key],
            stream=stream,
            received=received,
            timeout_s=settings.timeout_s,
        )
        if not job.finished:
            schedulers[key].submit(job)
        request_id = parsed.id if parsed.id is not None else uuid.uuid4().hex

        def answer(result: GenerationResult) -> GenerateResponse:
            return GenerateResponse(
                model_name=model.name,
                model_version=str(model.version),
                id=request_id,
                completion_tokens=len(result.token_ids),
                **asdict(result),
            )

        if not stream:
            try:
                result = await _unless_disconnected(request, job.result())
            finally:
                job.cancel()
            if result is None:
                return JSONResponse({"error": "the client disconnected"}, CLIENT_GONE)
            return Response(answer(result).model_dump_json(), media_type="application/json")

        return StreamingResponse(
            _events(job, answer), media_type="text/event-stream", headers=_SSE_HEADERS
        )

    generate_docs = _body_docs(GenerateRequest, {200: {"model": GenerateResponse}})
    stream_docs = _body_docs(
        GenerateRequest,
        {
            200: {
                "description": "Server-sent events: one per token, then the result, then [DONE]",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            }
        },
    )

    @app.post(_MODEL + "/generate", tags=["generation"], **generate_docs)
    async def model_default_generate(model_name: str, request: Request) -> Response:
        """Generate text from ``prompt`` with the default version (Triton's generate extension
        endpoint; the body is ``GenerateRequest``). Greedy unless ``do_sample``; the text ends at
        the model's eos token, a ``stop`` string (cut off), ``max_new_tokens`` or the context."""
        return await generate(model_name, None, request, stream=False)

    @app.post(_VERSION + "/generate", tags=["generation"], **generate_docs)
    async def model_version_generate(
        model_name: str, model_version: str, request: Request
    ) -> Response:
        return await generate(model_name, model_version, request, stream=False)

    @app.post(_MODEL + "/generate_stream", tags=["generation"], **stream_docs)
    async def model_default_generate_stream(model_name: str, request: Request) -> Response:
        """``generate`` as server-sent events (Triton's generate_stream): ``data: {"token_id",
        "text", "index"}`` per token as it is generated (the text pieces add up to the final
        text), then ``data:`` the ``generate`` answer and ``data: [DONE]``. An error after the
        stream began is its last event, ``event: error`` with ``data: {"error": ...}``; a client
        that disconnects stops its generation."""
        return await generate(model_name, None, request, stream=True)

    @app.post(_VERSION + "/generate_stream", tags=["generation"], **stream_docs)
    async def model_version_generate_stream(
        model_name: str, model_version: str, request: Request
    ) -> Response:
        return await generate(model_name, model_version, request, stream=True)

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

    add_web_page(app)
    return app
