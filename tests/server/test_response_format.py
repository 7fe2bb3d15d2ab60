"""OpenAI ``response_format`` through the server, with the official ``openai`` client.

The bigram model (random-ish text) answers ``json_schema`` requests with JSON valid for the
schema (jsonschema), whole and streamed, in chat and legacy completions, with one and two
slots; the answer equals the SDK's ``json_schema=`` generation for the same seed. A schema
llguidance cannot compile, an unknown type or a malformed ``json_schema`` is a 400 naming
the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest
from live_server import openai_client

from openllm_hub.core.model import Model
from openllm_hub.server import create_app

CHAT = [{"role": "user", "content": "Describe a fox in JSON."}]
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "legs", "color"],
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "legs": {"type": "integer", "minimum": 0, "maximum": 8},
                         "color": {"enum": ["red", "grey"]}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "fox", "schema": SCHEMA, "strict": True}}


@pytest.fixture(scope="module", params=[1, 2], ids=["one-slot", "two-slots"])
def client(request: pytest.FixtureRequest, model: Model) -> Iterator[openai.OpenAI]:
    with openai_client(create_app(model, model_id="bigram", max_tokens_limit=400, parallel=request.param)) as c:
        yield c


def test_chat_json_schema(client: openai.OpenAI, model: Model) -> None:
    r = client.chat.completions.create(model="bigram", messages=CHAT, seed=3, max_tokens=400,  # type: ignore[arg-type]
                                       response_format=FORMAT)  # type: ignore[arg-type]
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop" and text is not None
    jsonschema.validate(json.loads(text), SCHEMA)
    assert text == model.chat(CHAT, seed=3, max_new_tokens=400, json_schema=SCHEMA).text


def test_chat_json_schema_streamed(client: openai.OpenAI) -> None:
    stream: Any = client.chat.completions.create(model="bigram", messages=CHAT, seed=6,  # type: ignore[arg-type]
                                                 max_tokens=400, response_format=FORMAT, stream=True)  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), SCHEMA)


def test_chat_json_object(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="bigram", messages=CHAT, seed=1, max_tokens=400,  # type: ignore[arg-type]
                                       response_format={"type": "json_object"})
    text = r.choices[0].message.content or ""
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":  # any object: a random model may also write until the limit
        assert isinstance(json.loads(text), dict)


def test_completions_json_schema(client: openai.OpenAI, model: Model) -> None:
    r = client.completions.create(model="bigram", prompt="A fox:", seed=2, max_tokens=400,
                                  extra_body={"response_format": FORMAT})
    jsonschema.validate(json.loads(r.choices[0].text), SCHEMA)
    assert r.choices[0].text == model.generate("A fox:", seed=2, max_new_tokens=400, json_schema=SCHEMA).text
    stream = client.completions.create(model="bigram", prompt="A fox:", seed=2, max_tokens=400, stream=True,
                                       extra_body={"response_format": FORMAT})
    assert "".join(c.choices[0].text for c in stream if c.choices) == r.choices[0].text


@pytest.mark.parametrize(("fmt", "param"), [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(oops"}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"schema": SCHEMA}}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": "not an object"}},
     "response_format.json_schema.schema"),
    ({"type": "yaml"}, "response_format.type"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": "yes"}},
     "response_format.json_schema.strict"),
])
def test_bad_response_format_is_400(client: openai.OpenAI, fmt: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="bigram", messages=CHAT, max_tokens=5,  # type: ignore[arg-type]
                                       response_format=fmt)  # type: ignore[arg-type]
    body: Any = info.value.body
    assert body["param"] == param
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="bigram", prompt="x", max_tokens=5, extra_body={"response_format": fmt})
    body = info.value.body
    assert body["param"] == param
