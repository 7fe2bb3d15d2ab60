"""Sending one job's answer: whole as JSON, or streamed as server-sent events.

The response watches the connection while it waits: when the client disconnects (or a
streaming client stops reading and closes), the job is cancelled, so the worker stops
generating for nobody and the next request in the queue starts. Nothing is sent before the
job's first event, so a request that fails at its start still gets a proper HTTP error
status rather than a 200 stream holding an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable

from pydantic import BaseModel
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from openllm_hub.core.logprobs import TokenLogprob
from openllm_hub.core.model import Chunk
from openllm_hub.server.errors import APIError, from_exception
from openllm_hub.server.formats import ResponseFormat
from openllm_hub.server.scheduler import Event, Job

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
DONE = b"data: [DONE]\n\n"


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def sse(obj: BaseModel | dict[str, object]) -> bytes:
    data = obj.model_dump_json() if isinstance(obj, BaseModel) else json.dumps(obj, ensure_ascii=False)
    return b"data: " + data.encode("utf-8") + b"\n\n"


def _stopped_error() -> APIError:
    return APIError(503, "the generation was cancelled because the server is shutting down", type="server_error",
                    code="shutting_down")


class JobResponse(Response):
    """ASGI response that drives one admitted :class:`Job` to the client."""

    def __init__(self, job: Job, fmt: ResponseFormat, *, stream: bool, include_usage: bool = False) -> None:
        super().__init__(status_code=200)
        self.job = job
        self.fmt = fmt
        self.stream = stream
        self.include_usage = include_usage
        self.client_gone = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.create_task(self._watch(receive))
        try:
            if self.stream:
                await self._send_stream(scope, receive, send)
            else:
                await self._send_whole(scope, receive, send)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            self.job.cancel()  # no-op when it finished; stops it when we are cancelled or failed

    async def _watch(self, receive: Receive) -> None:
        """Cancel the job when the client disconnects (the body was already read)."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                self.job.cancel()
                return

    async def _events(self) -> list[Event]:
        """The events that arrived since the last look (sent in one write)."""
        return await self.job.next_events()

    async def _send_whole(self, scope: Scope, receive: Receive, send: Send) -> None:
        texts: list[str] = []
        scores: list[TokenLogprob] | None = None
        while True:
            for event in await self._events():
                if isinstance(event, Chunk):
                    texts.append(event.text)
                    if event.logprobs is not None:
                        scores = scores if scores is not None else []
                        scores.extend(event.logprobs)
                    if event.finish_reason is not None:
                        assert event.usage is not None
                        body = self.fmt.whole("".join(texts), event.finish_reason, event.usage,
                                              None if scores is None else tuple(scores))
                        await Response(body.model_dump_json(), media_type="application/json")(scope, receive, send)
                        return
                else:
                    if not self.client_gone:
                        err = _stopped_error() if event is None else from_exception(event)
                        await error_response(err)(scope, receive, send)
                    return

    async def _send_stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        events = await self._events()
        first = events[0]
        if not isinstance(first, Chunk):
            if not self.client_gone:
                err = _stopped_error() if first is None else from_exception(first)
                await error_response(err)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        out: list[bytes] = [sse(obj) for obj in self.fmt.opening()]
        while True:
            done = self._encode(events, out)
            await send({"type": "http.response.body", "body": b"".join(out), "more_body": not done})
            if done:
                return
            out = []
            events = await self._events()

    def _encode(self, events: Iterable[Event], out: list[bytes]) -> bool:
        """Append the SSE lines of ``events`` to ``out``; True when the stream is complete."""
        for event in events:
            if isinstance(event, Chunk):
                if event.text or event.logprobs:
                    out.append(sse(self.fmt.piece(event.text, event.logprobs)))
                if event.finish_reason is not None:
                    out.append(sse(self.fmt.closing(event.finish_reason)))
                    if self.include_usage and event.usage is not None:
                        out.append(sse(self.fmt.usage_chunk(event.usage)))
                    out.append(DONE)
                    return True
            else:
                # the headers are gone: report in the stream, as OpenAI does (the openai client raises it)
                err = _stopped_error() if event is None else from_exception(event)
                if not self.client_gone:
                    out.append(sse(err.body()))
                return True
        return False
