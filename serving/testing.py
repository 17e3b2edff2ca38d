"""A real ``qwthn-serve`` process for tests and benchmarks: started on a free loopback port,
waited for until ready, read from ``/proc`` while it runs, stopped with SIGTERM.

Tests and benchmarks exercise the server the way it is deployed (its own process, its own
event loop, the real signal handling), not an app object in the client's process; this module
is the one place that knows how.

    with ServerProcess([str(export_dir), "--threads", "1"], tmp / "server.log") as server:
        httpx.get(server.url + "/v2/health/ready")
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

__all__ = ["ProcessResources", "ServerProcess", "ServerProcessError", "free_port", "parse_sse"]

_ROOT = Path(__file__).resolve().parents[1]  # the source tree, where ``-m serving`` resolves


class ServerProcessError(RuntimeError):
    """The server process exited early, never became ready, or did not stop when asked."""


def parse_sse(lines: Iterable[str]) -> tuple[list[tuple[str, str]], bool]:
    """The (event, data) of each server-sent event in ``lines`` (without line ends), and
    whether the stream ended between events (when cut inside one, that one comes last)."""
    events: list[tuple[str, str]] = []
    kind, data = "message", []
    for line in lines:
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))
        elif not line and data:
            events.append((kind, "\n".join(data)))
            kind, data = "message", []
    if data:
        events.append((kind, "\n".join(data)))
    return events, not data


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ProcessResources:
    """What a process holds at one moment: resident memory, threads, open file descriptors
    (sockets included)."""

    rss_bytes: int
    threads: int
    fds: int


class ServerProcess:
    """``python -m serving ARGS --port P`` in a subprocess, its output in ``log_path``.

    ``OMP_NUM_THREADS=1``: on a small machine the server's OpenMP pool and the client's would
    otherwise oversubscribe the cores.
    """

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "serving", *args, "--port", str(self.port)]
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            self.command, cwd=_ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        """Everything the server wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Return once ``/v2/health/ready`` answers 200; ServerProcessError with the log's end
        when the process exits first or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerProcessError(
                    f"server exited with {self.process.returncode} before it was ready:\n"
                    f"{self.log_tail()}"
                )
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise ServerProcessError(f"server not ready after {timeout:g} s:\n{self.log_tail()}")

    def resources(self) -> ProcessResources:
        """RSS, thread count and open file descriptors, read from ``/proc/PID`` (Linux)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss_kib = int(fields["VmRSS"].split()[0])
        return ProcessResources(
            rss_bytes=rss_kib * 1024,
            threads=int(fields["Threads"]),
            fds=len(os.listdir(f"/proc/{self.pid}/fd")),
        )

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as an orchestrator would, and wait: the exit status (0 after a graceful
        shutdown). A server still running after ``timeout`` s is killed and
        ServerProcessError raised."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise ServerProcessError(
                    f"server did not stop within {timeout:g} s of SIGTERM; killed:\n"
                    f"{self.log_tail()}"
                ) from None
        finally:
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
