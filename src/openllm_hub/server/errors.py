"""Errors as OpenAI's API reports them: ``{"error": {"message", "type", "param", "code"}}``.

Every failure the server answers with, from a bad bearer token to an exception inside a
generation, goes through :class:`APIError` so clients written for OpenAI (the official
``openai`` package raises the matching exception class) understand it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from openllm_hub.errors import InvalidParameterError, ModelClosedError, NotFoundError, OpenLLMHubError

logger = logging.getLogger("openllm_hub.server")


class APIError(Exception):
    """An HTTP error with an OpenAI-shaped JSON body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid_request(message: str, *, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def from_exception(exc: BaseException) -> APIError:
    """Map an SDK error (or any exception) raised by a generation to the error a client sees."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidParameterError | NotFoundError):
        return APIError(400, exc.render(), param=exc.where, code="invalid_value")
    if isinstance(exc, ModelClosedError):
        return APIError(503, exc.render(), type="server_error", code="model_closed")
    if isinstance(exc, OpenLLMHubError):
        return APIError(500, exc.render(), type="server_error", code="model_error")
    logger.error("generation failed", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error", code="internal_error")
