"""A model's own Jinja template is rendered once per chat request, off the server's event loop.

A template may take seconds (``chat_jinja.RENDER_SECONDS`` bounds it); while it renders, the
server must keep answering ``/health``, ``/metrics`` and the other slots' requests. The model
here is the bigram model carrying Qwen2.5's template with one extra call in front,
``gate.enter()``: a test object passed as a template variable that counts the renders and
blocks until the test opens it. Whether the server stays responsive is checked by what
happened (answers that arrive while the template is still held), not by timing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import EVENTUALLY_S, ServerThread, eventually

import openllm_hub
from openllm_hub.core.model import Model
from openllm_hub.server import create_app

QWEN = (Path(__file__).parents[1] / "fixtures" / "chat_templates" / "qwen2.5-instruct.jinja").read_text("utf-8")
TOOLS: list[Any] = [{"type": "function", "function": {"name": "get_time",
                                                      "parameters": {"type": "object", "properties": {}}}}]
CHAT: list[Any] = [{"role": "user", "content": "What time is it?"}]


class Gate:
    """Called by the template (``{{ gate.enter() }}``) at every render: counts the renders and
    holds each until the test opens the gate (or EVENTUALLY_S passes, so a failing test ends)."""

    def __init__(self) -> None:
        self.renders = 0
        self.entered = threading.Event()
        self.opened = threading.Event()

    def enter(self) -> str:
        self.renders += 1
        self.entered.set()
        self.opened.wait(EVENTUALLY_S)
        return ""


@pytest.fixture()
def gated_model() -> Iterator[tuple[Model, Gate]]:
    from openllm_hub_bigram import BUILTIN_MODEL

    gate = Gate()
    with openllm_hub.load(Path(BUILTIN_MODEL), device="cpu") as m:
        variables: dict[str, Any] = {"eos_token": "<|im_end|>", "gate": gate}
        m._set_model_chat_template("{{ gate.enter() }}" + QWEN, variables)
        yield m, gate


def test_a_slow_template_renders_once_off_the_event_loop(gated_model: tuple[Model, Gate],
                                                         serve: Callable[..., ServerThread]) -> None:
    model, gate = gated_model
    url = serve(create_app(model, model_id="bigram", max_tokens_limit=64, parallel=2)).url
    body = {"model": "bigram", "messages": CHAT, "tools": TOOLS, "seed": 3, "max_tokens": 8}
    results: dict[str, httpx.Response] = {}
    chat = threading.Thread(target=lambda: results.update(
        chat=httpx.post(url + "/v1/chat/completions", json=body, timeout=2 * EVENTUALLY_S)))
    chat.start()
    try:
        eventually(gate.entered.is_set, "the chat's template to start rendering")
        # the template is held: the event loop still answers, and the other slot still generates
        assert httpx.get(url + "/health", timeout=EVENTUALLY_S).json()["status"] == "ok"
        assert "openllm_hub_slots 2.0" in httpx.get(url + "/metrics", timeout=EVENTUALLY_S).text
        other = httpx.post(url + "/v1/completions", json={"model": "bigram", "prompt": "Once", "max_tokens": 5,
                                                          "seed": 1}, timeout=EVENTUALLY_S)
        assert other.status_code == 200
        assert other.json()["choices"][0]["text"] == model.generate("Once", max_new_tokens=5, seed=1).text
        assert "chat" not in results and gate.renders == 1
    finally:
        gate.opened.set()
        chat.join(2 * EVENTUALLY_S)
    r = results["chat"]
    assert r.status_code == 200, r.text
    assert gate.renders == 1  # rendered once for the request; its prompt ids fed the generation
    want = model.chat(CHAT, tools=TOOLS, seed=3, max_new_tokens=8)
    assert gate.renders == 2  # (the SDK's own chat renders once too)
    assert r.json()["choices"][0]["message"]["content"] == want.text
    assert r.json()["usage"]["prompt_tokens"] == want.usage.prompt_tokens
