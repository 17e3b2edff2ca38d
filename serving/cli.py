"""``qwthn-serve``: serve exported models over the Open Inference Protocol v2 (KServe v2) REST API.

Loads every model version first (a bad path or model exits with 2 before anything listens),
then runs uvicorn. SIGTERM or Ctrl-C stops it gracefully: no new connections, in-flight
requests and streams finish (up to ``--timeout-s``), queued batches and generations run, and
the command exits with 0.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from serving.repository import (
    ModelRepository,
    ModelSource,
    RepositoryError,
    discover,
    load_model,
)

__all__ = ["build_parser", "log_config", "main"]

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_ACCESS_FORMAT = (
    '%(asctime)s %(levelname)-7s %(name)s: %(client_addr)s "%(request_line)s" %(status_code)s'
)


def _bounded(kind: type, low: float, strict: bool = False) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}: {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qwthn-serve",
        description="Serve qwthn-export outputs over the Open Inference Protocol v2 (KServe v2) "
        "REST API, with dynamic batching, Prometheus /metrics and OpenAPI docs at /docs.",
    )
    p.add_argument(
        "path",
        type=Path,
        help="an export directory (one model named after it, version 1) or a model repository "
        "<repo>/<model>/<version>/ (the highest version is the default)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=_bounded(int, 0), default=8000, help="(default: %(default)s)")
    p.add_argument(
        "--threads", type=_bounded(int, 0), help="onnxruntime intra-op threads per model version"
    )
    p.add_argument(
        "--max-batch-size",
        type=_bounded(int, 1),
        default=8,
        help="most rows one merged onnxruntime run holds (default: %(default)s)",
    )
    p.add_argument(
        "--max-queue-delay-ms",
        type=_bounded(float, 0),
        default=0.0,
        help="how long a request may wait for others to batch with; 0: batch what queued up "
        "while the model was busy (default: %(default)s)",
    )
    p.add_argument(
        "--no-batching", action="store_true", help="run every request alone (--max-batch-size 1)"
    )
    p.add_argument(
        "--max-body-mb",
        type=_bounded(float, 0, strict=True),
        default=16.0,
        help="largest request body in MiB; larger ones get 413 (default: %(default)s)",
    )
    p.add_argument(
        "--timeout-s",
        type=_bounded(float, 0, strict=True),
        default=60.0,
        help="per request (inference or generation), queue time included; later: 504, or an "
        "error event ending a stream (default: %(default)s)",
    )
    p.add_argument(
        "--max-tokens",
        type=_bounded(int, 1),
        default=512,
        help="largest max_new_tokens a generation request may ask for; more: 400 "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-concurrent-generations",
        type=_bounded(int, 1),
        default=8,
        help="generation requests per model version that generate at once, a token each in "
        "turn; more wait in arrival order (default: %(default)s)",
    )
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    return p


def log_config(level: str) -> dict[str, Any]:
    """``logging.config`` dict: timestamped lines for the server, the access log and ours."""
    from uvicorn.logging import TRACE_LOG_LEVEL

    numeric = TRACE_LOG_LEVEL if level == "trace" else level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"format": _FORMAT},
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": _ACCESS_FORMAT,
                "use_colors": False,
            },
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "access",
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": numeric, "propagate": False},
            "uvicorn.access": {"handlers": ["access"], "level": numeric, "propagate": False},
        },
        "root": {"handlers": ["default"], "level": numeric},
    }


def _warn_unapplied_batch_size(source: ModelSource, max_batch_size: int) -> None:
    """Say so when a model's config.pbtxt asks Triton for another batch size than ours."""
    config = source.config
    if config is None or config.max_batch_size is None:
        return
    if config.max_batch_size != max_batch_size:
        logging.getLogger("serving.cli").warning(
            "model '%s': config.pbtxt has max_batch_size %d (Triton's); qwthn-serve batches up "
            "to --max-batch-size %d for every model",
            source.name,
            config.max_batch_size,
            max_batch_size,
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sources = discover(args.path)  # before the slow imports: a bad path answers at once
    except RepositoryError as e:
        print(f"qwthn-serve: error: {e}", file=sys.stderr)
        return 2

    config = log_config(args.log_level)
    logging.config.dictConfig(config)
    logging.captureWarnings(True)  # e.g. the kernels' FallbackWarning, in the log
    # The models load (integrity check, then onnxruntime, which releases the GIL) in a thread
    # while this one imports the web stack: a large export is ready ~0.6 s sooner.
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwthn-load")
    loading = loader.submit(lambda: [load_model(s, args.threads) for s in sources])
    loader.shutdown(wait=False)

    import uvicorn

    from serving.app import Settings, create_app

    try:
        repository = ModelRepository(loading.result())
    except KeyboardInterrupt:  # the loader thread finishes the model it is loading, then exits
        print("qwthn-serve: interrupted while loading the models", file=sys.stderr)
        return 130
    except RepositoryError as e:
        print(f"qwthn-serve: error: {e}", file=sys.stderr)
        return 2
    settings = Settings(
        max_batch_size=1 if args.no_batching else args.max_batch_size,
        max_queue_delay_ms=args.max_queue_delay_ms,
        max_body_bytes=int(args.max_body_mb * 2**20),
        timeout_s=args.timeout_s,
        max_tokens=args.max_tokens,
        max_concurrent_generations=args.max_concurrent_generations,
    )
    for source in {s.name: s for s in sources}.values():  # one config.pbtxt per model
        _warn_unapplied_batch_size(source, settings.max_batch_size)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(repository, settings),
            host=args.host,
            port=args.port,
            log_config=config,
            log_level=args.log_level,
            timeout_graceful_shutdown=args.timeout_s,
        )
    )
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; a no-op
    # handler for that moment makes a graceful stop exit with 0 rather than die by the signal.
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in handled}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
