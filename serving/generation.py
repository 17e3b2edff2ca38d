"""One text-generation request: checked, encoded, then generated a token at a time.

``plan_generation`` checks a request against the model and the server's limits and encodes its
prompt. A ``GenerationJob`` is then created on the event loop; its model version's scheduler
thread (``serving.scheduler``) decodes its ``sequence`` with the other active ones and hands it
each token (``accept``); it posts what it produces to the request's coroutine on the event
loop, which awaits ``next_event()`` or ``result()``.

The text is the one ``QWTHNSession.generate`` gives: all new tokens decoded without stop tokens,
cut where a stop string begins. While streaming, ``TextStream`` hands out only text that can no
longer change: it holds back a tail that may still grow into a stop string and an incomplete
UTF-8 character, so the pieces concatenate to the final text.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

from qwthn_onnx.runtime.decoding import DecodingSequence
from qwthn_onnx.runtime.generation import GenerationConfig, GenerationError
from serving.errors import BadRequestError, ServingError, TimeoutExceededError
from serving.metrics import GenerationMetrics, ModelStats
from serving.protocol import GenerateRequest, TritonGenerateRequest

if TYPE_CHECKING:
    from serving.model import ServedModel
    from serving.scheduler import GenerationScheduler

__all__ = [
    "GenerationJob",
    "GenerationPlan",
    "GenerationResult",
    "GenerationService",
    "TextStream",
    "TokenEvent",
    "check_config",
    "plan_generation",
    "plan_prompt",
]

_REPLACEMENT = "\ufffd"  # what a decoder gives for a UTF-8 sequence whose last bytes are to come


@dataclass(frozen=True)
class GenerationPlan:
    """A checked request: what to generate from which prompt tokens."""

    prompt_ids: list[int]
    config: GenerationConfig
    stop: tuple[str, ...]  # stop strings, empty ones left out (as QWTHNSession.generate does)
    stop_ids: frozenset[int]  # the model's eos besides config.stop_token_ids
    budget: int  # the most new tokens: max_new_tokens, fewer where the context ends first


def check_config(config: GenerationConfig, max_tokens: int, tokens_param: str) -> None:
    """Raise BadRequestError for a bad sampling parameter (GenerationError's message) or a
    ``max_new_tokens`` (called ``tokens_param`` by the request) over the server's
    ``max_tokens``."""
    try:
        config.validate()
    except GenerationError as e:
        message = str(e)
        param = message.split(" ", 1)[0]
        if param == "max_new_tokens":
            message, param = message.replace("max_new_tokens", tokens_param, 1), tokens_param
        raise BadRequestError(message, param=param) from e
    if config.max_new_tokens > max_tokens:
        raise BadRequestError(
            f"{tokens_param} {config.max_new_tokens} is over this server's limit of {max_tokens} "
            f"(--max-tokens)",
            param=tokens_param,
        )


def plan_prompt(
    model: ServedModel,
    ids: Sequence[int],
    config: GenerationConfig,
    stop: Sequence[str],
    prompt_param: str = "prompt",
) -> GenerationPlan:
    """The plan of generating from prompt tokens ``ids`` with a checked ``config``.

    Raises BadRequestError for a prompt without tokens, with ids outside the vocabulary, or
    longer than the model's context.
    """
    if not ids:
        raise BadRequestError(
            f"the prompt encodes to no tokens ({model.label} has no bos token)", param=prompt_param
        )
    vocab = model.vocab_size
    if vocab is not None and not all(0 <= t < vocab for t in ids):
        raise BadRequestError(
            f"the prompt's token ids must be in [0, {vocab}); got {min(ids)}..{max(ids)}",
            param=prompt_param,
        )
    context = model.session.max_length
    if context is not None and len(ids) > context:
        raise BadRequestError(
            f"the prompt has {len(ids)} tokens but the context of {model.label} is {context}",
            param=prompt_param,
        )
    budget = config.max_new_tokens
    if context is not None:  # generation stops where the context is full
        budget = min(budget, context - len(ids))
    stop_ids = frozenset(model.session.stop_config(config).stop_token_ids)
    return GenerationPlan(list(ids), config, tuple(s for s in stop if s), stop_ids, budget)


def plan_generation(
    model: ServedModel, request: GenerateRequest | TritonGenerateRequest, max_tokens: int
) -> GenerationPlan:
    """Check ``request`` and encode its prompt (blocking: the tokenizer runs).

    Raises BadRequestError naming the problem: a bad sampling parameter (GenerationError's
    message), ``max_new_tokens`` over ``max_tokens``, a prompt without tokens or longer than the
    model's context.
    """
    config = request.generation_config()
    if not request.token_limit_given:  # a default never exceeds the server's --max-tokens
        config = replace(config, max_new_tokens=min(config.max_new_tokens, max_tokens))
    check_config(config, max_tokens, request.tokens_param)
    return plan_prompt(model, model.encode(request.prompt), config, request.stop_strings)


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, and the new text that is safe to send with it (maybe none)."""

    token_id: int
    text: str
    index: int


@dataclass(frozen=True)
class GenerationResult:
    """A finished generation, as ``QWTHNSession.generate`` would give it."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (stop token or string) or "length"


class TextStream:
    """The text of the generated tokens as it grows, cut at stop strings, in pieces to send.

    Pieces concatenate to ``final_text()`` as long as decoding more tokens only appends to the
    text (byte-level BPE, SentencePiece, character vocabularies: yes). A tokenizer that rewrites
    decoded text, such as one that cleans up tokenization spaces, can change text already sent;
    then nothing more is sent but the final text, which the last event carries whole.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str]) -> None:
        self._decode = decode
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.text = ""
        self.sent = ""

    def push(self, token: int) -> bool:
        """Add a token; True when the text now holds a stop string."""
        self.ids.append(token)
        self.text = self._decode(self.ids)
        return any(s in self.text for s in self.stop)

    def final_text(self) -> str:
        """The text cut where a stop string begins (QWTHNSession.generate's rule)."""
        text = self.text
        for s in self.stop:
            if s in text:
                text = text[: text.index(s)]
        return text

    def piece(self, final: bool) -> str:
        """The text not sent yet that can be sent now: all of the final text when ``final``."""
        text = self.final_text() if final else self.text
        if not text.startswith(self.sent):
            return ""
        piece = text[len(self.sent) : len(text) if final else self._settled()]
        self.sent += piece
        return piece

    def _settled(self) -> int:
        """How much of the text is settled: all but an incomplete character at its end and a
        tail that may still grow into a stop string."""
        text = self.text.rstrip(_REPLACEMENT)
        end = len(text)
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    end = min(end, len(text) - n)
                    break
        return end


Event = TokenEvent | GenerationResult | ServingError


class GenerationJob:
    """One request's generation: decoded by the scheduler thread, awaited on the event loop.

    Args:
        model: the model version (its session generates; its scheduler-thread tokenizer decodes).
        plan: the checked request.
        metrics: tokens, time to first token and duration go there.
        stream: post an event per token (else only the result).
        received: ``time.monotonic()`` when the request arrived; time to first token, duration
            and the deadline count from it.
        timeout_s: the request's time limit, queue time included.
    """

    def __init__(
        self,
        model: ServedModel,
        plan: GenerationPlan,
        metrics: GenerationMetrics,
        *,
        stream: bool,
        received: float,
        timeout_s: float,
    ) -> None:
        self.label = model.label
        self.prompt_tokens = len(plan.prompt_ids)
        self.cancelled = False  # set on the event loop, read by the scheduler thread
        self.sequence = DecodingSequence(plan.prompt_ids, plan.config)
        self._text = TextStream(partial(model.decode, skip=plan.stop_ids), plan.stop)
        self._stop_ids = plan.stop_ids
        self._budget = plan.budget
        self._metrics = metrics
        self._stream = stream
        self._received = received
        self._timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._submitted = time.monotonic()
        self._first_token: float | None = None
        if self.finished:
            self._finish("length")

    # The scheduler thread.

    @property
    def finished(self) -> bool:
        """Over before it began: nothing to generate (max_new_tokens 0, or a prompt that fills
        the context); the result is posted already."""
        return self._budget == 0

    def accept(self, token: int) -> bool:
        """Take the next token and post it; True when the generation is over (the result is
        posted)."""
        index = len(self._text.ids)
        stopped = self._text.push(token) or token in self._stop_ids
        done = stopped or index + 1 == self._budget
        self._metrics.tokens.inc()
        if index == 0:
            now = self._first_token = time.monotonic()
            self._metrics.first_token_seconds.observe(now - self._received)
            self._metrics.stats.phase("queue", now - self._submitted)
            self._metrics.stats.execution(1)  # the prompt's prefill
        if self._stream:
            self._post(TokenEvent(token, self._text.piece(final=done), index))
        if done:
            self._finish("stop" if stopped else "length")
        return done

    def fail(self, error: ServingError) -> None:
        """End the request with ``error``."""
        self._post(error)

    def _finish(self, reason: str) -> bool:
        now = time.monotonic()
        self._metrics.seconds.observe(now - self._received)
        if self._first_token is not None:
            self._metrics.stats.phase("compute_infer", now - self._first_token)
        ids = list(self._text.ids)
        self._post(GenerationResult(self._text.final_text(), ids, self.prompt_tokens, reason))
        return True

    def _post(self, event: Event) -> None:
        # asyncio queues are not thread-safe: put on the request's own loop.
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody waits any more
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    # The event loop.

    def cancel(self) -> None:
        """Stop generating for this request (the scheduler drops it at its next turn)."""
        self.cancelled = True

    async def next_event(self) -> TokenEvent | GenerationResult:
        """The next token (streaming only) or the result, which comes last.

        Raises the ServingError the generation failed with, or TimeoutExceededError once the
        request's time is up.
        """
        remaining = self._received + self._timeout_s - time.monotonic()
        try:
            event = await asyncio.wait_for(self._events.get(), max(remaining, 0.0))
        except asyncio.TimeoutError as e:
            raise TimeoutExceededError(
                f"{self.label}: generation did not finish within {self._timeout_s:g} s "
                f"(--timeout-s)"
            ) from e
        if isinstance(event, ServingError):
            raise event
        return event

    async def result(self) -> GenerationResult:
        """The finished generation (token events are skipped)."""
        while not isinstance(event := await self.next_event(), GenerationResult):
            pass
        return event


class GenerationService:
    """Generation jobs started on their model version's scheduler: what every API that
    generates (ours, Triton's generate body, the OpenAI-compatible one) goes through, so that
    batching, fairness, limits, metrics and shutdown are the same for all of them.

    Args:
        schedulers: by (model name, version).
        metrics: the generation metrics, by (model name, version).
        max_tokens: the most new tokens a request may ask for (``--max-tokens``).
        timeout_s: a request's time limit, queue time included (``--timeout-s``).
    """

    def __init__(
        self,
        schedulers: Mapping[tuple[str, int], GenerationScheduler],
        metrics: Mapping[tuple[str, int], GenerationMetrics],
        *,
        max_tokens: int,
        timeout_s: float,
    ) -> None:
        self._schedulers = schedulers
        self._metrics = metrics
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s

    def stats(self, model: ServedModel) -> ModelStats:
        return self._metrics[(model.name, model.version)].stats

    @staticmethod
    def check(model: ServedModel) -> None:
        """BadRequestError when ``model`` cannot generate text."""
        problem = model.generation_problem
        if problem is not None:
            raise BadRequestError(problem, param="model")

    def start(
        self, model: ServedModel, plans: Sequence[GenerationPlan], *, stream: bool, received: float
    ) -> list[GenerationJob]:
        """A job per plan, queued on the model's scheduler (on the event loop). When one cannot
        be queued (UnavailableError: the server is stopping), those queued already are
        cancelled."""
        key = (model.name, model.version)
        jobs: list[GenerationJob] = []
        try:
            for plan in plans:
                job = GenerationJob(
                    model,
                    plan,
                    self._metrics[key],
                    stream=stream,
                    received=received,
                    timeout_s=self.timeout_s,
                )
                if not job.finished:
                    self._schedulers[key].submit(job)
                jobs.append(job)
        except BaseException:
            for job in jobs:
                job.cancel()
            raise
        return jobs
