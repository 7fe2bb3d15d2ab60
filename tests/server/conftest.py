"""Fixtures for the server tests: the real bigram model, a paced view of it, real uvicorn servers.

The model under test is the example plugin's shipped bigram model, loaded through
``openllm_hub.load``. Some tests need a generation that takes a while (to fill the queue, to
disconnect in the middle, to press Stop): :class:`PacedModel` runs the same model's real
token stream, only waiting ``delay`` seconds before each token (and, with a gate, until the
test opens it), and records how many tokens it produced and whether the stream was closed.
The servers, ``eventually`` and the other helpers live in tests/helpers/live_server.py (importable
from the tests); the fixtures below hand them out too.
Expected answers always come from calling the SDK directly on the same model and parameters.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from live_server import EVENTUALLY_S, ServerThread, eventually
from wrapped_model import WrappedModel

import openllm_hub
from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.model import Model


class PacedModel(WrappedModel):
    """The wrapped model, token for token, with a pause before each token and an optional gate."""

    def __init__(self, inner: Model, *, delay: float = 0.0, gated: bool = False,
                 fail_after: int | None = None) -> None:
        super().__init__(inner)
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
    """The class, for module-scoped servers (tests cannot import conftest in importlib mode; they may
    import it from live_server)."""
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
