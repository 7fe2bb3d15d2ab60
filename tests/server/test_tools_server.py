"""Tools through the server, read with the official ``openai`` client.

The model is the example plugin's bigram model carrying Qwen2.5's template (Hermes-style
``<tool_call>``) as its own. Its random answers hold no calls: the requests (tools offered,
tool calls and results flowing back, streamed and not) must give exactly what the SDK gives.
The calls' OpenAI shapes (``message.tool_calls``, streamed ``delta.tool_calls``,
``finish_reason: "tool_calls"``) are checked on the chat format fed the exact text a Qwen model
writes, read by the openai library's own types and stream accumulator. Bad tools are 400s
naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from live_server import openai_client
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import openllm_hub
from openllm_hub.core.model import Model, Usage
from openllm_hub.core.tool_calls import ToolCallStream
from openllm_hub.errors import InvalidParameterError
from openllm_hub.server import create_app
from openllm_hub.server.formats import ChatFormat

QWEN = (Path(__file__).parents[1] / "fixtures" / "chat_templates" / "qwen2.5-instruct.jinja").read_text("utf-8")
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
QUESTION: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
ROUND_TRIP: list[Any] = [
    *QUESTION,
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'}]
#: what Qwen2.5 writes when it calls two tools after a word of content
ANSWER = ('Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
          '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    from openllm_hub_bigram import BUILTIN_MODEL

    with openllm_hub.load(Path(BUILTIN_MODEL), device="cpu") as m:
        m._set_model_chat_template(QWEN, {"eos_token": "<|im_end|>"})
        yield m


@pytest.fixture(scope="module", params=[1, 2], ids=["one-slot", "two-slots"])
def client(request: pytest.FixtureRequest, model: Model) -> Iterator[openai.OpenAI]:
    with openai_client(create_app(model, model_id="bigram", max_tokens_limit=256, parallel=request.param)) as c:
        yield c


@pytest.mark.parametrize("messages", [QUESTION, ROUND_TRIP], ids=["question", "tool-results"])
def test_tools_whole_and_streamed_as_the_sdk(client: openai.OpenAI, model: Model, messages: list[Any]) -> None:
    want = model.chat(messages, tools=TOOLS, seed=7, max_new_tokens=20)
    r = client.chat.completions.create(model="bigram", messages=messages, tools=TOOLS, seed=7, max_tokens=20)
    assert r.choices[0].message.content == want.text and r.choices[0].message.tool_calls is None
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage is not None and r.usage.prompt_tokens == len(model.chat_prompt_ids(messages, tools=TOOLS))
    stream = client.chat.completions.create(model="bigram", messages=messages, tools=TOOLS, tool_choice="auto",
                                            seed=7, max_tokens=20, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        want.finish_reason]
    assert all(c.choices[0].delta.tool_calls is None for c in chunks if c.choices)


def test_tool_choice_none_answers_without_tools(client: openai.OpenAI, model: Model) -> None:
    want = model.chat(QUESTION, seed=2, max_new_tokens=10)
    r = client.chat.completions.create(model="bigram", messages=QUESTION, tools=TOOLS, tool_choice="none", seed=2,
                                       max_tokens=10)
    assert r.choices[0].message.content == want.text


def _bad(client: openai.OpenAI, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="bigram", messages=kwargs.pop("messages", QUESTION), max_tokens=5,
                                       **kwargs)
    body = e.value.body
    assert isinstance(body, dict)
    return body


def test_bad_tools_are_400s_naming_the_field(client: openai.OpenAI) -> None:
    body = _bad(client, tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}])
    assert body["param"] == "tools[0].function.parameters" and "object" in body["message"]
    body = _bad(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    assert body["param"] == "tool_choice" and "'nope'" in body["message"]
    body = _bad(client, tools=TOOLS, extra_body={"chat_template": "plain"})
    assert body["param"] == "tools" and "'plain'" in body["message"]
    body = _bad(client, messages=ROUND_TRIP, extra_body={"chat_template": "plain"})
    assert "'plain' cannot render tools" in body["message"]
    body = _bad(client, messages=[QUESTION[0], {"role": "tool", "tool_call_id": "x", "content": "1"}])
    assert "tool message must follow" in body["message"]
    body = _bad(client, tools=TOOLS, parallel_tool_calls=False)
    assert body["param"] == "parallel_tool_calls"


#: a tool whose arguments' schema llguidance cannot compile (an unclosed regex group)
UNCOMPILABLE: list[Any] = [TOOLS[1], {"type": "function", "function": {
    "name": "lookup", "parameters": {"type": "object", "properties": {"key": {"type": "string", "pattern": "(("}}}}}]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "lookup"}}],
                         ids=["required", "named"])
def test_an_uncompilable_tool_schema_names_the_tool(client: openai.OpenAI, choice: Any) -> None:
    """A required or named call is constrained by its tools' schemas: one that cannot be compiled
    is the tool's field (not json_schema, which the caller never sent)."""
    body = _bad(client, tools=UNCOMPILABLE, tool_choice=choice)
    assert body["param"] == "tools[1].function.parameters", body
    assert "tools[1].function.parameters" in body["message"] and "'lookup'" in body["message"]
    assert "json_schema" not in body["message"] and "tool_choice 'auto'" in body["message"]
    # another named tool, or auto, constrains nothing by that schema: answered
    r = client.chat.completions.create(model="bigram", messages=QUESTION, tools=UNCOMPILABLE, max_tokens=5,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert r.choices[0].finish_reason in ("tool_calls", "length", "stop")
    client.chat.completions.create(model="bigram", messages=QUESTION, tools=UNCOMPILABLE, max_tokens=5)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}],
                         ids=["required", "named"])
def test_a_response_format_with_a_required_call_names_response_format(client: openai.OpenAI, model: Model,
                                                                       choice: Any) -> None:
    # an empty schema ({}: any JSON) is a constraint too, never silently replaced by the call's
    with pytest.raises(InvalidParameterError, match="json_schema cannot be set with tool_choice"):
        model.chat(QUESTION, tools=TOOLS, tool_choice=choice, json_schema={}, max_new_tokens=4)
    for fmt in ({"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}):
        body = _bad(client, tools=TOOLS, tool_choice=choice, response_format=fmt)
        assert body["param"] == "response_format", body
        assert "response_format cannot be combined with tool_choice" in body["message"]
        assert "json_object" not in body["message"] and "json_schema" not in body["message"]


# ---- the OpenAI shapes of calls --------------------------------------------------------------------
def test_calls_in_the_whole_answer() -> None:
    fmt = ChatFormat("m", ToolCallStream("hermes"))
    r = ChatCompletion.model_validate_json(fmt.whole(ANSWER, "stop", Usage(5, 30)).model_dump_json())
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
    calls = choice.message.tool_calls
    assert calls is not None and [(c.type, c.function.name, json.loads(c.function.arguments))  # type: ignore[union-attr]
                                  for c in calls] == [("function", "get_weather", {"city": "Paris"}),
                                                      ("function", "get_time", {})]
    assert len({c.id for c in calls}) == 2
    plain = ChatCompletion.model_validate_json(
        ChatFormat("m", ToolCallStream("hermes")).whole("No call.", "length", Usage(5, 3)).model_dump_json())
    assert plain.choices[0].message.content == "No call." and plain.choices[0].finish_reason == "length"
    assert plain.choices[0].message.tool_calls is None


@pytest.mark.parametrize("step", [1, 7, 1000])
def test_calls_streamed_as_openai_deltas(step: int) -> None:
    fmt = ChatFormat("m", ToolCallStream("hermes"))
    objs = [*fmt.opening(), *(fmt.piece(ANSWER[i:i + step]) for i in range(0, len(ANSWER), step)),
            fmt.closing("stop")]
    chunks = [ChatCompletionChunk.model_validate_json(o.model_dump_json()) for o in objs]
    state = ChatCompletionStreamState(input_tools=TOOLS)
    for chunk in chunks:
        state.handle_chunk(chunk)
    final = state.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls" and (final.message.content or "").strip() == "Checking."
    calls = final.message.tool_calls
    assert calls is not None and [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {})]
    last = chunks[-1].choices[0]
    assert last.finish_reason == "tool_calls" and last.delta.tool_calls is not None
    assert [d.index for d in last.delta.tool_calls] == [0, 1]
    # nothing of the calls leaked into the streamed content
    assert all("<tool_call>" not in (c.choices[0].delta.content or "") for c in chunks)
