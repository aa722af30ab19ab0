"""Who may act: the admin token every privileged route needs (``Authorization: Bearer
<token>``), compared in constant time, and the one error shape the routes answer with."""

from __future__ import annotations

import hmac

from fastapi.responses import JSONResponse

from core.settings import get_settings

UNAUTHORIZED = "missing or wrong token (Authorization: Bearer <token>)"


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def authorized(header: str | None) -> bool:
    """Whether ``header`` carries the admin token (compared in constant time)."""
    token = get_settings().admin_token()
    if not token or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header.removeprefix("Bearer ").strip(), token)
