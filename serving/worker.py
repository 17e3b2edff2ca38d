"""The worker-thread lifecycle shared by the infer batcher and the generation scheduler.

Each model version owns one worker thread fed by a queue, so onnxruntime never runs on the
event loop and one busy model cannot stall another. ``None`` on the queue asks the worker to
finish what it holds and stop.
"""

from __future__ import annotations

import queue
import threading
from typing import Generic, TypeVar

from serving.errors import UnavailableError

__all__ = ["QueueWorker"]

Item = TypeVar("Item")


class QueueWorker(Generic[Item]):
    """Start/stop/accepting state around ``_work``, which subclasses implement."""

    kind = "worker"  # in thread names and messages

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[Item | None] = queue.SimpleQueue()  # None: stop
        self._thread: threading.Thread | None = None
        self._accepting = False

    @property
    def running(self) -> bool:
        return self._accepting and self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the worker thread."""
        if self._thread is not None:
            raise RuntimeError(f"{self.kind} {self.name} was started already")
        self._thread = threading.Thread(
            target=self._work, name=f"{self.kind} {self.name}", daemon=True
        )
        self._accepting = True
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new items, let the worker finish the ones it has, and end the thread."""
        self._accepting = False
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def _enqueue(self, item: Item) -> None:
        if not self.running:
            raise UnavailableError(f"{self.name} is not accepting requests (starting or stopping)")
        self._queue.put(item)

    def _work(self) -> None:
        raise NotImplementedError
