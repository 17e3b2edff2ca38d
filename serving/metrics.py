"""Prometheus metrics of one app instance (its own registry, so several apps in one process, as
in tests, do not share counts), and per-model-version statistics in the form of Triton's
statistics extension (``GET /v2/models/{m}/stats``).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from serving.batching import BatchStats

__all__ = ["CONTENT_TYPE_LATEST", "PHASES", "GenerationMetrics", "Metrics", "ModelStats"]

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_GENERATION_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


# The phases of a request that Triton's statistics time (``inference_stats``), besides its
# outcome (success, fail). See ModelStats for what each one covers here.
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(0, round(seconds * 1e9))

    def json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    """One model version's counters, as Triton's statistics extension reports them.

    - ``success``/``fail``: requests that reached the model version (its name and version
      resolved), by outcome; ns is their whole time in the server.
    - ``inference_count``: inferences done: the rows of infer requests, the sequences (choices)
      of generation requests; ``execution_count``: onnxruntime runs (merged batches, and a
      generation's prefill and decode calls).
    - ``queue``: an infer request's wait in its batcher; a generation's wait for a slot plus
      its prompt's prefill (submitted to first token).
    - ``compute_input``: parsing and checking the request (tokenizing the prompt included);
      ``compute_infer``: an infer request's onnxruntime run (its batch's), a generation's first
      to last token; ``compute_output``: encoding the answer (not timed for streams).
    - ``batch_stats``: onnxruntime runs of infer batches by their number of rows.

    The generation scheduler's thread updates it too: every change holds the lock.
    """

    name: str
    version: str
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    phases: dict[str, _Duration] = field(default_factory=lambda: {p: _Duration() for p in PHASES})
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: defaultdict[int, _Duration] = field(default_factory=lambda: defaultdict(_Duration))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def request(self, ok: bool, seconds: float, inferences: int = 1) -> None:
        """A request that ended after ``seconds``: ``ok``, having made ``inferences``, or not."""
        with self._lock:
            (self.success if ok else self.fail).add(seconds)
            if ok:
                self.inference_count += inferences
            self.last_inference_ms = int(time.time() * 1000)

    def phase(self, name: str, seconds: float) -> None:
        """One request spent ``seconds`` in phase ``name`` (one of PHASES)."""
        with self._lock:
            self.phases[name].add(seconds)

    def execution(self, rows: int, run_seconds: float | None = None) -> None:
        """One onnxruntime run of ``rows`` rows (an infer batch when its time is given)."""
        with self._lock:
            self.execution_count += 1
            if run_seconds is not None:
                self.batches[rows].add(run_seconds)

    def json(self) -> dict[str, Any]:
        """The ``model_stats`` entry of Triton's statistics extension."""
        zero = _Duration().json()
        with self._lock:
            return {
                "name": self.name,
                "version": self.version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.json(),
                    "fail": self.fail.json(),
                    **{p: d.json() for p, d in self.phases.items()},
                    "cache_hit": zero,  # no response cache
                    "cache_miss": zero,
                },
                "response_stats": {},
                "batch_stats": [
                    {
                        "batch_size": rows,
                        "compute_input": zero,
                        "compute_infer": d.json(),
                        "compute_output": zero,
                    }
                    for rows, d in sorted(self.batches.items())
                ],
                "memory_usage": [],
            }


@dataclass(frozen=True)
class GenerationMetrics:
    """The generation metrics of one model version, labelled once: the scheduler thread updates
    them per token, where a label lookup each time would cost more than the update."""

    tokens: Counter
    in_flight: Gauge
    first_token_seconds: Histogram
    seconds: Histogram
    decode_batch: Histogram
    stats: ModelStats

    def decoded(self, sequences: int) -> None:
        """One decode call of ``sequences`` sequences (BatchDecoder's ``observe``)."""
        self.decode_batch.observe(sequences)
        self.stats.execution(sequences)


class Metrics:
    """The server's metrics; ``render()`` gives the text exposition format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "qwthn_requests",
            "HTTP requests by method, route template and status code",
            ["method", "endpoint", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "qwthn_request_duration_seconds",
            "HTTP request latency, first byte received to response sent",
            ["method", "endpoint"],
            buckets=_SECONDS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "qwthn_queue_duration_seconds",
            "Time an inference request waited in its model's batching queue",
            ["model", "version"],
            buckets=_SECONDS,
            registry=r,
        )
        self.run_seconds = Histogram(
            "qwthn_inference_duration_seconds",
            "Time of one onnxruntime run (one batch)",
            ["model", "version"],
            buckets=_SECONDS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "qwthn_batch_size",
            "Rows (dim 0) per onnxruntime run",
            ["model", "version"],
            buckets=_SIZES,
            registry=r,
        )
        self.batch_requests = Histogram(
            "qwthn_batch_requests",
            "Requests merged into one onnxruntime run",
            ["model", "version"],
            buckets=_SIZES,
            registry=r,
        )
        self.generated_tokens = Counter(
            "qwthn_generated_tokens",
            "Tokens generated (completion tokens, a request's stop token included)",
            ["model", "version"],
            registry=r,
        )
        self.generations_in_flight = Gauge(
            "qwthn_generation_requests_in_flight",
            "Generation requests queued or generating",
            ["model", "version"],
            registry=r,
        )
        self.first_token_seconds = Histogram(
            "qwthn_time_to_first_token_seconds",
            "Generation requests: request received to first token generated",
            ["model", "version"],
            buckets=_SECONDS,
            registry=r,
        )
        self.generation_seconds = Histogram(
            "qwthn_generation_duration_seconds",
            "Generation requests that finished (stop or length): request received to last token",
            ["model", "version"],
            buckets=_GENERATION_SECONDS,
            registry=r,
        )
        self.decode_batch = Histogram(
            "qwthn_generation_batch_size",
            "Generation requests decoded together in one onnxruntime call (prefills run alone)",
            ["model", "version"],
            buckets=_SIZES,
            registry=r,
        )
        self.models_loaded = Gauge(
            "qwthn_models_loaded", "Model versions loaded and serving", registry=r
        )
        self._stats: dict[tuple[str, str], ModelStats] = {}

    def stats(self, model: str, version: str) -> ModelStats:
        """The Triton-style statistics of one model version (made on first use)."""
        key = (model, version)
        if key not in self._stats:
            self._stats[key] = ModelStats(model, version)
        return self._stats[key]

    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(method, endpoint, str(status)).inc()
        self.request_seconds.labels(method, endpoint).observe(seconds)

    def observe_batch(self, model: str, version: str, stats: BatchStats) -> None:
        counters = self.stats(model, version)
        for seconds in stats.queue_seconds:
            self.queue_seconds.labels(model, version).observe(seconds)
            counters.phase("queue", seconds)
            counters.phase("compute_infer", stats.run_seconds)  # each request: its batch's run
        counters.execution(stats.rows, stats.run_seconds)
        self.run_seconds.labels(model, version).observe(stats.run_seconds)
        self.batch_rows.labels(model, version).observe(stats.rows)
        self.batch_requests.labels(model, version).observe(stats.requests)

    def generation(self, model: str, version: str) -> GenerationMetrics:
        """The generation metrics of one model version, for its scheduler and jobs."""
        return GenerationMetrics(
            tokens=self.generated_tokens.labels(model, version),
            in_flight=self.generations_in_flight.labels(model, version),
            first_token_seconds=self.first_token_seconds.labels(model, version),
            seconds=self.generation_seconds.labels(model, version),
            decode_batch=self.decode_batch.labels(model, version),
            stats=self.stats(model, version),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
