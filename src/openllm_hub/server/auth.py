"""Who may use the server: a bearer token on API requests, and a check of the Host header.

With an API key set, every request needs ``Authorization: Bearer KEY``, except the ones a
browser or a load balancer makes before it can know the key: the chat page itself (``/``
and ``/static/...``, which hold no data; the page asks for the key and sends it on its API
calls) and ``/health`` (which tells only whether the server is up and how busy it is).
The comparison takes constant time.

A server on loopback is also open to web pages the user visits, through DNS rebinding (a
hostile name that resolves to 127.0.0.1 makes the page "same-origin"). The page's requests
then carry the hostile name in ``Host``; :class:`HostCheckMiddleware` refuses every Host not
in an allow-list (``openllm-hub serve`` on loopback allows localhost, 127.0.0.1 and ::1).
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from openllm_hub.server.errors import APIError
from openllm_hub.server.responses import error_response

#: Paths served without the key (exact), and prefixes served without it.
OPEN_PATHS = frozenset({"/", "/health", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class BearerAuthMiddleware:
    """Reject requests without the right bearer token with OpenAI's 401."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
            err = APIError(401, "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            await error_response(err)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def host_name(header: bytes) -> str:
    """The name in a Host header, without the port (``[::1]:8000`` -> ``::1``)."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class HostCheckMiddleware:
    """Refuse requests whose Host header names none of ``allowed`` (DNS-rebinding defence)."""

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.allowed = frozenset(h.lower().strip("[]") for h in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = host_name(dict(scope["headers"]).get(b"host", b""))
            if host not in self.allowed:
                err = APIError(400, f"the Host header {host!r} is not one this server answers to",
                               code="invalid_host")
                await error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)
