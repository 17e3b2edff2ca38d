"""Graceful shutdown under load: SIGTERM while requests are in flight (our streams and
generations, and an OpenAI-compatible stream) lets every one of them finish with its full
answer, refuses new connections, and exits 0."""

import signal
import threading

import httpx
import numpy as np
import openai

from serving.testing import ServerProcess
from tests.serving.conftest import parse_stream

LONG = {"prompt": "", "max_new_tokens": 127}  # runs to the end of the 128-token context


def test_sigterm_lets_in_flight_requests_finish(export_dir, tmp_path):
    server = ServerProcess([str(export_dir), "--threads", "1"], tmp_path / "server.log")
    path = f"{server.url}/v2/models/{export_dir.name}"
    answers: dict[str, object] = {}
    streaming = threading.Event()
    openai_streaming = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", path + "/generate_stream", json=LONG, timeout=60) as r:
            lines = []
            for line in r.iter_lines():
                lines.append(line)
                streaming.set()
            answers["stream"] = parse_stream(lines)

    def generate() -> None:
        answers["generate"] = httpx.post(path + "/generate", json=LONG, timeout=60)

    def openai_stream() -> None:
        client = openai.OpenAI(
            base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60
        )
        stream = client.completions.create(
            model=export_dir.name,
            prompt="",
            max_tokens=127,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = []
        for chunk in stream:
            chunks.append(chunk)
            openai_streaming.set()
        answers["openai"] = chunks

    def infer() -> None:
        ids = np.arange(1, 65).reshape(1, 64)
        body = {"inputs": [{"name": "input_ids", "shape": [1, 64], "datatype": "INT64",
                            "data": ids.ravel().tolist()}]}  # fmt: skip
        try:
            answers["infer"] = httpx.post(path + "/infer", json=body, timeout=60)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            # refused: no listener any more, or (on a loaded machine) a connection the kernel
            # queued before the listener closed, reset without any answer
            answers["infer"] = "refused"

    try:
        server.wait_ready()
        clients = [threading.Thread(target=f) for f in (stream, generate, openai_stream)]
        for t in clients:
            t.start()
        assert streaming.wait(30) and openai_streaming.wait(30), server.log()
        server.process.send_signal(signal.SIGTERM)
        infer()  # sent after the signal: refused (no new connections), or answered in full
        for t in clients:
            t.join(60)
        code = server.process.wait(60)
    finally:
        server.stop()
    assert code == 0, server.log()
    streamed = answers["stream"]
    assert streamed.error is None and streamed.final["completion_tokens"] == 127
    assert len(streamed.tokens) == 127
    generated = answers["generate"]
    assert generated.status_code == 200 and generated.json()["completion_tokens"] == 127
    *pieces, usage = answers["openai"]
    assert usage.usage.completion_tokens == 127
    assert pieces[-1].choices[0].finish_reason == "length"
    assert sum(1 for c in pieces if c.choices[0].text) == 127
    assert "Application shutdown complete" in server.log()
    late = answers["infer"]
    assert late == "refused" or (late.status_code == 200 and len(late.json()["outputs"]) > 1)
