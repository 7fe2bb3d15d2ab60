"""``openllm-hub serve MODEL``: load a model and serve it over HTTP with uvicorn.

Adding the command imports neither fastapi nor uvicorn (``openllm-hub --help`` stays light
and works without the ``server`` extra); running it does, and says how to install them when
they are missing. The API key comes from ``--api-key`` or, better (a command line is
visible to other users of the machine), from ``OPENLLM_HUB_API_KEY``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading
from types import FrameType

from openllm_hub.cli_args import add_load_arguments, load_from_args
from openllm_hub.errors import InvalidParameterError, NotFoundError

API_KEY_ENV = "OPENLLM_HUB_API_KEY"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class _Terminated(Exception):
    """SIGTERM arrived; uvicorn has already shut down gracefully and re-raised it."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def add_serve_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add ``serve`` to an ``openllm-hub`` style sub-parser set; returns the new parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API, with a chat page at /",
        description="Serve MODEL over HTTP with OpenAI's API: GET /v1/models; POST /v1/completions and "
                    "/v1/chat/completions (whole or streamed with server-sent events, with logprobs; "
                    "response_format, tools and tool_choice on chat); POST /v1/embeddings (on engines that can "
                    "embed). Also GET /health (no key needed), GET /metrics (Prometheus) and a chat page "
                    "at /. Fields beyond OpenAI's (the openai client sends them with extra_body): top_k, "
                    "repeat_penalty and grammar (GBNF or a Lark grammar the answer must follow) on both "
                    "completion endpoints; response_format on /v1/completions too; chat_template (a named "
                    "template instead of the model's) on chat; normalize (unit-length vectors) on embeddings. "
                    "Needs the server extra: pip install 'openllm-hub[server]'.")
    add_load_arguments(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on API requests (default: ${API_KEY_ENV} if set)")
    p.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="requests generated at once, in one batch (interleaved where the engine cannot batch); "
                        "default: from the engine, CPU threads and free memory (shown at start-up)")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="tensor-parallel ranks on this machine (this process is rank 0), for families that run "
                        "over several processes (e.g. glm130b): the same as -o nproc=N")
    p.add_argument("--queue-size", type=int, default=8,
                   help="requests that may wait for a running slot; more get 429 (default 8)")
    p.add_argument("--max-tokens-limit", type=int, default=2048,
                   help="largest max_tokens a request may ask for (default 2048)")
    p.add_argument("--max-request-bytes", type=int, default=1_000_000,
                   help="largest request body accepted (default 1000000)")
    p.add_argument("--allowed-host", action="append", dest="allowed_hosts", metavar="NAME",
                   help="a name clients use in URLs to reach the server (repeatable); requests naming another host "
                        "are refused. On loopback, localhost, 127.0.0.1 and ::1 are always allowed and nothing "
                        "else by default (so web pages cannot reach the server by DNS rebinding); elsewhere any "
                        "name is accepted unless this is given. '*' allows any")
    p.add_argument("--model-id", help="the model's id in the API (default: MODEL as given, without folders)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="seconds a running request may take to finish on shutdown before it is cancelled")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(handler=cmd_serve)
    return p


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from openllm_hub.server.app import create_app
    except ImportError as exc:
        raise NotFoundError(f"the server needs fastapi and uvicorn ({exc})", where="openllm-hub serve",
                            fix="pip install 'openllm-hub[server]'") from None

    if not 0 <= args.port <= 65535:
        raise InvalidParameterError(f"port {args.port} is out of range", where="--port", fix="use 0-65535")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if not _is_loopback(args.host) and api_key is None:
        print(f"warning: serving on {args.host} without an API key: anyone who can reach this address can use "
              f"the model (set {API_KEY_ENV} or --api-key)", file=sys.stderr)
    model_id = args.model_id or os.path.basename(os.path.normpath(args.model))
    allowed: list[str] | None = list(args.allowed_hosts or [])
    if _is_loopback(args.host):
        allowed = [*LOOPBACK_NAMES, *(allowed or [])]
    if not allowed or "*" in allowed:
        allowed = None
    if args.parallel is not None and args.parallel < 1:
        raise InvalidParameterError(f"--parallel must be at least 1, got {args.parallel}", where="--parallel")
    if args.nproc is not None:  # the family's `nproc` load option (a family without one refuses it by name)
        args.option = [*(args.option or []), f"nproc={args.nproc}"]
    with load_from_args(args) as model:
        from openllm_hub.server.scheduler import default_parallel

        if args.parallel is None:
            parallel, why = default_parallel(model)
            why = f"default: {why}"
        else:
            parallel, why = args.parallel, "--parallel"
        app = create_app(model, api_key=api_key, queue_size=args.queue_size, parallel=parallel,
                         max_tokens_limit=args.max_tokens_limit, max_request_bytes=args.max_request_bytes,
                         model_id=model_id, shutdown_grace=args.shutdown_timeout, allowed_hosts=allowed)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, lifespan="on",
                                timeout_graceful_shutdown=max(1, round(args.shutdown_timeout)))
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"serving {model_id} ({model.info.family}, {model.info.engine} on {model.info.device}) at "
              f"http://{host}:{args.port}/ ; OpenAI API at /v1" + (" ; API key required" if api_key else ""),
              file=sys.stderr, flush=True)
        print(f"{parallel} parallel slot{'s' if parallel != 1 else ''} ({model.batching}; {why}), "
              f"{args.queue_size} more may wait; metrics at /metrics", file=sys.stderr, flush=True)
        # uvicorn handles SIGINT/SIGTERM itself (drain, then cancel after the timeout) and then
        # re-raises the signal to the previous handler: ours turns SIGTERM into a normal exit, so
        # the model is closed and the exit status is 0 (SIGINT still ends as KeyboardInterrupt).
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
        try:
            uvicorn.Server(config).run()
        except _Terminated:
            print("stopped (SIGTERM)", file=sys.stderr)
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
    return 0
