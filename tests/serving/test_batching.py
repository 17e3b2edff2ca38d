"""The Batcher on its own, with a recording stand-in for onnxruntime."""

import asyncio
import threading
import time

import numpy as np
import pytest

from serving.batching import Batcher
from serving.errors import UnavailableError


class Recorder:
    """``run`` that doubles ``x`` and records the batch sizes it saw; can hold or fail."""

    def __init__(self, fail_when=None) -> None:
        self.batches: list[int] = []
        self.calls = 0  # counted on entry, before a hold
        self.fail_when = fail_when
        self.release = threading.Event()
        self.release.set()

    def __call__(self, feed, outputs):
        self.calls += 1
        self.release.wait(10)
        x = feed["x"]
        self.batches.append(x.shape[0])
        if self.fail_when is not None and self.fail_when(x):
            raise ValueError("bad row")
        return {"y": 2 * x, "z": x + 1}


def _batcher(run, **kwargs) -> Batcher:
    batcher = Batcher(run, name="test", **kwargs)
    batcher.start()
    return batcher


async def _submit_all(batcher, feeds, outputs=("y",)):
    return await asyncio.gather(
        *(batcher.submit({"x": x}, list(outputs)) for x in feeds), return_exceptions=True
    )


def test_concurrent_requests_merge_and_split_back():
    run = Recorder()
    batcher = _batcher(run, max_batch_size=8, max_queue_delay_s=0.2)
    feeds = [np.full((1, 3), i, np.float32) for i in range(8)]
    results = asyncio.run(_submit_all(batcher, feeds))
    batcher.stop()
    assert run.batches == [8]  # one run: the batch filled before the delay was over
    for x, result in zip(feeds, results, strict=True):
        np.testing.assert_array_equal(result["y"], 2 * x)
        assert list(result) == ["y"]


def test_without_a_queue_delay_requests_that_queue_during_a_run_merge():
    run = Recorder()
    batcher = _batcher(run, max_batch_size=8)  # max_queue_delay_s 0, the default

    async def scenario():
        alone = await batcher.submit({"x": np.ones((1, 3), np.float32)}, ["y"])
        run.release.clear()  # the next run holds while six more requests queue behind it
        first = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 3), np.float32)}, ["y"]))
        while run.calls < 2:  # the worker holds it
            await asyncio.sleep(0.001)
        feeds = [np.full((1, 3), i, np.float32) for i in range(6)]
        rest = asyncio.gather(*(batcher.submit({"x": x}, ["y"]) for x in feeds))
        await asyncio.sleep(0.05)
        run.release.set()
        return alone, await first, await rest, feeds

    alone, first, rest, feeds = asyncio.run(scenario())
    batcher.stop()
    np.testing.assert_array_equal(alone["y"], np.full((1, 3), 2, np.float32))
    assert run.batches == [1, 1, 6]  # alone; the held run; the six queued meanwhile, as one
    np.testing.assert_array_equal(first["y"], np.zeros((1, 3)))
    for x, result in zip(feeds, rest, strict=True):
        np.testing.assert_array_equal(result["y"], 2 * x)


def test_different_shapes_never_merge_and_rows_are_capped():
    run = Recorder()
    batcher = _batcher(run, max_batch_size=4, max_queue_delay_s=0.05)
    feeds = [np.ones((2, 3), np.float32)] * 3 + [np.ones((1, 5), np.float32)] * 2
    feeds += [np.ones((6, 3), np.float32)]  # over the cap: runs alone, never split
    results = asyncio.run(_submit_all(batcher, feeds))
    batcher.stop()
    assert sorted(run.batches) == [2, 2, 4, 6]
    assert all(r["y"].shape == x.shape for r, x in zip(results, feeds, strict=True))


def test_requests_for_different_outputs_merge():
    run = Recorder()
    batcher = _batcher(run, max_batch_size=2, max_queue_delay_s=0.5)
    x = np.ones((1, 2), np.float32)

    async def both():
        return await asyncio.gather(
            batcher.submit({"x": x}, ["y"]), batcher.submit({"x": 3 * x}, ["z"])
        )

    first, second = asyncio.run(both())
    batcher.stop()
    assert run.batches == [2]
    assert list(first) == ["y"] and list(second) == ["z"]
    np.testing.assert_array_equal(second["z"], 3 * x + 1)


def test_max_batch_size_one_runs_each_alone_without_waiting():
    run = Recorder()
    batcher = _batcher(run, max_batch_size=1, max_queue_delay_s=5.0)
    start = time.monotonic()
    asyncio.run(_submit_all(batcher, [np.ones((1, 2), np.float32)] * 5))
    batcher.stop()
    assert run.batches == [1] * 5
    assert time.monotonic() - start < 2.5  # the delay only applies when merging


def test_unmergeable_model_never_merges():
    run = Recorder()
    batcher = _batcher(run, max_batch_size=8, max_queue_delay_s=0.05, mergeable=False)
    asyncio.run(_submit_all(batcher, [np.ones((1, 2), np.float32)] * 4))
    batcher.stop()
    assert run.batches == [1] * 4


def test_a_failing_request_fails_alone():
    run = Recorder(fail_when=lambda x: (x < 0).any())
    batcher = _batcher(run, max_batch_size=8, max_queue_delay_s=0.2)
    feeds = [np.full((1, 2), v, np.float32) for v in (1, 2, -1, 3)]
    results = asyncio.run(_submit_all(batcher, feeds))
    batcher.stop()
    assert isinstance(results[2], ValueError)
    for i in (0, 1, 3):
        np.testing.assert_array_equal(results[i]["y"], 2 * feeds[i])
    assert run.batches[0] == 4 and run.batches[1:] == [1, 1, 1, 1]  # merged, then one by one


def test_an_abandoned_request_is_dropped_and_others_still_run():
    run = Recorder()
    run.release.clear()  # the first run blocks until released
    batcher = _batcher(run, max_batch_size=1, max_queue_delay_s=0)
    x = np.ones((1, 2), np.float32)

    async def scenario():
        first = asyncio.ensure_future(batcher.submit({"x": x}, ["y"]))
        await asyncio.sleep(0.1)  # the worker is inside run(), blocked
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.submit({"x": 2 * x}, ["y"]), 0.1)  # gives up queued
        run.release.set()
        await first
        return await batcher.submit({"x": 3 * x}, ["y"])

    third = asyncio.run(scenario())
    batcher.stop()
    np.testing.assert_array_equal(third["y"], 6 * x)
    assert run.batches == [1, 1]  # the abandoned request never ran


def test_stop_finishes_queued_requests_then_refuses():
    run = Recorder()
    stats = []
    batcher = _batcher(run, max_batch_size=2, max_queue_delay_s=0.01, observe=stats.append)

    async def scenario():
        pending = [
            asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2), np.float32)}, ["y"]))
            for _ in range(5)
        ]
        await asyncio.sleep(0)  # all queued
        await asyncio.to_thread(batcher.stop)
        return await asyncio.gather(*pending)

    assert len(asyncio.run(scenario())) == 5
    assert sum(s.requests for s in stats) == 5 and sum(run.batches) == 5
    assert not batcher.running
    with pytest.raises(UnavailableError):
        asyncio.run(batcher.submit({"x": np.ones((1, 2), np.float32)}, ["y"]))


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_queue_delay_s": -1}])
def test_invalid_settings(kwargs):
    with pytest.raises(ValueError):
        Batcher(Recorder(), name="x", **kwargs)
