"""Fixtures for the server tests: the real bigram model, a paced view of it, real uvicorn servers.

The model under test is the example plugin's shipped bigram model, loaded through
``openllm_hub.load``. Some tests need a generation that takes a while (to fill the queue, to
disconnect in the middle, to press Stop): :class:`PacedModel` runs the same model's real
token stream, only waiting ``delay`` seconds before each token (and, with a gate, until the
test opens it), and records how many tokens it produced and whether the stream was closed.
Expected answers always come from calling the SDK directly on the same model and parameters.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import uvicorn
from fastapi import FastAPI

import openllm_hub
from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.model import Model

#: Deadline for "eventually" conditions (a generous bound for a loaded 2-core CI machine;
#: the conditions themselves are about what happened, not how fast).
EVENTUALLY_S = 30.0


def eventually(cond: Callable[[], bool], what: str, timeout: float = EVENTUALLY_S) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.01)


class PacedModel(Model):
    """The wrapped model, token for token, with a pause before each token and an optional gate."""

    def __init__(self, inner: Model, *, delay: float = 0.0, gated: bool = False,
                 fail_after: int | None = None) -> None:
        super().__init__(inner.info, eos_token_ids=inner.eos_token_ids)
        self.inner = inner
        self.default_chat_template = inner.default_chat_template
        self.generation_defaults = inner.generation_defaults
        self.delay = delay
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        #: raise RuntimeError after this many tokens (a fault inside one generation)
        self.fail_after = fail_after
        self.started = 0
        self.closed_streams = 0
        self.tokens_per_stream: list[int] = []
        self._lock_counts = threading.Lock()

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        return self.inner._tokenize(text, add_special)

    def _detokenize(self, ids: Sequence[int]) -> str:
        return self.inner._detokenize(ids)

    def _logits(self, ids: list[int]) -> npt.NDArray[np.float32]:
        return self.inner._logits(ids)

    def _token_stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[int]:
        with self._lock_counts:
            self.started += 1
            self.tokens_per_stream.append(0)
            index = len(self.tokens_per_stream) - 1
        try:
            for n, token in enumerate(self.inner._token_stream(prompt_ids, config)):
                if self.fail_after is not None and n >= self.fail_after:
                    raise RuntimeError("injected fault in the token stream")
                self.gate.wait(EVENTUALLY_S)
                if self.delay:
                    time.sleep(self.delay)
                self.tokens_per_stream[index] += 1
                yield token
        finally:
            with self._lock_counts:
                self.closed_streams += 1


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


@pytest.fixture(scope="session")
def bigram_path() -> Path:
    from openllm_hub_bigram import BUILTIN_MODEL

    return Path(BUILTIN_MODEL)


@pytest.fixture(scope="session")
def model(bigram_path: Path) -> Iterator[Model]:
    with openllm_hub.load(bigram_path, device="cpu") as m:
        yield m


@pytest.fixture()
def serve() -> Iterator[Callable[..., ServerThread]]:
    """``serve(app)`` starts a server that is stopped when the test ends."""
    with contextlib.ExitStack() as stack:
        yield lambda app, **kw: stack.enter_context(ServerThread(app, **kw))


@pytest.fixture(scope="session")
def server_thread() -> type[ServerThread]:
    """The class, for module-scoped servers (tests cannot import conftest in importlib mode)."""
    return ServerThread


@pytest.fixture(scope="session")
def paced() -> type[PacedModel]:
    return PacedModel


@pytest.fixture(scope="session", name="eventually")
def eventually_fixture() -> Callable[..., None]:
    return eventually


@pytest.fixture(scope="session", name="long_answer_seed")
def long_answer_seed_fixture() -> Callable[..., int]:
    return long_answer_seed


_SEEDS: dict[str, int] = {}


def long_answer_seed(model: Model, messages: Sequence[Mapping[str, str]] | None = None, *, prompt: str | None = None,
                     tokens: int, **params: Any) -> int:
    """A seed whose answer runs the full ``tokens`` (found by running the model, not hard-coded)."""
    key = repr((model.info.path, messages, prompt, tokens, sorted(params.items())))
    if key not in _SEEDS:
        _SEEDS[key] = _find_long_seed(model, messages, prompt, tokens, params)
    return _SEEDS[key]


def _find_long_seed(model: Model, messages: Sequence[Mapping[str, str]] | None, prompt: str | None, tokens: int,
                    params: dict[str, Any]) -> int:
    for seed in range(500):
        if messages is not None:
            done = model.chat(messages, seed=seed, max_new_tokens=tokens, **params)
        else:
            assert prompt is not None
            done = model.generate(prompt, seed=seed, max_new_tokens=tokens, **params)
        if done.finish_reason == "length" and done.usage.completion_tokens == tokens:
            return seed
    raise AssertionError(f"no seed below 500 gives an answer of {tokens} tokens")
