"""A tiny exported model, and real server processes on loopback serving it.

The export is built once per session (~10 s). Two servers start side by side: ``server`` on a
Triton-like repository ``<repo>/tiny/{1,2}/`` with batching (and generation limits of its own:
``--max-tokens 200 --max-concurrent-generations 4``), ``unbatched`` on the export directory
itself with ``--no-batching``. Both must stop gracefully (exit 0) on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporters import ExportOptions, export_model
from qwthn_onnx.runtime.session import QWTHNSession
from qwthn_onnx.runtime.signature import past_names
from serving.testing import ServerProcess, parse_sse
from tests.exporters.conftest import make_model_pt

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR_NAME = "tiny-llama"  # the single-export server's model name
MAX_TOKENS = 200  # the --max-tokens of ``server``


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serving_export")
    path, _ = make_model_pt(root / "model.pt", "llama")
    return export_model(path, root / MODEL_DIR_NAME, ExportOptions(verify=False)).directory


@pytest.fixture(scope="session")
def repository_dir(export_dir, tmp_path_factory) -> Path:
    """``<repo>/tiny/1`` (a symlink to the export) and ``<repo>/tiny/2`` (the same model
    exported with --no-qasm: a copy with qasm/ deleted would not match its manifest)."""
    repo = tmp_path_factory.mktemp("model_repository")
    (repo / "tiny").mkdir()
    (repo / "tiny" / "1").symlink_to(export_dir, target_is_directory=True)
    options = ExportOptions(verify=False, qasm=False)
    export_model(export_dir.parent / "model.pt", repo / "tiny" / "2", options)
    return repo


@pytest.fixture(scope="session")
def servers(export_dir, repository_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("server_logs")
    common = ["--threads", "1", "--max-body-mb", "1"]
    started = {
        "server": ServerProcess(
            [
                str(repository_dir),
                *common,
                *("--max-batch-size", "8", "--max-queue-delay-ms", "20"),
                *("--max-tokens", str(MAX_TOKENS), "--max-concurrent-generations", "4"),
            ],
            logs / "server.log",
        ),
        "unbatched": ServerProcess(
            [str(export_dir), *common, "--no-batching"], logs / "unbatched.log"
        ),
    }
    try:
        for s in started.values():
            s.wait_ready()
        yield started
    finally:
        codes = {name: s.stop() for name, s in started.items()}
    for name, s in started.items():
        assert codes[name] == 0, f"{name} did not stop gracefully:\n{s.log()}"
        assert "Application shutdown complete" in s.log()


@pytest.fixture(scope="session")
def server(servers) -> ServerProcess:
    return servers["server"]


@pytest.fixture(scope="session")
def unbatched(servers) -> ServerProcess:
    return servers["unbatched"]


@pytest.fixture(scope="session")
def reference(export_dir) -> QWTHNSession:
    """The same export in this process: what the server must answer."""
    return QWTHNSession(export_dir, threads=1)


def full_feed(session: QWTHNSession, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Every input of a prefill of ``ids`` [batch, seq], as the server fills them."""
    batch, seq = ids.shape
    cache = session.metadata.cache
    feed = {
        "input_ids": ids.astype(np.int64),
        "attention_mask": np.ones((batch, seq), np.int64),
        "position_ids": np.tile(np.arange(seq, dtype=np.int64), (batch, 1)),
    }
    for layer in range(cache["num_layers"]):
        for name in past_names(layer):
            feed[name] = np.zeros((batch, cache["num_kv_heads"], 0, cache["head_dim"]), np.float32)
    return feed


def ids_input(ids: np.ndarray) -> dict:
    """The ``$request_input`` of token ids, as the specification writes it."""
    return {
        "name": "input_ids",
        "shape": list(ids.shape),
        "datatype": "INT64",
        "data": ids.ravel().tolist(),
    }


def output_array(response: dict, name: str) -> np.ndarray:
    (output,) = [o for o in response["outputs"] if o["name"] == name]
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


@dataclass
class Streamed:
    """A ``generate_stream`` answer, its events checked for form."""

    tokens: list[dict]  # {"token_id", "text", "index"}, index 0, 1, ...
    final: dict | None  # the last event before [DONE]: the generate answer
    error: str | None  # the message of an ``event: error``, which ends a stream instead

    @property
    def text(self) -> str:
        return "".join(t["text"] for t in self.tokens)


def parse_stream(lines: Iterable[str]) -> Streamed:
    """The events of a server-sent event stream (its lines, without line ends)."""
    events, complete = parse_sse(lines)
    assert complete, "the stream ended inside an event"
    if events and events[-1][0] == "error":
        return Streamed(_tokens(events[:-1]), None, json.loads(events[-1][1])["error"])
    assert events[-1] == ("message", "[DONE]"), events[-3:]
    assert events[-2][0] == "message"
    return Streamed(_tokens(events[:-2]), json.loads(events[-2][1]), None)


def _tokens(events: list[tuple[str, str]]) -> list[dict]:
    tokens = [json.loads(data) for _, data in events]
    assert all(kind == "message" for kind, _ in events)
    assert all(list(t) == ["token_id", "text", "index"] for t in tokens)
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    return tokens


async def finishing_order(
    url: str, model: str, long: dict, short: dict, longs: int
) -> list[tuple[str, dict]]:
    """``longs`` streams of ``long`` and, once each has its first token, one ``short`` generate
    request to model ``model``: who finished in which order ("long 1", ..., "short"), with
    their answers."""
    finished: list[tuple[str, dict]] = []
    first_tokens = asyncio.Semaphore(0)
    async with httpx.AsyncClient(base_url=f"{url}/v2/models/{model}", timeout=60) as client:

        async def run_long(name: str) -> None:
            async with client.stream("POST", "/generate_stream", json=long) as r:
                lines = []
                async for line in r.aiter_lines():
                    if not lines:
                        first_tokens.release()
                    lines.append(line)
            finished.append((name, parse_stream(lines).final))

        async def run_short() -> None:
            for _ in range(longs):
                await first_tokens.acquire()
            r = await client.post("/generate", json=short)
            finished.append(("short", r.json()))

        await asyncio.gather(*(run_long(f"long {i + 1}") for i in range(longs)), run_short())
    return finished


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """One sample of the server's ``/metrics`` (0 when absent, as for a count not yet made)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def wait_idle(client: httpx.Client, timeout: float = 5.0, **labels: str) -> float:
    """Seconds until no generation of a model version (``labels``) is in flight; fails after
    ``timeout``."""
    start = time.monotonic()
    while metric(client, "qwthn_generation_requests_in_flight", **labels) != 0:
        assert time.monotonic() - start < timeout, "generations still in flight"
        time.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def repository(export_dir):
    """The export loaded in-process, for tests that build the app themselves."""
    from serving import ModelRepository

    return ModelRepository.load(export_dir, threads=1)


@pytest.fixture
def model(repository):
    return next(iter(repository))
