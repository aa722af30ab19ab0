"""The public service's body guard: the token and the limits are checked before a body is
taken in, and a body over its limit gets 413 however it is sent."""

from __future__ import annotations

import asyncio

import pytest


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("REFIT_SERVING__ADMIN_TOKEN", "secret")
    monkeypatch.setenv("REFIT_SERVING__MAX_UPLOAD_BYTES", "1000")
    from core.settings import get_settings

    get_settings.cache_clear()
    from serving.service import BodyLimit

    async def app(scope, receive, send):  # reads the whole body, answers 400 if it breaks
        try:
            while (await receive()).get("more_body"):
                pass
        except Exception:
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b"error parsing the body"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return BodyLimit(app)


def call(guard, path: str, chunks: list[bytes], headers: dict[str, str] | None = None):
    """(status, number of body chunks the server read)."""
    read, sent = [0], []
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }

    async def receive():
        read[0] += 1
        index = read[0] - 1
        return {"type": "http.request", "body": chunks[index], "more_body": index < len(chunks) - 1}

    async def send(message):
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], read[0]


def test_an_upload_without_the_token_is_refused_before_its_body_is_read(guard) -> None:
    status, read = call(guard, "/retrain/batch", [b"x" * 500] * 10)
    assert (status, read) == (401, 0)
    status, read = call(guard, "/retrain/batch", [b"x" * 5], {"Authorization": "Bearer nope"})
    assert (status, read) == (401, 0)
    status, _ = call(guard, "/retrain/batch", [b"x" * 5], {"Authorization": "Bearer secret"})
    assert status == 200


def test_a_chunked_body_over_the_limit_is_413_not_a_parse_error(guard) -> None:
    status, read = call(guard, "/predict", [b"x" * 400] * 10)  # no Content-Length
    assert status == 413 and read == 3  # stopped at the chunk that crossed 1,000 bytes
    assert call(guard, "/predict", [b"x" * 400, b"x" * 400])[0] == 200
    declared = call(guard, "/predict", [b"x"], {"Content-Length": "5000"})
    assert declared == (413, 0)
