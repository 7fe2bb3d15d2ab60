"""The ``grammar`` extension field (llama-cpp-python's server takes the same name: a GBNF
grammar) on ``/v1/completions`` and ``/v1/chat/completions``, with the official ``openai``
client (``extra_body``): GBNF and Lark (llguidance's syntax) grammars, whole and streamed, the
answer equal to the SDK's ``grammar=`` generation for the same seed; a grammar the library cannot
compile, an empty one, or one combined with ``response_format`` or a required tool call is a 400
naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import openllm_hub
from openllm_hub.core.model import Model
from openllm_hub.errors import InvalidParameterError
from openllm_hub.server import create_app

CHAT: list[Any] = [{"role": "user", "content": "Is a fox red?"}]
#: GBNF (llama.cpp's form) and the same language in Lark
GBNF = 'root ::= ("yes" | "no") ", " [a-z]{1,12} "."'
LARK = 'start: ("yes" | "no") ", " /[a-z]{1,12}/ "."'
ANSWER = re.compile(r"(yes|no), [a-z]{1,12}\.")


@pytest.fixture(scope="module", params=[1, 2], ids=["one-slot", "two-slots"])
def client(request: pytest.FixtureRequest, model: Model, server_thread: Any) -> Iterator[openai.OpenAI]:
    app = create_app(model, model_id="bigram", max_tokens_limit=64, parallel=request.param)
    with server_thread(app) as s, openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0,
                                                timeout=60) as c:
        yield c


@pytest.mark.parametrize("grammar", [GBNF, LARK], ids=["gbnf", "lark"])
def test_chat_follows_the_grammar(client: openai.OpenAI, model: Model, grammar: str) -> None:
    for seed in range(3):
        r = client.chat.completions.create(model="bigram", messages=CHAT, seed=seed, max_tokens=64,
                                           extra_body={"grammar": grammar})
        text = r.choices[0].message.content or ""
        assert r.choices[0].finish_reason == "stop" and ANSWER.fullmatch(text), text
        assert text == model.chat(CHAT, seed=seed, max_new_tokens=64, grammar=grammar).text
        stream = client.chat.completions.create(model="bigram", messages=CHAT, seed=seed, max_tokens=64, stream=True,
                                                extra_body={"grammar": grammar})
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text


@pytest.mark.parametrize("grammar", [GBNF, LARK], ids=["gbnf", "lark"])
def test_completions_follow_the_grammar(client: openai.OpenAI, model: Model, grammar: str) -> None:
    r = client.completions.create(model="bigram", prompt="A fox:", seed=4, max_tokens=64,
                                  extra_body={"grammar": grammar})
    text = r.choices[0].text
    assert r.choices[0].finish_reason == "stop" and ANSWER.fullmatch(text), text
    assert text == model.generate("A fox:", seed=4, max_new_tokens=64, grammar=grammar).text
    stream = client.completions.create(model="bigram", prompt="A fox:", seed=4, max_tokens=64, stream=True,
                                       extra_body={"grammar": grammar})
    assert "".join(c.choices[0].text for c in stream if c.choices) == text


@pytest.mark.parametrize(("body", "words"), [
    ({"grammar": "root ::= ["}, "GBNF"),
    ({"grammar": "start: no_such_rule"}, "cannot be compiled"),
    ({"grammar": "  "}, "empty"),
    ({"grammar": GBNF, "response_format": {"type": "json_object"}}, "both set"),
])
def test_bad_grammars_are_400s_naming_the_field(client: openai.OpenAI, body: dict[str, Any], words: str) -> None:
    for call in (lambda: client.chat.completions.create(model="bigram", messages=CHAT, max_tokens=5, extra_body=body),
                 lambda: client.completions.create(model="bigram", prompt="x", max_tokens=5, extra_body=body)):
        with pytest.raises(openai.BadRequestError) as info:
            call()
        error: Any = info.value.body
        assert words in error["message"] and "grammar" in error["message"], error
        # both fields are the caller's; the message names both, the param one of them
        assert error["param"] == ("response_format" if "response_format" in body else "grammar"), error


# ---- a grammar and a required tool call do not mix ------------------------------------------
QWEN = (Path(__file__).parents[1] / "fixtures" / "chat_templates" / "qwen2.5-instruct.jinja").read_text("utf-8")
TOOLS: list[Any] = [{"type": "function", "function": {"name": "get_time",
                                                      "parameters": {"type": "object", "properties": {}}}}]


def test_grammar_with_a_required_tool_call_is_refused() -> None:
    from fastapi.testclient import TestClient
    from openllm_hub_bigram import BUILTIN_MODEL

    with openllm_hub.load(Path(BUILTIN_MODEL), device="cpu") as m:
        m._set_model_chat_template(QWEN, {"eos_token": "<|im_end|>"})
        with pytest.raises(InvalidParameterError, match="grammar cannot be set with tool_choice") as e:
            m.chat(CHAT, tools=TOOLS, tool_choice="required", grammar=GBNF, max_new_tokens=4)
        assert e.value.where == "grammar"
        with TestClient(create_app(m, model_id="bigram")) as http:
            for extra, param in (({"grammar": GBNF}, "grammar"),
                                 ({"response_format": {"type": "json_object"}}, "response_format")):
                r = http.post("/v1/chat/completions", json={"model": "bigram", "messages": CHAT, "tools": TOOLS,
                                                            "tool_choice": "required", "max_tokens": 4, **extra})
                assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
            # with tool_choice auto the grammar applies to the answer
            r = http.post("/v1/chat/completions", json={"model": "bigram", "messages": CHAT, "tools": TOOLS,
                                                        "max_tokens": 64, "seed": 1, "grammar": GBNF})
            assert r.status_code == 200 and ANSWER.fullmatch(r.json()["choices"][0]["message"]["content"]), r.text
