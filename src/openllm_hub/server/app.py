"""The FastAPI application: OpenAI's endpoints for one loaded model, plus the chat page.

``create_app(model)`` builds it; ``openllm-hub serve`` (see :mod:`openllm_hub.server.cli`)
runs it with uvicorn. Routes:

* ``GET /v1/models``, ``GET /v1/models/{id}``: the one model served, with its limits in ``meta``;
* ``POST /v1/completions`` and ``POST /v1/chat/completions``: whole or streamed (SSE,
  ending with ``data: [DONE]``), through the model's chat template, with logprobs on request;
* ``POST /v1/embeddings``: ``Model.embed`` (mean-pooled last hidden states) in OpenAI's shape;
  an engine that cannot embed answers 400;
* ``GET /health``: up/shutting down and the queue's state (no key needed);
* ``GET /metrics``: Prometheus metrics (see :mod:`openllm_hub.server.metrics`);
* ``GET /``: the chat page (static files, no key needed; the page asks for one).

The ``model`` field of a request is echoed, not checked: whatever name a client uses, the
answer comes from the served model and says which one it is.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openllm_hub import __version__
from openllm_hub.core.batch import PreparedStream
from openllm_hub.core.model import Chunk, Model
from openllm_hub.core.tool_calls import ToolCallStream
from openllm_hub.errors import InvalidParameterError, OpenLLMHubError
from openllm_hub.server.auth import BearerAuthMiddleware, HostCheckMiddleware
from openllm_hub.server.errors import APIError, from_exception, invalid_request
from openllm_hub.server.formats import ChatFormat, CompletionFormat, ResponseFormat
from openllm_hub.server.limits import BodySizeLimitMiddleware
from openllm_hub.server.metrics import CONTENT_TYPE, ServerMetrics
from openllm_hub.server.responses import JobResponse, error_response
from openllm_hub.server.scheduler import QueueFullError, Scheduler, ShuttingDownError
from openllm_hub.server.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingData,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    Health,
    ModelCard,
    ModelList,
)
from openllm_hub.server.translate import chat_params, completion_params

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_QUEUE_SIZE = 8
DEFAULT_MAX_TOKENS_LIMIT = 2048
DEFAULT_MAX_REQUEST_BYTES = 1_000_000
#: OpenAI's limit of texts per embeddings request.
MAX_EMBEDDING_INPUTS = 2048
#: The page loads nothing from elsewhere; the policy makes the browser enforce it.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass
class ServerState:
    model: Model
    model_id: str
    scheduler: Scheduler
    metrics: ServerMetrics
    max_tokens_limit: int
    shutdown_grace: float
    started: int = field(default_factory=lambda: int(time.time()))
    closing: bool = False


class SecurityHeadersMiddleware:
    """Adds a content security policy and ``nosniff`` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"content-security-policy", CSP.encode()),
                                      (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _positive(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise InvalidParameterError(f"{name} must be at least {minimum}, got {value}", where=f"create_app({name}=)")


def create_app(
    model: Model,
    *,
    api_key: str | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    model_id: str | None = None,
    shutdown_grace: float = 10.0,
    allowed_hosts: list[str] | None = None,
    parallel: int = 1,
) -> FastAPI:
    """An app serving ``model`` (which it does not close: its owner does).

    ``parallel`` requests run at once (slots of one batch, see
    :mod:`openllm_hub.server.scheduler`); ``queue_size`` more may wait; more get 429. ``max_tokens``
    above ``max_tokens_limit`` and bodies over ``max_request_bytes`` are refused. With
    ``api_key``, every API call needs ``Authorization: Bearer <api_key>``.
    ``shutdown_grace`` is how long shutdown lets a running generation finish. With
    ``allowed_hosts``, requests whose Host header names another host get 400 (a defence
    against DNS rebinding for servers on loopback).
    """
    _positive("queue_size", queue_size, 0)
    _positive("parallel", parallel)
    _positive("max_tokens_limit", max_tokens_limit)
    _positive("max_request_bytes", max_request_bytes)
    if api_key is not None and not api_key.strip():
        raise InvalidParameterError("the API key is empty", where="create_app(api_key=)",
                                    fix="pass a non-empty key, or None for no authentication")
    scheduler = Scheduler(model, queue_size, parallel=parallel)
    metrics = ServerMetrics(lambda: scheduler.stats().running, lambda: scheduler.stats().waiting, parallel,
                            model.prefix_cache_stats)
    scheduler.metrics = metrics
    state = ServerState(model=model, model_id=model_id or Path(model.info.path).name or model.info.family,
                        scheduler=scheduler, metrics=metrics, max_tokens_limit=max_tokens_limit,
                        shutdown_grace=shutdown_grace)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.closing = True
        state.scheduler.close(state.shutdown_grace)

    app = FastAPI(title="openllm-hub", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.server = state
    _add_error_handlers(app)
    _add_routes(app, state)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_request_bytes)
    if api_key is not None:
        app.add_middleware(BearerAuthMiddleware, api_key=api_key)
    if allowed_hosts is not None:
        app.add_middleware(HostCheckMiddleware, allowed=allowed_hosts)
    app.add_middleware(SecurityHeadersMiddleware)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> Response:
        return error_response(from_exception(exc))

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = []
        param = None
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            if err.get("type") == "json_invalid":
                problems.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
                continue
            if not loc and err.get("type") == "model_attributes_type":
                problems.append("the body must be a JSON object sent with Content-Type: application/json")
                continue
            where = ".".join(loc)
            param = param or where or None
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return error_response(APIError(400, "invalid request: " + "; ".join(problems), param=param,
                                       code="invalid_request"))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(APIError(exc.status_code, message, code=kind, headers=exc.headers))

    async def on_any(request: Request, exc: Exception) -> Response:
        return error_response(from_exception(exc))

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_any)


def _fit_slot(state: ServerState, start: Callable[[], Iterator[Chunk]], max_tokens_given: bool) -> PreparedStream:
    """The request's prompt and config, checked against what a slot holds. ``start()`` is
    the model's stream, which renders, tokenizes and checks the prompt but runs nothing
    (called off the event loop). A prompt plus ``max_tokens`` over a slot is refused (400)
    before the request takes a place; without an explicit ``max_tokens`` the answer is
    bounded by the room left."""
    try:
        stream = start()
    except OpenLLMHubError as exc:
        raise from_exception(exc) from None
    if not isinstance(stream, PreparedStream):
        raise APIError(500, f"the engine of this model ({type(state.model).__name__}) returns streams that do not "
                            "come from Model._stream_ids, so the server cannot schedule them",
                       type="server_error", code="engine_error")
    room = state.scheduler.slot_tokens
    prompt = len(stream.prompt_ids)
    wanted = stream.config.max_new_tokens
    if room is None or prompt + wanted <= room:
        return stream
    stream.close()
    if max_tokens_given:
        raise APIError(400, f"the prompt is {prompt} tokens and max_tokens is {wanted}: together more than the "
                            f"{room} tokens a request may hold on this server; lower max_tokens to at most "
                            f"{room - prompt} or shorten the prompt", param="max_tokens",
                       code="context_length_exceeded")
    config = stream.config.model_copy(update={"max_new_tokens": room - prompt})
    return state.model._stream_ids(stream.prompt_ids, config)  # type: ignore[return-value]


def _base64_floats(vector: list[float]) -> str:
    """OpenAI's ``encoding_format="base64"``: the vector as little-endian float32, base64-encoded
    (the official client asks for it by default and decodes it)."""
    import base64

    import numpy as np

    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _embed_error(exc: OpenLLMHubError, *, single: bool) -> APIError:
    """An error of ``Model.embed`` named by the request's field: ``texts[i]`` is ``input[i]``
    (``input`` when it is one string); an engine that cannot embed (``embed``) is ``model``."""
    if not isinstance(exc, InvalidParameterError) or exc.where is None:
        return from_exception(exc)
    where = exc.where
    if (m := re.fullmatch(r"texts\[(\d+)\]", where)) is not None:
        field = "input" if single else f"input[{m.group(1)}]"
    elif where in ("texts", "embed"):
        field = "input" if where == "texts" else "model"
    else:
        return from_exception(exc)
    what = exc.what.replace(where, field, 1) if exc.what.startswith(where) else exc.what
    return from_exception(InvalidParameterError(what, where=field, fix=exc.fix))


def _submit(state: ServerState, stream: PreparedStream, fmt: ResponseFormat, *, stream_response: bool,
            include_usage: bool) -> JobResponse:
    try:
        job = state.scheduler.submit(stream)
    except QueueFullError as exc:
        raise APIError(429, f"{exc}; retry in about {exc.retry_after} s", type="rate_limit_error",
                       code="queue_full", headers={"Retry-After": str(exc.retry_after)}) from None
    except ShuttingDownError as exc:
        raise APIError(503, str(exc), type="server_error", code="shutting_down") from None
    return JobResponse(job, fmt, stream=stream_response, include_usage=include_usage)


def _add_routes(app: FastAPI, state: ServerState) -> None:
    model = state.model

    def card() -> ModelCard:
        info = model.info
        defaults = model.generation_defaults
        return ModelCard(id=state.model_id, created=state.started, meta={
            "family": info.family, "format": info.format, "engine": info.engine, "device": info.device,
            "parameters": info.parameters, "context_length": info.context_length,
            "chat_template": model.default_chat_template, "max_tokens_limit": state.max_tokens_limit,
            "queue_capacity": state.scheduler.capacity, "parallel": state.scheduler.parallel,
            "batching": model.batching, "slot_tokens": state.scheduler.slot_tokens,
            "defaults": {"temperature": defaults.temperature, "top_p": defaults.top_p,
                         "top_k": defaults.top_k, "repeat_penalty": defaults.repeat_penalty},
        })

    @app.get("/health")
    async def health() -> Health:
        s = state.scheduler.stats()
        return Health(status="shutting_down" if state.closing else "ok", running=s.running, waiting=s.waiting,
                      capacity=s.capacity, completed=s.completed)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def list_models() -> ModelList:
        return ModelList(data=[card()])

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> ModelCard:
        if model_id != state.model_id:
            raise APIError(404, f"the model {model_id!r} does not exist; this server serves {state.model_id!r}",
                           param="model", code="model_not_found")
        return card()

    # A request is checked, its prompt rendered (a model's own Jinja template may take up to
    # chat_jinja.RENDER_SECONDS) and tokenized once, on a worker thread: the event loop keeps
    # serving the other slots' streams, /health and /metrics meanwhile.
    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest) -> Response:
        def prepare() -> tuple[PreparedStream, int]:
            prompt, params = completion_params(model, body, limit=state.max_tokens_limit)
            return _fit_slot(state, lambda: model.stream(prompt, **params), body.max_tokens is not None), len(prompt)

        stream, prompt_chars = await run_in_threadpool(prepare)
        return _submit(state, stream, CompletionFormat(state.model_id, prompt_chars), stream_response=bool(body.stream),
                       include_usage=bool(body.stream_options and body.stream_options.include_usage))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        def prepare() -> tuple[PreparedStream, ToolCallStream | None]:
            messages, template, params = chat_params(model, body, limit=state.max_tokens_limit)
            given = body.max_tokens is not None or body.max_completion_tokens is not None
            stream = _fit_slot(state, lambda: model.stream_chat(messages, template=template, **params), given)
            if "tools" not in params:
                return stream, None
            return stream, model.tool_call_reader(params["tools"], params["tool_choice"], template)

        stream, reader = await run_in_threadpool(prepare)
        return _submit(state, stream, ChatFormat(state.model_id, reader), stream_response=bool(body.stream),
                       include_usage=bool(body.stream_options and body.stream_options.include_usage))

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> EmbeddingList:
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise invalid_request("input is an empty list", param="input")
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise invalid_request(f"input has {len(texts)} texts; at most {MAX_EMBEDDING_INPUTS} per request",
                                  param="input")
        if body.dimensions is not None:
            raise APIError(400, "dimensions is not supported by this server: vectors have the model's width",
                           param="dimensions", code="unsupported_parameter")

        def run() -> tuple[list[list[float]], int]:
            vectors = model.embed(texts, normalize=body.normalize)
            return vectors, sum(len(model.tokenize(t)) for t in texts)

        try:
            vectors, tokens = await run_in_threadpool(run)
        except OpenLLMHubError as exc:
            raise _embed_error(exc, single=isinstance(body.input, str)) from None
        data = [EmbeddingData(index=i, embedding=v) for i, v in enumerate(vectors)]
        if body.encoding_format == "base64":
            data = [EmbeddingData(index=i, embedding=_base64_floats(v)) for i, v in enumerate(vectors)]
        return EmbeddingList(data=data, model=state.model_id,
                             usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "DEFAULT_MAX_TOKENS_LIMIT", "DEFAULT_QUEUE_SIZE", "create_app"]
