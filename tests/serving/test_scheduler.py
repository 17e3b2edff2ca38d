"""The GenerationScheduler on its own, with stand-in jobs and a decode that records the order it
gave them tokens in."""

import threading
import time

import pytest

from serving.errors import ServingError, UnavailableError
from serving.metrics import Metrics
from serving.scheduler import GenerationScheduler


class FakeJob:
    """A job of ``steps`` tokens; ``decode`` appends its name to ``log`` when it decodes it."""

    def __init__(self, log: list[str], name: str, steps: int, fails: bool = False) -> None:
        self.log = log
        self.name = name
        self.steps = steps
        self.fails = fails
        self.cancelled = False
        self.tokens: list[int] = []
        self.error: ServingError | None = None

    @property
    def sequence(self) -> "FakeJob":
        return self

    def accept(self, token: int) -> bool:
        self.tokens.append(token)
        self.steps -= 1
        return self.steps == 0

    def fail(self, error: ServingError) -> None:
        self.error = error


class GateJob(FakeJob):
    """One token whose decoding blocks until released: what is submitted meanwhile joins the
    next round together, which makes the order of the rounds deterministic."""

    def __init__(self, log: list[str]) -> None:
        super().__init__(log, "gate", 1)
        self.entered = threading.Event()
        self.release = threading.Event()


def decode(sequences: list[FakeJob]) -> list[int | Exception]:
    """Tokens for one round (each job's count of tokens so far), as BatchDecoder.step gives
    them: a failing job gets its exception, the others their token."""
    out: list[int | Exception] = []
    for job in sequences:
        job.log.append(job.name)
        if isinstance(job, GateJob):
            job.entered.set()
            assert job.release.wait(10)
        out.append(RuntimeError("onnxruntime exploded") if job.fails else len(job.tokens))
    return out


@pytest.fixture
def metrics():
    return Metrics()


def _in_flight(metrics: Metrics) -> float | None:
    labels = {"model": "m", "version": "1"}
    return metrics.registry.get_sample_value("qwthn_generation_requests_in_flight", labels)


def _scheduler(metrics: Metrics, max_active: int = 8) -> GenerationScheduler:
    in_flight = metrics.generation("m", "1").in_flight
    return GenerationScheduler(
        name="model 'm' version 1", decode=decode, max_active=max_active, in_flight=in_flight
    )


def _run(log: list[str], jobs: list[FakeJob], metrics: Metrics, max_active: int = 8) -> list[str]:
    """Submit ``jobs`` while a gate holds the worker, then stop; the order the steps ran in."""
    gate = GateJob(log)
    scheduler = _scheduler(metrics, max_active)
    scheduler.start()
    scheduler.submit(gate)
    assert gate.entered.wait(10)
    for job in jobs:
        scheduler.submit(job)
    assert _in_flight(metrics) == len(jobs) + 1
    gate.release.set()
    scheduler.stop(timeout=10)
    assert log[0] == "gate"
    assert _in_flight(metrics) == 0
    return log[1:]


def test_active_jobs_take_turns_a_token_each(metrics):
    log: list[str] = []
    jobs = [FakeJob(log, "long", 4), FakeJob(log, "short", 1), FakeJob(log, "mid", 2)]
    # The short job is done after the first round, not after the long one.
    assert _run(log, jobs, metrics) == ["long", "short", "mid", "long", "mid", "long", "long"]
    assert [job.tokens for job in jobs] == [[0, 1, 2, 3], [0], [0, 1]]


def test_at_most_max_active_generate_and_the_rest_wait_in_order(metrics):
    log: list[str] = []
    jobs = [FakeJob(log, "a", 2), FakeJob(log, "b", 3), FakeJob(log, "c", 1), FakeJob(log, "d", 1)]
    # c joins once a is done, d once b and c are: arrival order, never more than two at once.
    assert _run(log, jobs, metrics, max_active=2) == ["a", "b", "a", "b", "b", "c", "d"]


def test_a_cancelled_job_is_dropped_unstepped(metrics):
    log: list[str] = []
    long, queued = FakeJob(log, "long", 3), FakeJob(log, "queued", 1)
    queued.cancelled = True
    assert _run(log, [long, queued], metrics) == ["long"] * 3
    assert queued.error is None


def test_a_failing_job_fails_alone(metrics):
    log: list[str] = []
    bad, good = FakeJob(log, "bad", 2, fails=True), FakeJob(log, "good", 2)
    assert _run(log, [bad, good], metrics) == ["bad", "good", "good"]
    assert bad.error is not None and bad.error.status == 500
    assert "generation failed: RuntimeError: onnxruntime exploded" in bad.error.message
    assert good.error is None


def test_submit_before_start_or_after_stop_is_refused(metrics):
    scheduler = _scheduler(metrics, max_active=1)
    with pytest.raises(UnavailableError, match="not accepting requests"):
        scheduler.submit(FakeJob([], "x", 1))
    scheduler.start()
    assert scheduler.running
    scheduler.stop(timeout=10)
    assert not scheduler.running
    with pytest.raises(UnavailableError):
        scheduler.submit(FakeJob([], "x", 1))
    assert _in_flight(metrics) == 0
    with pytest.raises(ValueError, match="max_active"):
        _scheduler(metrics, max_active=0)


def test_a_decode_that_raises_fails_its_round_and_the_scheduler_goes_on(metrics):
    broken = {"on": True}

    def flaky_decode(sequences):
        if broken.pop("on", False):
            raise RuntimeError("decoder bug")
        return decode(sequences)

    scheduler = GenerationScheduler(
        name="m",
        decode=flaky_decode,
        max_active=4,
        in_flight=metrics.generation("m", "1").in_flight,
    )
    scheduler.start()
    first, later = FakeJob([], "first", 2), FakeJob([], "later", 2)
    scheduler.submit(first)
    deadline = time.monotonic() + 10
    while first.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    scheduler.submit(later)
    scheduler.stop(timeout=10)
    assert first.error is not None and "RuntimeError: decoder bug" in first.error.message
    assert later.error is None and later.tokens == [0, 1]
    assert _in_flight(metrics) == 0
