"""Fair, batched scheduling of text generation: one worker thread per model version gives every
active request one token per round, the requests decoded together in batched onnxruntime calls.

Rounds are what make it fair: every active request advances at the same rate, so a long
generation never holds up a short one, and a request that arrives while others generate gets
its first token within one round instead of after them. A round is one
``BatchDecoder.step``: new requests' prompts are prefilled alone, the others decode together
as one batch (up to the server's max batch size per call), which on a CPU costs little more than
one of them alone. At most ``max_active`` requests generate at once (each holds a KV cache);
later ones wait in arrival order and join as soon as one finishes.

The event loop never blocks on generation: requests await the events their job posts
(``serving.generation.GenerationJob``). A cancelled job (timeout, client gone) is dropped at its
next turn, queued or active, so no token is generated for nobody. A job whose forward pass or
decoding fails gets a 500 alone; the others go on.
"""

from __future__ import annotations

import logging
import queue
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from prometheus_client import Gauge

from serving.errors import ServingError, UnavailableError
from serving.worker import QueueWorker

__all__ = ["GenerationScheduler", "Job"]

log = logging.getLogger(__name__)


class Job(Protocol):
    """What the scheduler needs of a request (``GenerationJob``, or a test's stand-in)."""

    @property
    def cancelled(self) -> bool: ...

    @property
    def sequence(self) -> Any:
        """What ``decode`` takes for this job (a DecodingSequence)."""
        ...

    def accept(self, token: int) -> bool:
        """Take the next token; True when the job is over."""
        ...

    def fail(self, error: ServingError) -> None: ...


# The next token of each sequence, or the exception its forward pass raised (BatchDecoder.step).
Decode = Callable[[Sequence[Any]], Sequence["int | Exception"]]


class GenerationScheduler(QueueWorker["Job"]):
    """Batched round-robin generation for one model version, on a worker thread.

    Args:
        name: for the thread's name and messages.
        decode: the model version's ``BatchDecoder.step``.
        max_active: how many requests generate at once; others wait in arrival order.
        in_flight: the gauge of requests queued or generating.
    """

    kind = "generation"

    def __init__(self, *, name: str, decode: Decode, max_active: int, in_flight: Gauge) -> None:
        if max_active < 1:
            raise ValueError(f"max_active must be >= 1, got {max_active}")
        super().__init__(name)
        self._decode = decode
        self.max_active = max_active
        self._in_flight = in_flight

    def submit(self, job: Job) -> None:
        """Queue ``job``; its events tell the caller how it goes."""
        self._enqueue(job)
        self._in_flight.inc()

    # The worker thread.

    def _work(self) -> None:
        waiting: deque[Job] = deque()
        active: list[Job] = []
        stopping = False
        while waiting or active or not stopping:
            idle = not (waiting or active or stopping)
            stopping = self._collect(waiting, block=idle) or stopping
            waiting = deque(job for job in waiting if not (job.cancelled and self._leave()))
            while waiting and len(active) < self.max_active:
                active.append(waiting.popleft())
            active = [job for job in active if not (job.cancelled and self._leave())]
            if active:
                active = self._round(active)
        # A job that raced with stop() past the check in submit(): answer, don't strand it.
        self._collect(waiting, block=False)
        for job in waiting:
            job.fail(UnavailableError(f"{self.name} is shutting down"))
            self._leave()

    def _collect(self, waiting: deque[Job], block: bool) -> bool:
        """Move submitted jobs to ``waiting`` (waiting for one when ``block``); True when a stop
        was among them."""
        stop = False
        try:
            item = self._queue.get() if block else self._queue.get_nowait()
            while True:
                if item is None:
                    stop = True
                else:
                    waiting.append(item)
                item = self._queue.get_nowait()
        except queue.Empty:
            return stop

    def _round(self, active: list[Job]) -> list[Job]:
        """A token for every active job; the jobs that go on."""
        try:
            outcomes = list(self._decode([job.sequence for job in active]))
        except Exception as e:  # decode keeps failures per sequence; this would be a bug
            outcomes = [e] * len(active)
        going_on = []
        for job, outcome in zip(active, outcomes, strict=True):
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                if not job.accept(outcome):
                    going_on.append(job)
                    continue
            except Exception as e:
                log.error("%s: a generation failed", self.name, exc_info=e)
                job.fail(ServingError(f"{self.name}: generation failed: {type(e).__name__}: {e}"))
            self._leave()
        return going_on

    def _leave(self) -> bool:
        """Count a job out of the in-flight gauge; True (the job leaves), for the filters."""
        self._in_flight.dec()
        return True
