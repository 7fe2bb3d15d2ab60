"""RWKV and tools: RWKV's chat formats have no tool-call format, so tools are refused with an
error that says so, which formats would be needed, and what works instead (a ``json_schema``
answer, which is checked to work here); ``tool_choice="none"`` answers as the plain chat. The
same through the server (a 400 naming ``tools``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from openllm_hub.errors import InvalidParameterError

TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string",
                                                                                    "enum": ["Paris", "Rome"]}},
                                          "required": ["city"], "additionalProperties": False}}}]
QUESTION: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
RESULTS: list[Any] = [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [
    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "21"}]


def _says_why(err: InvalidParameterError) -> None:
    text = err.render()
    assert "'rwkv-world' cannot render tools" in text
    assert "no tool-call format" in text and "ChatGLM3" in text and "json_schema" in text


def test_tools_are_refused_saying_why_and_what_instead(shared_model: Callable[..., Any]) -> None:
    m = shared_model("7")
    assert m.default_chat_template == "rwkv-world"
    for choice in (None, "auto", "required", {"type": "function", "function": {"name": "get_weather"}}):
        with pytest.raises(InvalidParameterError) as e:
            m.chat(QUESTION, tools=TOOLS, tool_choice=choice, max_new_tokens=2)
        assert e.value.where == "tools"
        _says_why(e.value)
    with pytest.raises(InvalidParameterError) as e:
        m.chat(RESULTS, max_new_tokens=2)
    assert e.value.where == "chat messages"
    _says_why(e.value)
    # tools offered but tool_choice none: the plain chat's answer
    m.reset_state()
    plain = m.chat(QUESTION, seed=1, max_new_tokens=6)
    m.reset_state()
    assert m.chat(QUESTION, tools=TOOLS, tool_choice="none", seed=1, max_new_tokens=6).text == plain.text
    # what the fix suggests works: the answer constrained to the call's arguments
    got = m.chat(QUESTION, json_schema=TOOLS[0]["function"]["parameters"], seed=1, max_new_tokens=40)
    assert json.loads(got.text)["city"] in ("Paris", "Rome")


def test_the_server_refuses_tools_naming_the_field(shared_model: Callable[..., Any]) -> None:
    from fastapi.testclient import TestClient

    from openllm_hub.server import create_app

    m = shared_model("7")
    with TestClient(create_app(m, model_id="rwkv")) as client:
        r = client.post("/v1/chat/completions", json={"model": "rwkv", "messages": QUESTION, "tools": TOOLS,
                                                      "max_tokens": 2})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "tools" and "no tool-call format" in error["message"]
        r = client.post("/v1/chat/completions", json={"model": "rwkv", "messages": QUESTION, "tools": TOOLS,
                                                      "tool_choice": "none", "max_tokens": 2})
        assert r.status_code == 200, r.text
