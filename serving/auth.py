"""Who may act: the admin token every privileged route needs (``Authorization: Bearer
<token>``), compared in constant time, the session a person signs in for once, and the one
error shape the routes answer with.

A session is a cookie (``refit_session``: HttpOnly, SameSite=Strict, expiring after
``serving.session_hours``) holding its expiry signed with the admin token (HMAC-SHA256), so
changing the token ends every session. :class:`Sessions` lets a request with a valid session
through as if it carried the token, and refuses a state-changing request whose ``Origin``
is another site's (403) before anything runs: with SameSite=Strict a browser does not send
the cookie cross-site at all, and this is the second lock.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from http.cookies import SimpleCookie

from fastapi.responses import JSONResponse

from core.settings import get_settings

UNAUTHORIZED = "missing or wrong token (Authorization: Bearer <token>)"
SESSION = "refit_session"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def authorized(header: str | None) -> bool:
    """Whether ``header`` carries the admin token (compared in constant time)."""
    token = get_settings().admin_token()
    if not token or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header.removeprefix("Bearer ").strip(), token)


def _sign(token: str, expires: int) -> str:
    return hmac.new(token.encode(), f"refit-session:{expires}".encode(), hashlib.sha256).hexdigest()


def new_session(hours: float, now: float | None = None) -> str:
    """A session cookie value that expires ``hours`` from ``now``."""
    token = get_settings().admin_token() or ""
    expires = int((time.time() if now is None else now) + hours * 3600)
    return f"{expires}.{_sign(token, expires)}"


def session_valid(value: str | None, now: float | None = None) -> bool:
    """Whether a session cookie value is signed with the current token and not expired."""
    token = get_settings().admin_token()
    if not token or not value:
        return False
    expires, _, signature = value.partition(".")
    if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(signature, _sign(token, int(expires)))


def _cookie(headers: dict[bytes, bytes]) -> str | None:
    jar = SimpleCookie()
    try:
        jar.load(headers.get(b"cookie", b"").decode("latin-1"))
    except Exception:  # a malformed Cookie header: no session
        return None
    morsel = jar.get(SESSION)
    return morsel.value if morsel else None


def _cross_site(headers: dict[bytes, bytes]) -> bool:
    """An ``Origin`` that is not this server's own (as the browser addressed it, or as a
    proxy in front says it was addressed)."""
    origin = headers.get(b"origin", b"").decode("latin-1")
    if not origin:  # browsers send it with every POST; a script without one is no browser
        return False
    host = headers.get(b"x-forwarded-host") or headers.get(b"host", b"")
    return origin.split("://", 1)[-1] != host.decode("latin-1").split(",")[0].strip()


class Sessions:
    """ASGI middleware: a request with a valid session and no Authorization header goes on
    carrying the token; a state-changing one from another origin is refused (403)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        if b"authorization" not in headers and session_valid(_cookie(headers)):
            if scope["method"] not in SAFE_METHODS and _cross_site(headers):
                refused = error(403, "cross-site request refused: use Refit's own pages")
                return await refused(scope, receive, send)
            token = get_settings().admin_token()
            extra = [(b"authorization", f"Bearer {token}".encode("latin-1"))]
            scope = {**scope, "headers": [*scope["headers"], *extra]}
        return await self.app(scope, receive, send)


class MetricsGuard:
    """ASGI middleware for the whole server: ``/metrics`` needs the token or a session
    unless ``serving.metrics_public``."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        metrics = scope["type"] == "http" and scope["path"].rstrip("/") == "/metrics"
        if metrics and not get_settings().serving.metrics_public:
            headers = dict(scope.get("headers", []))
            header = headers.get(b"authorization", b"").decode("latin-1") or None
            if not (authorized(header) or session_valid(_cookie(headers))):
                return await error(401, UNAUTHORIZED)(scope, receive, send)
        return await self.app(scope, receive, send)
