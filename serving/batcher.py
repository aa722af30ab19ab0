"""Batching in the public worker: concurrent requests share one call of the champion's engine.

While one call runs (in a thread), requests that arrive wait together and go in the next
call, up to ``max_images`` images: no waiting window, so a request alone runs at once, and
under load the batches grow by themselves. A request that waited longer than
``max_wait_ms`` for its call is shed (:class:`Shed`, answered 503) instead of run late.
Each call takes the engine current when it starts, so every answer comes from one model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import anyio
import numpy as np


class Shed(Exception):
    """The request waited past the latency budget."""


class LocalBatcher:
    def __init__(self, max_images: int, max_wait_ms: float) -> None:
        self.max_images = max_images
        self.max_wait_s = max_wait_ms / 1000
        self._waiting: list[tuple[np.ndarray, asyncio.Future, float]] = []
        self._running = False

    async def __call__(self, run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray):
        """``run(images)`` on ``batch`` together with whatever else is waiting."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((batch, future, time.monotonic()))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain(run))
        return await future

    async def _drain(self, run) -> None:
        try:
            while self._waiting:
                taken = self._take()
                if not taken:
                    continue
                images = np.concatenate([batch for batch, _, _ in taken])
                try:
                    rows = await anyio.to_thread.run_sync(run, images)
                except Exception as exc:  # every waiter learns of it
                    for _, future, _ in taken:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for batch, future, _ in taken:
                    if not future.done():
                        future.set_result(rows[start : start + len(batch)])
                    start += len(batch)
        finally:
            self._running = False

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future, float]]:
        """The next call's requests (at least one, however large); late ones shed."""
        now = time.monotonic()
        taken, images = [], 0
        while self._waiting:
            batch, future, since = self._waiting[0]
            if future.done():  # the client went away
                self._waiting.pop(0)
                continue
            if now - since > self.max_wait_s:
                self._waiting.pop(0)
                future.set_exception(Shed(f"waited over {self.max_wait_s * 1000:.0f} ms"))
                continue
            if taken and images + len(batch) > self.max_images:
                break
            taken.append(self._waiting.pop(0))
            images += len(batch)
        return taken
