"""The inference server: Open Inference Protocol v2 (KServe v2) REST over a model repository.

``create_app(repository, settings)`` gives a FastAPI app with the protocol's health, metadata
and inference endpoints, text generation (``generate``, and ``generate_stream`` with
server-sent events, named after Triton's generate extension), the exports' OpenQASM programs,
Prometheus ``/metrics`` and OpenAPI docs at ``/docs``; Triton's model-configuration and
statistics extensions (``.../config``, ``.../stats``); and an OpenAI-compatible API under
``/v1`` (``serving.openai``). Inference goes through a
per-model-version Batcher (onnxruntime off the event loop, concurrent requests merged),
generation through a per-model-version GenerationScheduler (a token for every active request
per round, decoded as one batch), whichever API asked (``GenerationService``).
Every error answers ``{"error": "<message>"}`` (OpenAI's error object under ``/v1``); one that
happens after a stream has started is its last event, ``event: error``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, Request
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
    describe_validation_error,
    error_body,
)
from serving.generation import (
    GenerationJob,
    GenerationPlan,
    GenerationResult,
    GenerationService,
    TokenEvent,
    plan_generation,
)
from serving.metrics import CONTENT_TYPE_LATEST, Metrics, ModelStats
from serving.middleware import (
    CLIENT_GONE,
    BodyLimitMiddleware,
    ErrorMiddleware,
    MetricsMiddleware,
)
from serving.openai import ChatCompletionRequest, CompletionRequest, add_openai_routes
from serving.protocol import (
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    InferenceRequest,
    InferenceResponse,
    ModelConfig,
    ModelMetadata,
    ModelReady,
    QasmResponse,
    RepositoryModel,
    ServerLive,
    ServerMetadata,
    ServerReady,
    TritonGenerateRequest,
    TritonGenerateResponse,
    attach_binary_data,
    config_tensor,
    encode_response,
    parse_generate_request,
    wants_binary,
)
from serving.repository import ModelRepository
from serving.scheduler import GenerationScheduler
from serving.schema import body_docs, with_schemas
from serving.streaming import SSE_HEADERS, sse, unless_disconnected
from serving.webpage import add_web_page

if TYPE_CHECKING:
    from serving.model import ServedModel

__all__ = ["SERVER_NAME", "Settings", "create_app"]

log = logging.getLogger(__name__)

SERVER_NAME = "qwthn-serve"
# qwthn_qasm: GET .../qasm; generate: POST .../generate and .../generate_stream;
# model_repository: POST /v2/repository/index (Triton's, the index only: no load or unload);
# binary_tensor_data: tensors as raw bytes after the JSON, in requests and answers (Triton's);
# model_configuration: GET .../config; statistics: GET .../stats and /v2/models/stats (Triton's)
EXTENSIONS = [
    "qwthn_qasm",
    "generate",
    "model_repository",
    "binary_tensor_data",
    "model_configuration",
    "statistics",
]
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
T = TypeVar("T")
# Up to these sizes an inference request is parsed, and its answer encoded, on the event loop:
# each takes well under a millisecond there (measured: 25 µs for a 16-token request, 23 µs for
# its 1,280 logits).
_INLINE_BYTES = 64 * 2**10
_BINARY_HEADER = "Inference-Header-Content-Length"  # the binary tensor data extension
_INLINE_ELEMENTS = 32 * 2**10


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


async def _events(
    job: GenerationJob,
    answer: Callable[[GenerationResult], GenerateResponse],
    done: Callable[[bool], None],
) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed generation: its tokens, ``answer`` of its result,
    ``[DONE]``; or an error event. Starlette cancels this when the client disconnects, and
    ``finally`` then stops the generation; ``done(ok)`` counts how it ended."""
    ok = False
    try:
        while isinstance(event := await job.next_event(), TokenEvent):
            yield sse(asdict(event))
        yield sse(answer(event).model_dump_json())
        yield sse("[DONE]")
        ok = True
    except ServingError as e:
        yield sse({"error": e.message}, event="error")
    finally:
        job.cancel()
        done(ok)


async def _triton_events(
    job: GenerationJob,
    answer: Callable[[str], TritonGenerateResponse],
    prefix: str,
    done: Callable[[bool], None],
) -> AsyncIterator[bytes]:
    """Triton's generate_stream for its body: an event per new piece of text (the first
    starting with ``prefix``, the prompt unless excluded), the last one when the generation
    ends (its text may be empty); an error event instead when it fails. No ``[DONE]``: Triton
    sends none."""
    ok = False
    sent = ""
    try:
        while isinstance(event := await job.next_event(), TokenEvent):
            if event.text:
                sent += event.text
                yield sse(answer(prefix + event.text).model_dump())
                prefix = ""
        rest = event.text[len(sent) :] if event.text.startswith(sent) else ""
        yield sse(answer(prefix + rest).model_dump())
        ok = True
    except ServingError as e:
        yield sse({"error": e.message}, event="error")
    finally:
        job.cancel()
        done(ok)


async def _result_of(
    request: Request, job: GenerationJob, stats: ModelStats, done: Callable[[bool], None]
) -> GenerationResult | None:
    """The job's result, or None when the client disconnected first (the job is cancelled
    either way once this returns); ``done(ok)`` counts the outcome."""
    ok = False
    try:
        result = await unless_disconnected(request, job.result())
        ok = result is not None
        return result
    finally:
        job.cancel()
        done(ok)


def _json(answer: Callable[[], BaseModel], stats: ModelStats) -> Response:
    """The JSON answer ``answer()`` gives, its encoding timed as the request's compute_output."""
    start = time.monotonic()
    content = answer().model_dump_json()
    stats.phase("compute_output", time.monotonic() - start)
    return Response(content, media_type="application/json")


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
                observe=generation_metrics[(model.name, model.version)].decoded,
            ).step,
            max_active=settings.max_concurrent_generations,
            in_flight=generation_metrics[(model.name, model.version)].in_flight,
        )
        for model in repository
    }
    workers: list[Batcher | GenerationScheduler] = [*batchers.values(), *schedulers.values()]
    generations = GenerationService(
        schedulers,
        generation_metrics,
        max_tokens=settings.max_tokens,
        timeout_s=settings.timeout_s,
    )

    def load_tokenizers() -> None:
        for model in repository:
            if model.generation_problem is None:
                model.load_tokenizer()

    def stop_all() -> None:
        for worker in workers:
            worker.stop()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(load_tokenizers)
        # What is loaded now (modules, models, their metadata) lives as long as the server;
        # frozen, the collector no longer walks it. Without the training stack that is ~70k
        # objects for the demo and ~145k for SmolLM2 with 60 adapters, a 16 / 40 ms full
        # collection (it was ~270k and 120 ms with torch and transformers imported): still a
        # pause every request in flight would wait for, so the freeze stays.
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
    app.openapi = with_schemas(  # type: ignore[method-assign]
        app,
        InferenceRequest,
        GenerateRequest,
        TritonGenerateRequest,
        CompletionRequest,
        ChatCompletionRequest,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ErrorMiddleware)
    # Outermost: sees every status. app.router.routes is the list the routes below join.
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.router.routes)

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        body = error_body(request.url.path, exc.status, exc.message, exc.param, exc.code)
        return JSONResponse(body, exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = {
            404: f"no such endpoint: {request.method} {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        body = error_body(request.url.path, exc.status_code, message)
        return JSONResponse(body, exc.status_code, headers=exc.headers)

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

    # Model configuration and statistics (Triton's extensions "model_configuration" and
    # "statistics"). /v2/models/stats comes before /v2/models/{model_name}, which would match it.

    @app.get("/v2/models/stats", tags=["metadata"])
    async def all_stats() -> dict[str, Any]:
        """Every model version's statistics (Triton's statistics extension), by name then
        version."""
        return _stats_of(sorted(repository, key=lambda m: (m.name, m.version)))

    def _stats_of(models: list[ServedModel]) -> dict[str, Any]:
        return {"model_stats": [metrics.stats(m.name, str(m.version)).json() for m in models]}

    def model_config(name: str, version: str | None) -> ModelConfig:
        from serving.model import PLATFORM  # onnxruntime's import: not before a model is loaded

        model, batcher = batcher_of(name, version)
        # Triton's max_batch_size > 0 says dim 0 of every tensor is the batch, left out of dims.
        batched = batcher.merging
        optional = set(model.optional_inputs)
        return ModelConfig(
            name=model.name,
            platform=PLATFORM,
            backend="onnxruntime",
            version_policy={"all": {}},  # every version of the repository is served
            max_batch_size=settings.max_batch_size if batched else 0,
            input=[
                config_tensor(s.name, s.datatype, s.shape, batched, s.name in optional)
                for s in model.inputs.values()
            ],
            output=[
                config_tensor(s.name, s.datatype, s.shape, batched) for s in model.outputs.values()
            ],
            dynamic_batching=(
                {"max_queue_delay_microseconds": round(settings.max_queue_delay_ms * 1000)}
                if batched
                else None
            ),
            instance_group=[{"name": model.name, "kind": "KIND_CPU", "count": 1}],
            default_model_filename=model.session.path.name,
            parameters={
                "generation": {"string_value": str(model.generation_problem is None).lower()},
                "kernels": {"string_value": str(model.session.kernels).lower()},
            },
        )

    config_docs: dict[str, Any] = {"tags": ["metadata"], "responses": _ERRORS}

    @app.get(_MODEL + "/config", **config_docs)
    async def model_default_config(model_name: str) -> ModelConfig:
        """The default version's configuration as Triton's model-configuration extension
        gives it (the JSON form of a ``config.pbtxt``): tensors with Triton's data types and
        dims (-1: variable; the batch dimension left out when ``max_batch_size`` > 0)."""
        return model_config(model_name, None)

    @app.get(_VERSION + "/config", **config_docs)
    async def model_version_config(model_name: str, model_version: str) -> ModelConfig:
        return model_config(model_name, model_version)

    @app.get(_MODEL + "/stats", **config_docs)
    async def model_stats(model_name: str) -> dict[str, Any]:
        """The statistics of every version of the model (Triton's statistics extension):
        requests by outcome, time in each phase, inferences and onnxruntime runs."""
        versions = repository.versions(model_name)
        return _stats_of([repository.get(model_name, str(v)) for v in versions])

    @app.get(_VERSION + "/stats", **config_docs)
    async def model_version_stats(model_name: str, model_version: str) -> dict[str, Any]:
        return _stats_of([repository.get(model_name, model_version)])

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
        received = time.monotonic()
        model, batcher = batcher_of(name, version)
        stats = metrics.stats(model.name, str(model.version))
        rows = 0  # inferences made, for the statistics
        ok = False

        async def run() -> tuple[bytes, int | None]:
            nonlocal rows
            # The body is parsed here, not as a FastAPI body parameter: any content type is
            # taken (curl -d sends form encoding), and binary tensor data may follow the JSON.
            # Small bodies and answers are handled on the event loop (tens of microseconds,
            # less than a hop to a thread and back); large ones in a thread, so that megabytes
            # of JSON do not stall other requests.
            start = time.monotonic()
            parsed, feed, outputs = await _on_loop_if_small(parse, len(body), _INLINE_BYTES)
            stats.phase("compute_input", time.monotonic() - start)
            result = await batcher.submit(feed, outputs)
            rows = next(iter(feed.values())).shape[0]
            typed = {n: (model.outputs[n].datatype, result[n]) for n in outputs}
            request_id = parsed.id if parsed.id is not None else uuid.uuid4().hex
            binary = [n for n in outputs if wants_binary(parsed, n)]
            encode = partial(
                encode_response, model.name, str(model.version), request_id, typed, binary
            )
            size = sum(a.size for n, (_, a) in typed.items() if n not in binary)
            start = time.monotonic()
            encoded = await _on_loop_if_small(encode, size, _INLINE_ELEMENTS)
            stats.phase("compute_output", time.monotonic() - start)
            return encoded

        def parse() -> tuple[InferenceRequest, dict[str, Any], list[str]]:
            try:
                parsed = InferenceRequest.model_validate_json(body[:json_length])
            except ValidationError as e:
                raise BadRequestError(describe_validation_error(e, "inference request")[0]) from e
            attach_binary_data(parsed, body[json_length:])
            return parsed, model.prepare(parsed.inputs), model.select_outputs(parsed.outputs)

        try:
            body = await request.body()
            json_length = _json_length(request, len(body))
            content, header_length = await asyncio.wait_for(run(), settings.timeout_s)
            ok = True
        except asyncio.TimeoutError as e:
            raise TimeoutExceededError(
                f"{model.label}: inference did not finish within {settings.timeout_s:g} s "
                f"(--timeout-s)"
            ) from e
        finally:
            stats.request(ok, time.monotonic() - received, rows)
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content,
            media_type="application/octet-stream",
            headers={_BINARY_HEADER: str(header_length)},
        )

    infer_docs = body_docs(InferenceRequest, {200: {"model": InferenceResponse}, **_ERRORS})

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
        generations.check(model)
        stats = generations.stats(model)
        body = await request.body()

        def parse(body: bytes) -> tuple[GenerateRequest | TritonGenerateRequest, GenerationPlan]:
            parsed = parse_generate_request(body)
            return parsed, plan_generation(model, parsed, settings.max_tokens)

        def done(ok: bool) -> None:
            stats.request(ok, time.monotonic() - received)

        try:
            # Off the event loop: the tokenizer may take a while over a long prompt.
            parsed, plan = await asyncio.to_thread(parse, body)
            stats.phase("compute_input", time.monotonic() - received)
            (job,) = generations.start(model, [plan], stream=stream, received=received)
        except ServingError:
            done(False)
            raise
        version_name = str(model.version)

        if isinstance(parsed, TritonGenerateRequest):
            prefix = "" if parsed.sampling.exclude_input_in_output else parsed.text_input

            def triton_answer(text: str) -> TritonGenerateResponse:
                return TritonGenerateResponse(
                    model_name=model.name, model_version=version_name, text_output=text
                )

            if stream:
                return StreamingResponse(
                    _triton_events(job, triton_answer, prefix, done),
                    media_type="text/event-stream",
                    headers=SSE_HEADERS,
                )
            result = await _result_of(request, job, stats, done)
            if result is None:
                return JSONResponse({"error": "the client disconnected"}, CLIENT_GONE)
            return _json(lambda: triton_answer(prefix + result.text), stats)

        request_id = parsed.id if parsed.id is not None else uuid.uuid4().hex

        def answer(result: GenerationResult) -> GenerateResponse:
            return GenerateResponse(
                model_name=model.name,
                model_version=version_name,
                id=request_id,
                completion_tokens=len(result.token_ids),
                **asdict(result),
            )

        if stream:
            return StreamingResponse(
                _events(job, answer, done), media_type="text/event-stream", headers=SSE_HEADERS
            )
        result = await _result_of(request, job, stats, done)
        if result is None:
            return JSONResponse({"error": "the client disconnected"}, CLIENT_GONE)
        return _json(lambda: answer(result), stats)

    generate_bodies = (GenerateRequest, TritonGenerateRequest)
    generate_docs = body_docs(
        generate_bodies,
        {200: {"model": GenerateResponse | TritonGenerateResponse}, **_ERRORS},
    )
    stream_docs = body_docs(
        generate_bodies,
        {
            200: {
                "description": "Server-sent events: one per token, then the result, then [DONE] "
                "(Triton's body: one per piece of text, no [DONE])",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_ERRORS,
        },
    )

    @app.post(_MODEL + "/generate", tags=["generation"], **generate_docs)
    async def model_default_generate(model_name: str, request: Request) -> Response:
        """Generate text from ``prompt`` with the default version (Triton's generate extension
        endpoint; the body is ``GenerateRequest``). Greedy unless ``do_sample``; the text ends at
        the model's eos token, a ``stop`` string (cut off), ``max_new_tokens`` or the context.

        Triton's own body, ``{"text_input", "parameters": {"max_tokens", "temperature", ...}}``
        (``TritonGenerateRequest``: temperature 0 is greedy, 1 by default), is answered in
        Triton's shape, ``{"model_name", "model_version", "text_output"}``; ``text_output``
        starts with the prompt unless ``exclude_input_in_output``, as Triton's vLLM backend
        answers."""
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
        that disconnects stops its generation.

        For Triton's body, ``data: {"model_name", "model_version", "text_output"}`` per new
        piece of text (the first starting with the prompt unless ``exclude_input_in_output``),
        the last one when the generation ends; no ``[DONE]``."""
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

    add_openai_routes(app, repository, generations)
    add_web_page(app)
    return app
