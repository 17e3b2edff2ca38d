"""Server-sent events and client disconnects, for every API that streams or generates.

A generation nobody will read is not worth computing: requests await their answers with
``unless_disconnected``, and streams stop their jobs when the client goes (Starlette cancels a
streaming response's iterator then, and its ``finally`` cancels the jobs).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

from fastapi import Request

from serving.generation import GenerationJob, GenerationResult, TokenEvent

__all__ = ["SSE_HEADERS", "merged_events", "sse", "unless_disconnected", "until_disconnected"]

# No caching, no proxy buffering, and no keep-alive: a browser that aborts a stream would
# otherwise read it to its end to reuse the connection, and the generation would go on for it.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "close"}
T = TypeVar("T")


def sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    """One server-sent event; JSON escapes newlines, so ``data`` is one line."""
    line = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "").encode() + f"data: {line}\n\n".encode()


async def until_disconnected(request: Request) -> None:
    """Return when the client disconnects (the request body must have been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, awaitable: Awaitable[T]) -> T | None:
    """What ``awaitable`` gives, or None when the client disconnects first (``awaitable`` is
    then cancelled)."""
    work = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        work.cancel()
        gone.cancel()
    return work.result() if work.done() else None


async def merged_events(
    jobs: Sequence[GenerationJob],
) -> AsyncIterator[tuple[int, TokenEvent | GenerationResult]]:
    """The events of several jobs as they come, each with its job's index, until every job has
    its result; the first job's error (a ServingError) is raised. The caller cancels the jobs.
    """
    if len(jobs) == 1:  # the common case, without a task per job
        while isinstance(event := await jobs[0].next_event(), TokenEvent):
            yield 0, event
        yield 0, event
        return
    pending = {asyncio.ensure_future(job.next_event()): i for i, job in enumerate(jobs)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            # in job order, so that equal arrivals keep the choices' order
            for task in sorted(done, key=pending.__getitem__):
                i = pending.pop(task)
                event = task.result()
                if isinstance(event, TokenEvent):
                    pending[asyncio.ensure_future(jobs[i].next_event())] = i
                yield i, event
    finally:
        for task in pending:
            task.cancel()
