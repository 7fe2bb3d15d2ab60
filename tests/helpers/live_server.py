"""Real servers for the server tests: uvicorn in a thread, ``openllm-hub serve`` in a process, their clients.

Test-only scaffolding (not shipped in the wheel): tests/conftest.py puts this folder on sys.path, so
tests/server/conftest.py and the test modules say ``from live_server import ...`` (pytest's importlib
mode does not let a test import conftest.py itself). Everything binds to 127.0.0.1 and a free port.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import openai
import uvicorn
from fastapi import FastAPI

#: Deadline for "eventually" conditions (a generous bound for a loaded 2-core CI machine;
#: the conditions themselves are about what happened, not how fast).
EVENTUALLY_S = 30.0


def eventually(cond: Callable[[], bool], what: str, timeout: float = EVENTUALLY_S) -> None:
    """Wait until ``cond()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.01)


class ServerThread:
    """A real uvicorn server for ``app`` on 127.0.0.1 and a free port, in a background thread."""

    def __init__(self, app: FastAPI, *, graceful_timeout: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=graceful_timeout)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        eventually(lambda: self.server.started, "uvicorn to start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(EVENTUALLY_S)
        assert not self.thread.is_alive(), "uvicorn did not stop"

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.stop()
        self.sock.close()


@contextlib.contextmanager
def openai_client(app: FastAPI, *, api_key: str = "x") -> Iterator[openai.OpenAI]:
    """The official openai client (no retries, 60 s timeout) on a real server for ``app``; both
    closed on the way out."""
    with ServerThread(app) as s, openai.OpenAI(base_url=s.url + "/v1", api_key=api_key, max_retries=0,
                                               timeout=60) as c:
        yield c


def health(url: str) -> dict[str, Any]:
    """The server's ``/health`` answer."""
    return httpx.get(url + "/health", timeout=10).json()  # type: ignore[no-any-return]


def post_in_thread(url: str, body: dict[str, Any], results: dict[str, httpx.Response], name: str, *,
                   timeout: float = 60) -> threading.Thread:
    """POST ``body`` to ``url``/v1/completions in a started thread; the response lands in ``results[name]``."""
    def run() -> None:
        results[name] = httpx.post(url + "/v1/completions", json=body, timeout=timeout)

    t = threading.Thread(target=run)
    t.start()
    return t


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_command(model: Path, *flags: str, env: Mapping[str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``python -m openllm_hub.cli serve MODEL --port <free port> FLAGS`` in a process with ``env``, once
    its /health answers 200 (the process still running): yields the process and its base URL.
    On the way out a process still running is killed (stop it with :func:`sigterm` to check its exit)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "openllm_hub.cli", "serve", str(model), "--port", str(port),
                             *flags], env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.communicate()
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        eventually(up, "the server to come up", timeout=60)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def sigterm(proc: subprocess.Popen[str]) -> str:
    """Send SIGTERM to a server process and wait (30 s at most) for it to end; returns its stderr."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return err
