"""An OpenAI-compatible API on the same server: ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions``, so that the ``openai`` client (and whatever speaks its protocol)
can use the served models.

Requests go through the same generation path as ``/v2/.../generate`` (``GenerationService``:
the model version's scheduler, its batching and fair rounds, its limits, metrics, timeouts,
disconnects and shutdown); this module only translates. A completion's text is the one
``QWTHNSession.generate`` gives for the same prompt and settings; a chat prompt is laid out
exactly as training laid conversations out (``chat_prompt_ids``: the model's chat template when
its tokenizer has one, else the plain ``Role: content`` layout).

Sampling follows OpenAI: ``temperature`` 1 by default, 0 is greedy. ``n`` choices of one
prompt are separate generations; with a ``seed``, choice ``i`` samples with ``seed + i`` (as
vLLM does), so a seeded request is reproducible. Fields OpenAI defines that this server cannot
honour (``logprobs``, ``echo``, penalties, tools, ...) are refused with a 400 naming them when
set to anything but their default; a field OpenAI does not define is refused too, as OpenAI's
own API does (``user`` and a few other bookkeeping fields are accepted and ignored). Errors
answer OpenAI's ``{"error": {"message", "type", "param", "code"}}``, which the client raises as
``BadRequestError``, ``NotFoundError``, ...
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import (
    BadRequestError,
    NotFoundError,
    ServingError,
    describe_validation_error,
    openai_error,
)
from serving.generation import (
    GenerationJob,
    GenerationPlan,
    GenerationResult,
    GenerationService,
    check_config,
    plan_prompt,
)
from serving.middleware import CLIENT_GONE
from serving.protocol import StopString, StopStrings, sampling_config
from serving.schema import body_docs
from serving.streaming import SSE_HEADERS, merged_events, sse, unless_disconnected

if TYPE_CHECKING:
    from serving.model import ServedModel
    from serving.repository import ModelRepository

__all__ = [
    "MAX_CHOICES",
    "ChatCompletionRequest",
    "CompletionRequest",
    "OpenAIError",
    "add_openai_routes",
]

# Choices of one request (prompts x n): each is a generation of its own, with its own KV cache.
MAX_CHOICES = 16
_OWNER = "qwthn-serve"


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """The body of every error answer under ``/v1``."""

    error: OpenAIErrorDetail


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIError, "description": text}
    for status, text in {
        400: "Malformed request, an unsupported field, or settings the model cannot take",
        404: "Unknown model (code model_not_found)",
        413: "Request body over the limit",
        500: "Server error",
        503: "Model not ready (starting or stopping)",
        504: "The request did not finish in time",
    }.items()
}
_ANSWER = {
    "description": "The completion; with stream: true, server-sent events of chunks, then [DONE]",
    "content": {
        "application/json": {"schema": {"type": "object"}},
        "text/event-stream": {"schema": {"type": "string"}},
    },
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # OpenAI's padding of chunks: none here


class _Request(BaseModel):
    """What completions and chat completions share. Strict like OpenAI: a field it does not
    define, or a string for a number, is a 400."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: str
    temperature: Annotated[float, Field(description="0: greedy; default 1")] | None = None
    top_p: float | None = None
    top_k: Annotated[int, Field(description="vLLM's extension; 0 or -1: off")] | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    seed: int | None = None
    stop: StopString | StopStrings | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    # Accepted and ignored: bookkeeping that does not change the answer.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    # Refused unless left at their default: what this server cannot honour.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    # field -> the values that mean "not asked for"
    inert_values: ClassVar[dict[str, tuple[Any, ...]]] = {
        "presence_penalty": (None, 0, 0.0),
        "frequency_penalty": (None, 0, 0.0),
        "logit_bias": (None, {}),
    }

    def refuse_unsupported(self) -> None:
        """BadRequestError naming the first field set to something this server cannot do."""
        for name, defaults in self.inert_values.items():
            value = getattr(self, name)
            if not any(value == d and type(value) is type(d) for d in defaults):
                raise BadRequestError(
                    f"{name} is not supported by this server (got {value!r}); leave it out",
                    param=name,
                )

    @property
    def choices_per_prompt(self) -> int:
        return self.n or 1

    @property
    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Request):
    """``POST /v1/completions``: ``prompt`` is a string, a list of strings, a list of token ids
    or a list of such lists (each prompt gets ``n`` choices)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    logprobs: int | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None

    inert_values: ClassVar[dict[str, tuple[Any, ...]]] = {
        **_Request.inert_values,
        "logprobs": (None,),
        "echo": (None, False),
        "best_of": (None, 1),
        "suffix": (None, ""),
    }

    @property
    def token_limit(self) -> tuple[int | None, str]:
        return self.max_tokens, "max_tokens"


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message. Fields a client echoes back from an earlier answer (``refusal``,
    ``annotations``, ...) are ignored; tool calls are refused."""

    model_config = ConfigDict(strict=True, extra="ignore")

    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    function_call: Any | None = None

    def text(self, index: int) -> str:
        if self.tool_calls or self.function_call is not None:
            raise BadRequestError(
                "tool and function calls are not supported by this server",
                param=f"messages[{index}].tool_calls",
            )
        if self.content is None:
            raise BadRequestError(
                f"messages[{index}] has no content", param=f"messages[{index}].content"
            )
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class ChatCompletionRequest(_Request):
    """``POST /v1/chat/completions``. ``max_completion_tokens`` (or the older ``max_tokens``)
    defaults to the server's ``--max-tokens``; the context ends a generation first."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=0)] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any | None = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: Any | None = None
    prediction: Any | None = None
    reasoning_effort: str | None = None
    web_search_options: Any | None = None

    inert_values: ClassVar[dict[str, tuple[Any, ...]]] = {
        **_Request.inert_values,
        "logprobs": (None, False),
        "top_logprobs": (None,),
        "tools": (None, []),
        "tool_choice": (None, "none"),
        "functions": (None, []),
        "function_call": (None, "none"),
        "response_format": (None, {"type": "text"}),
        "modalities": (None, ["text"]),
        "audio": (None,),
        "prediction": (None,),
        "reasoning_effort": (None,),
        "web_search_options": (None,),
    }

    @property
    def token_limit(self) -> tuple[int | None, str]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


@dataclasses.dataclass(frozen=True)
class _Kind:
    """What differs between completions and chat completions."""

    request: type[CompletionRequest] | type[ChatCompletionRequest]
    what: str  # for messages
    id_prefix: str
    object: str
    chunk_object: str
    default_max_tokens: int | None  # None: the server's --max-tokens


_COMPLETIONS = _Kind(
    CompletionRequest, "completion request", "cmpl-", "text_completion", "text_completion", 16
)
_CHAT = _Kind(
    ChatCompletionRequest,
    "chat completion request",
    "chatcmpl-",
    "chat.completion",
    "chat.completion.chunk",
    None,
)


def _chat_ids(model: ServedModel, request: ChatCompletionRequest) -> list[int]:
    """The prompt of the next assistant turn, laid out as training laid it out."""
    from qwthn_onnx.chat import ROLE_ALIASES, Message

    try:
        messages = [
            Message(ROLE_ALIASES.get(m.role, m.role), m.text(i))
            for i, m in enumerate(request.messages)
        ]
        return model.encode_chat(messages)
    except ValueError as e:  # DataError: an unknown role, a template that fails
        raise BadRequestError(str(e), param="messages") from e


def _prompts(model: ServedModel, request: CompletionRequest | ChatCompletionRequest) -> list:
    """The prompts of a request: token id lists, or strings to encode."""
    if isinstance(request, ChatCompletionRequest):
        return [_chat_ids(model, request)]
    prompt = request.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise BadRequestError("prompt is an empty list", param="prompt")
    if isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)


def _plan(
    model: ServedModel,
    request: CompletionRequest | ChatCompletionRequest,
    kind: _Kind,
    max_tokens: int,
) -> tuple[list[GenerationPlan], int]:
    """The plans of every choice, in OpenAI's order (prompt by prompt, n each), and the prompt
    tokens (each prompt once, as OpenAI's usage counts them); blocking (the tokenizer runs).
    BadRequestError names what is wrong."""
    request.refuse_unsupported()
    n = request.choices_per_prompt
    tokens, tokens_param = request.token_limit
    config = sampling_config(
        # a default never exceeds the server's --max-tokens
        max_tokens=tokens
        if tokens is not None
        else min(kind.default_max_tokens or max_tokens, max_tokens),
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_k=request.top_k or 0,
        seed=request.seed,
    )
    check_config(config, max_tokens, tokens_param)
    prompts = _prompts(model, request)
    if len(prompts) * n > MAX_CHOICES:
        raise BadRequestError(
            f"{len(prompts)} prompt(s) x n={n} asks for {len(prompts) * n} choices; this server "
            f"gives at most {MAX_CHOICES} per request",
            param="n",
        )
    plans = []
    prompt_tokens = 0
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, list) and not prompt:
            raise BadRequestError(f"prompt {index} has no token ids", param="prompt")
        ids = model.encode(prompt) if isinstance(prompt, str) else prompt
        first = plan_prompt(model, ids, config, request.stop_strings, prompt_param="prompt")
        prompt_tokens += len(first.prompt_ids)
        for choice in range(n):
            if choice and config.seed is not None:  # choice i samples with seed + i
                seeded = dataclasses.replace(config, seed=config.seed + choice)
                plans.append(dataclasses.replace(first, config=seeded))
            else:
                plans.append(first)
    return plans, prompt_tokens


def _usage(prompt_tokens: int, results: Sequence[GenerationResult]) -> dict[str, int]:
    completion = sum(len(r.token_ids) for r in results)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


async def _results(jobs: Sequence[GenerationJob]) -> list[GenerationResult]:
    """Every job's result, in order; the first failure (a ServingError) is raised."""
    results: list[GenerationResult | None] = [None] * len(jobs)
    async for i, event in merged_events(jobs):
        if isinstance(event, GenerationResult):
            results[i] = event
    return [r for r in results if r is not None]


@dataclasses.dataclass
class _Answer:
    """The parts of one request's answer that every chunk or body repeats."""

    kind: _Kind
    model: str  # as the request named it
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    def head(self, chunk: bool) -> dict[str, Any]:
        return {
            "id": self.kind.id_prefix + self.id,
            "object": self.kind.chunk_object if chunk else self.kind.object,
            "created": self.created,
            "model": self.model,
        }

    def choice(self, index: int, text: str | None, finish: str | None, chunk: bool) -> dict:
        """One choice: a whole one, or in a chunk the new ``text`` (None: the role, first)."""
        entry: dict[str, Any] = {"index": index}
        if self.kind is _COMPLETIONS:
            entry["text"] = text or ""
        elif not chunk:
            entry["message"] = {"role": "assistant", "content": text, "refusal": None}
        elif text is None:
            entry["delta"] = {"role": "assistant", "content": ""}
        else:
            entry["delta"] = {"content": text} if text else {}
        return {**entry, "logprobs": None, "finish_reason": finish}

    def body(self, results: Sequence[GenerationResult], prompt_tokens: int) -> dict[str, Any]:
        return {
            **self.head(chunk=False),
            "choices": [
                self.choice(i, r.text, r.finish_reason, chunk=False) for i, r in enumerate(results)
            ],
            "usage": _usage(prompt_tokens, results),
        }


async def _chunks(
    answer: _Answer,
    jobs: Sequence[GenerationJob],
    prompt_tokens: int,
    include_usage: bool,
    done: Callable[[bool], None],
) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed (chat) completion, as OpenAI sends them: chat
    choices first say their role; then each choice's text in pieces as it is generated; a
    chunk with its finish_reason when it ends; the usage (when asked for) once all have ended;
    ``[DONE]``. An error ends the stream with ``data: {"error": {...}}`` (the openai client
    raises it) and ``[DONE]``. The pieces of a choice add up to its text (see TextStream)."""
    usage_field = {"usage": None} if include_usage else {}

    def chunk(index: int, text: str | None, finish: str | None = None) -> bytes:
        choice = answer.choice(index, text, finish, chunk=True)
        return sse({**answer.head(chunk=True), "choices": [choice], **usage_field})

    ok = False
    sent = [""] * len(jobs)
    results: list[GenerationResult] = []
    try:
        if answer.kind is _CHAT:
            for i in range(len(jobs)):
                yield chunk(i, None)
        async for i, event in merged_events(jobs):
            if isinstance(event, GenerationResult):
                results.append(event)
                text = event.text
                rest = text[len(sent[i]) :] if text.startswith(sent[i]) else ""
                yield chunk(i, rest, event.finish_reason)
            elif event.text:
                sent[i] += event.text
                yield chunk(i, event.text)
        if include_usage:
            usage = _usage(prompt_tokens, results)
            yield sse({**answer.head(chunk=True), "choices": [], "usage": usage})
        yield sse("[DONE]")
        ok = True
    except ServingError as e:
        yield sse(openai_error(e.status, e.message, e.param, e.code))
        yield sse("[DONE]")
    finally:
        for job in jobs:
            job.cancel()
        done(ok)


def add_openai_routes(
    app: FastAPI, repository: ModelRepository, generations: GenerationService
) -> None:
    """Add ``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions`` to ``app``."""

    def resolve(model_id: str) -> ServedModel:
        """``name`` (its default version) or ``name/version``: 404 model_not_found else."""
        name, _, version = model_id.rpartition("/")
        try:
            if name and version.isdigit():
                return repository.get(name, version)
            return repository.get(model_id)
        except NotFoundError as e:
            raise NotFoundError(e.message, param="model", code="model_not_found") from e

    def model_ids() -> list[tuple[str, ServedModel]]:
        """Each model by name (its default version), then each version as ``name/version``."""
        names = sorted({m.name for m in repository})
        defaults = [(name, repository.get(name)) for name in names]
        versions = [
            (f"{m.name}/{m.version}", m)
            for m in sorted(repository, key=lambda m: (m.name, m.version))
        ]
        return defaults + versions

    def model_card(model_id: str, model: ServedModel) -> dict[str, Any]:
        created = int(model.directory.stat().st_mtime)
        return {"id": model_id, "object": "model", "created": created, "owned_by": _OWNER}

    @app.get("/v1/models", tags=["openai"])
    async def list_models() -> dict[str, Any]:
        """The models, as OpenAI lists them: each by name (its default, highest version), and
        each version as ``name/version``; either is a request's ``model``."""
        return {"object": "list", "data": [model_card(i, m) for i, m in model_ids()]}

    @app.get("/v1/models/{model_id:path}", tags=["openai"], responses=_ERRORS)
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        return model_card(model_id, resolve(model_id))

    async def complete(request: Request, kind: _Kind) -> Response:
        received = time.monotonic()
        body = await request.body()
        resolved: ServedModel | None = None

        def parse() -> tuple[Any, ServedModel, list[GenerationPlan], int]:
            nonlocal resolved
            try:
                parsed = kind.request.model_validate_json(body)
            except ValidationError as e:
                message, param = describe_validation_error(e, kind.what)
                raise BadRequestError(message, param=param) from e
            model = resolved = resolve(parsed.model)
            generations.check(model)
            plans, prompt_tokens = _plan(model, parsed, kind, generations.max_tokens)
            return parsed, model, plans, prompt_tokens

        try:
            # Off the event loop: the tokenizer may take a while over a long prompt.
            parsed, model, plans, prompt_tokens = await asyncio.to_thread(parse)
            stats = generations.stats(model)
            stats.phase("compute_input", time.monotonic() - received)
            jobs = generations.start(model, plans, stream=bool(parsed.stream), received=received)
        except ServingError:
            if resolved is not None:
                generations.stats(resolved).request(False, time.monotonic() - received)
            raise

        def done(ok: bool) -> None:
            stats.request(ok, time.monotonic() - received, len(jobs))

        answer = _Answer(kind, parsed.model)
        if parsed.stream:
            events = _chunks(answer, jobs, prompt_tokens, parsed.usage_in_stream, done)
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
        ok = False
        try:
            results = await unless_disconnected(request, _results(jobs))
            ok = results is not None
        finally:
            for job in jobs:
                job.cancel()
            done(ok)
        if results is None:
            return JSONResponse(openai_error(CLIENT_GONE, "the client disconnected"), CLIENT_GONE)
        start = time.monotonic()
        response = JSONResponse(answer.body(results, prompt_tokens))
        stats.phase("compute_output", time.monotonic() - start)
        return response

    @app.post(
        "/v1/completions",
        tags=["openai"],
        **body_docs(CompletionRequest, {200: _ANSWER, **_ERRORS}),
    )
    async def completions(request: Request) -> Response:
        """OpenAI's (legacy) completions: the text that follows ``prompt``. The body is
        ``CompletionRequest``; ``stream: true`` answers server-sent events."""
        return await complete(request, _COMPLETIONS)

    @app.post(
        "/v1/chat/completions",
        tags=["openai"],
        **body_docs(ChatCompletionRequest, {200: _ANSWER, **_ERRORS}),
    )
    async def chat_completions(request: Request) -> Response:
        """OpenAI's chat completions: the assistant's next message after ``messages``. The body
        is ``ChatCompletionRequest``; ``stream: true`` answers server-sent events."""
        return await complete(request, _CHAT)
