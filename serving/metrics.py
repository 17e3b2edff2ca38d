"""Prometheus metrics of one app instance (its own registry, so several apps in one process, as
in tests, do not share counts)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from serving.batching import BatchStats

__all__ = ["CONTENT_TYPE_LATEST", "GenerationMetrics", "Metrics"]

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_GENERATION_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class GenerationMetrics:
    """The generation metrics of one model version, labelled once: the scheduler thread updates
    them per token, where a label lookup each time would cost more than the update."""

    tokens: Counter
    in_flight: Gauge
    first_token_seconds: Histogram
    seconds: Histogram
    decode_batch: Histogram


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

    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(method, endpoint, str(status)).inc()
        self.request_seconds.labels(method, endpoint).observe(seconds)

    def observe_batch(self, model: str, version: str, stats: BatchStats) -> None:
        for seconds in stats.queue_seconds:
            self.queue_seconds.labels(model, version).observe(seconds)
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
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
