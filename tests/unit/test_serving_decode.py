"""Serving's decode of uploads: where it runs and what it refuses."""

from __future__ import annotations

import asyncio
import io

import anyio
import numpy as np
import pytest
from PIL import Image

from pipelines.images.decode import BadImage


def test_small_uploads_decode_on_the_event_loop_and_large_ones_in_a_thread(monkeypatch) -> None:
    """A 32x32 JPEG costs less to decode than a thread hop; a large image must not stall
    the loop; a bomb or a corrupt file is refused by name either way."""
    from serving import service

    def jpeg(side: int) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (side, side), (200, 30, 30)).save(out, "JPEG")
        return out.getvalue()

    hops = []
    real = anyio.to_thread.run_sync

    async def counted(*args, **kwargs):
        hops.append(args[0])
        return await real(*args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    small = asyncio.run(service._decode([("a.jpg", jpeg(32))], (32, 32)))
    assert small.shape == (1, 32, 32, 3) and small[0, 0, 0, 0] > 150 and hops == []
    large = asyncio.run(service._decode([("b.jpg", jpeg(512))], (32, 32)))
    assert large.shape == (1, 32, 32, 3) and len(hops) == 1
    several = [(f"{i}.jpg", jpeg(32)) for i in range(5)]  # 5,120 pixels: over the bound
    assert asyncio.run(service._decode(several, (32, 32))).shape == (5, 32, 32, 3)
    assert len(hops) == 2
    with pytest.raises(BadImage, match=r"cut\.jpg: truncated or corrupt"):
        asyncio.run(service._decode([("cut.jpg", jpeg(32)[:200])], (32, 32)))
    with pytest.raises(BadImage, match=r"bomb\.png: .*decompression bomb guard"):
        bomb = io.BytesIO()
        Image.new("L", (9000, 9000)).save(bomb, "PNG")
        asyncio.run(service._decode([("bomb.png", bomb.getvalue())], (32, 32)))
    assert len(hops) == 2 and np.isfinite(small).all()
