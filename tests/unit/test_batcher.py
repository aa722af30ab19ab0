"""The public worker's batcher: a request alone runs at once; requests that arrive while a
call runs go together in the next one, each answered with its own rows; calls stay within
the image cap; a request that waited past the budget is shed; a failed call fails its
requests only."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from serving.batcher import LocalBatcher, Shed


class Engine:
    """Rows = the images' first pixel, so each request can check it got its own; calls can
    be held open to let others queue behind."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(len(images))
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("engine broke")
        return images[:, 0, 0, :1].astype(np.float32)


def images(value: int, n: int = 1) -> np.ndarray:
    return np.full((n, 2, 2, 3), value, np.uint8)


def test_alone_at_once_then_the_queue_goes_together() -> None:
    engine, batcher = Engine(), LocalBatcher(max_images=64, max_wait_ms=5000)

    async def run():
        alone = await batcher(engine, images(7))
        engine.gate.clear()  # hold the next call open: the others queue behind it
        first = asyncio.create_task(batcher(engine, images(1)))
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(batcher(engine, images(v, 2))) for v in (2, 3, 4)]
        await asyncio.sleep(0.05)
        engine.gate.set()
        return alone, await first, await asyncio.gather(*queued)

    alone, first, queued = asyncio.run(run())
    assert engine.calls == [1, 1, 6]  # alone, the held call, then the three together
    assert alone.ravel().tolist() == [7] and first.ravel().tolist() == [1]
    assert [rows.ravel().tolist() for rows in queued] == [[2, 2], [3, 3], [4, 4]]


def test_calls_stay_within_the_image_cap_but_a_large_request_still_runs() -> None:
    engine, batcher = Engine(), LocalBatcher(max_images=4, max_wait_ms=5000)

    async def run():
        engine.gate.clear()
        held = asyncio.create_task(batcher(engine, images(0)))
        await asyncio.sleep(0.05)
        tasks = [
            asyncio.create_task(batcher(engine, images(v, n))) for v, n in ((1, 3), (2, 2), (3, 9))
        ]
        await asyncio.sleep(0.05)
        engine.gate.set()
        await held
        return await asyncio.gather(*tasks)

    answers = asyncio.run(run())
    assert engine.calls == [1, 3, 2, 9]
    assert [len(rows) for rows in answers] == [3, 2, 9]


def test_a_request_that_waited_past_the_budget_is_shed_not_run() -> None:
    engine, batcher = Engine(), LocalBatcher(max_images=64, max_wait_ms=50)

    async def run():
        engine.gate.clear()
        held = asyncio.create_task(batcher(engine, images(0)))
        await asyncio.sleep(0.02)
        late = asyncio.create_task(batcher(engine, images(1)))
        await asyncio.sleep(0.2)  # the call stays open past the late request's budget
        engine.gate.set()
        await held
        with pytest.raises(Shed, match="waited over 50 ms"):
            await late

    asyncio.run(run())
    assert engine.calls == [1]


def test_a_failed_call_fails_its_requests_and_the_next_call_runs() -> None:
    engine, batcher = Engine(), LocalBatcher(max_images=64, max_wait_ms=5000)

    async def run():
        engine.fail = True
        with pytest.raises(RuntimeError, match="engine broke"):
            await batcher(engine, images(1))
        engine.fail = False
        return await batcher(engine, images(5))

    assert asyncio.run(run()).ravel().tolist() == [5]
