"""Bearer-token authentication for every API request.

With an API key set, every request needs ``Authorization: Bearer KEY``, except the ones a
browser or a load balancer makes before it can know the key: the chat page itself (``/``
and ``/static/...``, which hold no data; the page asks for the key and sends it on its API
calls) and ``/health`` (which tells only whether the server is up and how busy it is).
The comparison takes constant time.
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
