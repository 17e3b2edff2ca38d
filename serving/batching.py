"""Dynamic batching: concurrent requests to one model version run as one onnxruntime call.

Each model version has a ``Batcher``: a queue and one worker thread, so onnxruntime never runs
on the event loop and a busy model cannot hold up another one. The worker takes the oldest
waiting request and adds the waiting ones whose tensors agree with it in every dimension but
the first (the batch), up to ``max_batch_size`` rows; while the batch has room it waits for
more until the oldest request has waited ``max_queue_delay``. The merged inputs are
concatenated on dim 0, run once, and the outputs split back by rows. Requests that cannot be
merged wait for a later batch, in arrival order, so none is starved.

If a merged batch fails, its requests run again one by one: one bad request fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from serving.errors import UnavailableError
from serving.worker import QueueWorker

__all__ = ["BatchStats", "Batcher"]

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
RunFn = Callable[[Feed, Sequence[str]], Feed]


@dataclass(frozen=True)
class BatchStats:
    """What one onnxruntime call did, for metrics."""

    rows: int
    requests: int
    queue_seconds: list[float]
    run_seconds: float


@dataclass(eq=False)
class _Pending:
    feed: Feed
    outputs: Sequence[str]
    future: asyncio.Future[Feed]
    loop: asyncio.AbstractEventLoop
    rows: int
    signature: tuple
    enqueued: float = field(default_factory=time.monotonic)

    def abandoned(self) -> bool:
        # Read from the worker thread: a benign race (at worst one run whose result is dropped).
        return self.future.done()


class Batcher(QueueWorker["_Pending"]):
    """Merges concurrent requests for one model version into batched runs.

    Args:
        run: ``run(feed, output_names) -> {name: array}``, called on the worker thread.
        name: for the thread's name and log messages.
        max_batch_size: the most rows one merged run may hold (a larger request runs alone);
            1 turns merging off.
        max_queue_delay_s: how long the oldest request may wait for others to join it; with 0
            a batch is what queued up while the previous run ran.
        mergeable: False when the model's tensors are not batch-major (never merge).
        observe: called with each run's BatchStats (on the worker thread).
    """

    kind = "batcher"

    def __init__(
        self,
        run: RunFn,
        *,
        name: str,
        max_batch_size: int = 8,
        max_queue_delay_s: float = 0.0,
        mergeable: bool = True,
        observe: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue_delay_s < 0:
            raise ValueError(f"max_queue_delay_s must be >= 0, got {max_queue_delay_s}")
        super().__init__(name)
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.merging = mergeable and max_batch_size > 1
        self._observe = observe

    async def submit(self, feed: Feed, outputs: Sequence[str]) -> Feed:
        """Run ``feed`` (possibly merged with other requests) and return ``outputs`` of it.

        Cancelling the caller (e.g. a timeout) drops the request if it has not run yet.
        """
        loop = asyncio.get_running_loop()
        first = next(iter(feed.values()))
        rows = first.shape[0] if first.ndim else 1
        signature = tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in feed.items()))
        pending = _Pending(feed, outputs, loop.create_future(), loop, rows, signature)
        self._enqueue(pending)
        return await pending.future

    # The worker thread.

    def _work(self) -> None:
        waiting: deque[_Pending] = deque()
        stopping = False
        while waiting or not stopping:
            if not waiting:
                item = self._queue.get()
                if item is None:
                    break
                waiting.append(item)
            stopping = self._drain(waiting) or stopping
            batch = self._take(waiting)
            if batch and not stopping:
                stopping = self._fill(batch, waiting)
            if batch:
                self._execute(batch)
        # A request that raced with stop() past the check in submit(): answer, don't strand it.
        self._drain(waiting)
        for item in waiting:
            self._deliver(item, UnavailableError(f"{self.name} is shutting down"))

    def _drain(self, waiting: deque[_Pending]) -> bool:
        """Move what is queued now into ``waiting``; True when a stop was among it."""
        stop = False
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return stop
            if item is None:
                stop = True
            else:
                waiting.append(item)

    def _fits(self, batch: list[_Pending], rows: int, item: _Pending) -> bool:
        return (
            self.merging
            and item.signature == batch[0].signature
            and rows + item.rows <= self.max_batch_size
        )

    def _take(self, waiting: deque[_Pending]) -> list[_Pending]:
        """The oldest live request and the waiting ones that can join it, in order."""
        batch: list[_Pending] = []
        rows = 0
        kept: deque[_Pending] = deque()
        for item in waiting:
            if item.abandoned():
                continue
            if not batch or self._fits(batch, rows, item):
                batch.append(item)
                rows += item.rows
            else:
                kept.append(item)
        waiting.clear()
        waiting.extend(kept)
        return batch

    def _fill(self, batch: list[_Pending], waiting: deque[_Pending]) -> bool:
        """Wait for more requests to join until the batch is full or the oldest request's delay
        is over; others go to ``waiting``. True when a stop arrived."""
        rows = sum(item.rows for item in batch)
        deadline = batch[0].enqueued + self.max_queue_delay_s
        while self.merging and rows < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return False
            if item is None:
                return True
            if self._fits(batch, rows, item):
                batch.append(item)
                rows += item.rows
            else:
                waiting.append(item)
        return False

    def _execute(self, batch: list[_Pending]) -> None:
        start = time.monotonic()
        names = list(dict.fromkeys(name for item in batch for name in item.outputs))
        try:
            if len(batch) == 1:
                feed = batch[0].feed
            else:
                feed = {k: np.concatenate([item.feed[k] for item in batch]) for k in batch[0].feed}
            result = self._run(feed, names)
            outputs = self._split(batch, result)
        except Exception as e:
            if len(batch) > 1:
                log.warning(
                    "%s: a batch of %d failed, running them one by one: %s",
                    self.name,
                    len(batch),
                    e,
                )
                for item in batch:
                    self._execute([item])
                return
            self._deliver(batch[0], e)
            return
        if self._observe is not None:
            self._observe(
                BatchStats(
                    rows=sum(item.rows for item in batch),
                    requests=len(batch),
                    queue_seconds=[start - item.enqueued for item in batch],
                    run_seconds=time.monotonic() - start,
                )
            )
        for item, output in zip(batch, outputs, strict=True):
            self._deliver(item, output)

    @staticmethod
    def _split(batch: list[_Pending], result: Feed) -> list[Feed]:
        if len(batch) == 1:
            return [{name: result[name] for name in batch[0].outputs}]
        outputs, start = [], 0
        for item in batch:
            stop = start + item.rows
            outputs.append({name: result[name][start:stop] for name in item.outputs})
            start = stop
        return outputs

    @staticmethod
    def _deliver(item: _Pending, outcome: Feed | Exception) -> None:
        """Settle the request's future on its event loop (futures are not thread-safe)."""

        def settle() -> None:
            if item.future.done():  # the caller gave up (timeout, disconnect)
                return
            if isinstance(outcome, Exception):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)

        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody waits any more
            item.loop.call_soon_threadsafe(settle)
