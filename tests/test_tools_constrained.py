"""``tool_choice`` ``"required"`` and a named function: the answer is constrained to the JSON
schema of one call (``GenerationConfig.json_schema``, structured output), so it always parses.

Needs the structured-output branch (``GenerationConfig.json_schema``); run after merging it.
Tiny random LLaMA models (a GGUF on llama.cpp, an HF folder on transformers) carrying Qwen2.5's
template (Hermes calls: ``{"name", "arguments"}``) and a GGUF carrying Llama 3.2's (``{"name",
"parameters"}``); through the SDK and through the server with the official openai client, whole
and streamed. The tools' schemas are closed (enums, no extra properties) so that a random model's
constrained call ends well within ``max_new_tokens``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from template_models import gguf_with_chat_template, set_hf_chat_template, tiny_llama_files

import openllm_hub
from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.model import Model
from openllm_hub.server import create_app

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
QWEN = (FIXTURES / "qwen2.5-instruct.jinja").read_text(encoding="utf-8")
LLAMA32 = (FIXTURES / "llama-3.2-instruct.jinja").read_text(encoding="utf-8")
TOOLS: list[Any] = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                                                        "unit": {"type": "string", "enum": ["C", "F"]}},
                       "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {},
                                                                         "additionalProperties": False}}}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
QUESTION: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
MAX = 200


def test_the_structured_output_field_is_there() -> None:
    assert "json_schema" in GenerationConfig.model_fields


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tools-constrained")
    hf, plain = tiny_llama_files(base, gguf_name="plain.gguf", num_layers=1)
    set_hf_chat_template(hf, QWEN)
    return {"qwen-gguf": gguf_with_chat_template(plain, base / "qwen.gguf", QWEN), "qwen-hf": hf,
            "llama32-gguf": gguf_with_chat_template(plain, base / "llama32.gguf", LLAMA32)}


def _check_call(calls: Any, name: str | None) -> None:
    assert calls is not None and len(calls) == 1
    call = calls[0]
    fn = call.function if hasattr(call, "function") else call
    assert fn.name in SCHEMAS and (name is None or fn.name == name)
    jsonschema.validate(json.loads(fn.arguments), SCHEMAS[fn.name])


@pytest.mark.parametrize("kind", ["qwen-gguf", "qwen-hf", "llama32-gguf"])
@pytest.mark.parametrize("choice", ["required", NAMED], ids=["required", "named"])
def test_constrained_calls_always_parse(files: dict[str, Path], kind: str, choice: Any) -> None:
    name = None if choice == "required" else "get_weather"
    with openllm_hub.load(files[kind], device="cpu", threads=1) as m:
        assert m.chat_template().tool_format == ("llama3_json" if kind.startswith("llama32") else "hermes")
        for seed in range(4):
            got = m.chat(QUESTION, tools=TOOLS, tool_choice=choice, seed=seed, temperature=1.0, max_new_tokens=MAX)
            assert got.finish_reason == "tool_calls" and got.text == ""
            _check_call(got.tool_calls, name)
            chunks = list(m.stream_chat(QUESTION, tools=TOOLS, tool_choice=choice, seed=seed, temperature=1.0,
                                        max_new_tokens=MAX))
            assert all(c.text == "" for c in chunks) and chunks[-1].finish_reason == "tool_calls"
            assert chunks[-1].tool_calls is not None
            assert [(c.name, c.arguments) for c in chunks[-1].tool_calls] == [
                (c.name, c.arguments) for c in got.tool_calls or ()]


@pytest.fixture(scope="module")
def client(files: dict[str, Path]) -> Iterator[tuple[openai.OpenAI, Model]]:
    """The official client on the app over starlette's TestClient (an httpx client)."""
    from fastapi.testclient import TestClient

    with openllm_hub.load(files["qwen-gguf"], device="cpu", threads=1) as m:
        app = create_app(m, model_id="tiny", max_tokens_limit=256, parallel=2)
        with TestClient(app) as http, openai.OpenAI(base_url="http://testserver/v1", api_key="x", max_retries=0,
                                                    http_client=http) as c:
            yield c, m


@pytest.mark.parametrize("choice", ["required", NAMED], ids=["required", "named"])
def test_constrained_calls_through_the_server(client: tuple[openai.OpenAI, Model], choice: Any) -> None:
    c, m = client
    name = None if choice == "required" else "get_weather"
    want = m.chat(QUESTION, tools=TOOLS, tool_choice=choice, seed=11, max_new_tokens=MAX)
    r = c.chat.completions.create(model="tiny", messages=QUESTION, tools=TOOLS, tool_choice=choice, seed=11,
                                  max_tokens=MAX)
    assert r.choices[0].finish_reason == "tool_calls"
    _check_call(r.choices[0].message.tool_calls, name)
    got = r.choices[0].message.tool_calls
    assert got is not None and want.tool_calls is not None
    assert [(t.function.name, t.function.arguments) for t in got] == [  # type: ignore[union-attr]
        (t.name, t.arguments) for t in want.tool_calls]
    state = ChatCompletionStreamState(input_tools=TOOLS)
    for chunk in c.chat.completions.create(model="tiny", messages=QUESTION, tools=TOOLS, tool_choice=choice,
                                           seed=11, max_tokens=MAX, stream=True):
        state.handle_chunk(chunk)
    final = state.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    _check_call(final.message.tool_calls, name)
