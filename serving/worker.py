"""What every serving worker process needs, whatever it serves (Refit's services and
``bench/ceiling.py`` import it): no pauses from Python's garbage collector.

Importing this module installs :class:`RequestTimeout` in place of BentoML's
``TimeoutMiddleware``; a worker calls :func:`settle` once it has loaded.
"""

from __future__ import annotations

import asyncio
import gc

from bentoml._internal.server.http import traffic as bentoml_traffic
from fastapi.responses import JSONResponse


class RequestTimeout:
    """504 for a request not answered within ``timeout`` seconds (once its answer starts,
    the body may take as long as it needs), as BentoML's ``TimeoutMiddleware`` does, but
    with a timer that ends with the request. BentoML 1.4's never cancels its timer, so
    every request's timer, and through it the request's context and trace span, stays
    alive for the whole timeout: at 200 requests/s and 120 s, 24,000 of them for the
    garbage collector to walk, which paused every request for 0.2-0.4 s every few seconds.
    Installed in BentoML's place on import (its servers look the class up when they start)."""

    def __init__(self, app, timeout: float) -> None:
        self.app = app
        self.seconds = timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        deadline = asyncio.timeout(self.seconds)

        async def answering(message):
            if deadline.when() is not None:  # answering: the body may take its time
                deadline.reschedule(None)
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, answering)
        except TimeoutError:
            if not deadline.expired():  # the app's own, not this deadline's
                raise
            late = f"the request was not answered within {self.seconds:.0f} s"
            await JSONResponse({"error": late}, status_code=504)(scope, receive, send)


def settle() -> None:
    """Collect once, then exempt everything alive (the libraries, the loaded champion) from
    future collections: a full collection then walks only what requests create, instead of
    the worker's few hundred thousand objects (0.1-0.3 s, every request paused)."""
    gc.collect()
    gc.freeze()


bentoml_traffic.TimeoutMiddleware = RequestTimeout
