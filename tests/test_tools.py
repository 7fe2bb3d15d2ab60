"""Tools: reading the calls of each format, streaming them, rendering tools through the model's
template (equal to transformers' ``apply_chat_template(..., tools=...)``), tool messages flowing
back in, and a real (tiny, random) model answering through the whole path.

The answers of a random model hold no calls; the formats are checked on the exact strings the
models write (the formats' own examples), whole and fed character by character."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from template_models import (
    gguf_with_chat_template,
    hf_tokenizer_with_template,
    set_hf_chat_template,
    tiny_llama_files,
)

import openllm_hub
from openllm_hub.core.chat import get_template, render_pieces, validate_messages
from openllm_hub.core.chat_jinja import JinjaTemplate
from openllm_hub.core.model import Model
from openllm_hub.core.tool_calls import (
    ToolCallStream,
    call_schema,
    detect_tool_format,
    parse_tool_calls,
    tool_choice_mode,
    validate_tools,
)
from openllm_hub.errors import InvalidParameterError

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city, now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["C", "F"]}},
                   "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]

#: format -> (answer as the model writes it, content, [(name, arguments)])
ANSWERS: dict[str, list[tuple[str, str, list[tuple[str, dict[str, Any]]]]]] = {
    "hermes": [
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>', "",
         [("get_weather", {"city": "Paris", "unit": "C"})]),
        ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
         '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>', "Let me check.",
         [("get_weather", {"city": "Paris"}), ("get_time", {})]),
        ('<tool_call>\n{"name": "get_time", "arguments": {}}', "", [("get_time", {})]),  # stopped before the close
    ],
    "llama3_json": [
        ('{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [("get_weather", {"city": "Paris"})]),
        ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", '
         '"parameters": {}}', "", [("get_weather", {"city": "Paris"}), ("get_time", {})]),
    ],
    "mistral": [
        ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", '
         '"arguments": {}}]', "", [("get_weather", {"city": "Paris"}), ("get_time", {})]),
        # [TOOL_CALLS] is a control token; engines that render those as nothing leave the list
        ('[{"name": "get_weather", "arguments": {"city": "Paris"}}]', "", [("get_weather", {"city": "Paris"})]),
    ],
    "chatglm3": [
        ('get_weather\n```python\ntool_call(city="Paris", unit="C")\n```', "",
         [("get_weather", {"city": "Paris", "unit": "C"})]),
        ("get_time\n```python\ntool_call()\n```", "", [("get_time", {})]),
    ],
}

#: format -> answers that are not calls: all content, never an error
NOT_CALLS: dict[str, list[str]] = {
    "hermes": ["Paris is sunny.", '<tool_call>\n{"name": "get_weather", "arguments": {"city": </tool_call>',
               '<tool_call>\n{"arguments": {}}\n</tool_call>', "<tool_call>not json</tool_call>"],
    "llama3_json": ["Paris is sunny.", '{"name": "get_weather", "parameters": {"city": "Pa', '{"city": "Paris"}',
                    "I think {braces} are fine"],
    "mistral": ["Paris is sunny.", '[TOOL_CALLS][{"name": "get_weather", "arguments": ', "[TOOL_CALLS]{}",
                "[1, 2, 3]"],
    "chatglm3": ["\nParis is sunny.", "get_weather\n```python\n__import__('os').system('true')\n```",
                 "get_weather\n```python\ntool_call(city=open('x'))\n```", "get_weather\nnot code("],
}


def _calls(calls: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("fmt", sorted(ANSWERS))
def test_each_format_reads_its_calls(fmt: str) -> None:
    for text, content, calls in ANSWERS[fmt]:
        got_content, got = parse_tool_calls(text, fmt)
        assert (got_content, _calls(got)) == (content, calls), text
        assert all(c.type == "function" and c.id for c in got)
        assert len({c.id for c in got}) == len(got)
        if fmt == "mistral":  # Mistral's templates require 9-character ids
            assert all(len(c.id) == 9 and c.id.isalnum() for c in got)
    for text in NOT_CALLS[fmt]:
        assert parse_tool_calls(text, fmt) == (text, [])


def _streamed(text: str, fmt: str, step: int) -> tuple[str, str, list[Any]]:
    reader = ToolCallStream(fmt)
    early = "".join(reader.feed(text[i:i + step]) for i in range(0, len(text), step))
    rest, calls = reader.finish()
    return early, rest, calls


@pytest.mark.parametrize("fmt", sorted(ANSWERS))
@pytest.mark.parametrize("step", [1, 3, 1000])
def test_streamed_answers_read_as_whole_ones(fmt: str, step: int) -> None:
    for text, content, calls in ANSWERS[fmt]:
        early, rest, got = _streamed(text, fmt, step)
        assert _calls(got) == calls
        assert (early + rest).strip() == content
    for text in NOT_CALLS[fmt]:
        early, rest, got = _streamed(text, fmt, step)
        assert (early + rest, got) == (text, [])


def test_content_before_a_call_streams_and_the_call_waits() -> None:
    reader = ToolCallStream("hermes")
    assert reader.feed("Let me check") == "Let me check"
    assert reader.feed(" <tool") == " "  # could be the start of <tool_call>: held
    assert reader.feed('_call>\n{"name": "get_time", ') == ""
    assert reader.feed('"arguments": {}}\n</tool_call>') == ""
    rest, calls = reader.finish()
    assert rest == "" and _calls(calls) == [("get_time", {})]
    reader = ToolCallStream("hermes")
    assert reader.feed("a <tool") == "a "
    assert reader.feed("box> b") == "<toolbox> b"  # not a call after all


def test_bad_tools_and_tool_choice_name_the_field() -> None:
    with pytest.raises(InvalidParameterError, match="must be a JSON schema of an object") as e:
        validate_tools([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}])
    assert e.value.where == "tools[0].function.parameters"
    with pytest.raises(InvalidParameterError) as e:
        validate_tools([{"type": "function", "function": {"name": "f", "parameters": [1]}}])
    assert e.value.where == "tools[0].function.parameters"
    with pytest.raises(InvalidParameterError) as e:
        validate_tools([{"type": "function", "function": {"name": "bad name!"}}])
    assert e.value.where == "tools[0].function.name"
    with pytest.raises(InvalidParameterError) as e:
        validate_tools([TOOLS[0], TOOLS[0]])
    assert e.value.where == "tools[1].function.name"
    with pytest.raises(InvalidParameterError) as e:
        validate_tools([{"type": "retrieval"}])
    assert e.value.where == "tools[0]"
    checked = validate_tools(TOOLS)
    assert tool_choice_mode(None, checked) == ("auto", None)
    assert tool_choice_mode(None, None) == ("none", None)
    assert tool_choice_mode("required", checked) == ("required", None)
    assert tool_choice_mode({"type": "function", "function": {"name": "get_time"}}, checked) == ("required",
                                                                                                 "get_time")
    with pytest.raises(InvalidParameterError, match="'nope', which is not among the tools") as e:
        tool_choice_mode({"type": "function", "function": {"name": "nope"}}, checked)
    assert e.value.where == "tool_choice"
    with pytest.raises(InvalidParameterError) as e:
        tool_choice_mode("sometimes", checked)
    assert e.value.where == "tool_choice"
    with pytest.raises(InvalidParameterError, match="no tools are given"):
        tool_choice_mode("required", None)


def test_call_schema_per_format() -> None:
    checked = validate_tools(TOOLS)
    one = call_schema(checked, "hermes", "get_weather")
    assert one["properties"]["name"] == {"const": "get_weather"} and one["required"] == ["name", "arguments"]
    assert one["properties"]["arguments"] == TOOLS[0]["function"]["parameters"]
    assert call_schema(checked, "llama3_json", "get_time")["required"] == ["name", "parameters"]
    assert len(call_schema(checked, "mistral")["anyOf"]) == 2


def test_templates_name_their_format() -> None:
    want = {"qwen2.5-instruct.jinja": "hermes", "llama-3.2-instruct.jinja": "llama3_json",
            "mistral-nemo-instruct-2407.jinja": "mistral", "chatglm3-6b.jinja": "chatglm3"}
    for name, fmt in want.items():
        assert detect_tool_format((FIXTURES / name).read_text(encoding="utf-8")) == fmt, name
    assert detect_tool_format((FIXTURES / "gemma-7b-it.jinja").read_text(encoding="utf-8")) is None


# ---- messages ---------------------------------------------------------------------------------
CALL = {"id": "call12345", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
ROUND_TRIP = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": None, "tool_calls": [CALL]},
              {"role": "tool", "tool_call_id": "call12345", "content": '{"temperature": 21}'}]


def test_tool_messages_are_valid_conversations() -> None:
    msgs = validate_messages(ROUND_TRIP)
    assert msgs[2] == {"role": "assistant", "content": "", "tool_calls": [CALL]}
    assert msgs[3] == {"role": "tool", "content": '{"temperature": 21}', "tool_call_id": "call12345"}
    validate_messages([*ROUND_TRIP, {"role": "assistant", "content": "21 C."}, {"role": "user", "content": "Ok"}])
    with pytest.raises(InvalidParameterError, match="must follow an assistant message with tool_calls"):
        validate_messages([{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}])
    with pytest.raises(InvalidParameterError, match="must end with a user message"):
        validate_messages(ROUND_TRIP[:3])
    with pytest.raises(InvalidParameterError, match="tool_calls must be a list"):
        validate_messages([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": "f()"}])


def test_named_templates_without_tool_support_refuse_tools() -> None:
    plain = get_template("plain")
    with pytest.raises(InvalidParameterError, match="'plain' cannot render tools") as e:
        plain.pieces([{"role": "user", "content": "x"}], tools=validate_tools(TOOLS))
    assert e.value.where == "tools"
    with pytest.raises(InvalidParameterError, match="'plain' cannot render tools") as e:
        plain.pieces(ROUND_TRIP)  # type: ignore[arg-type]
    assert e.value.where == "chat messages"
    gemma = JinjaTemplate((FIXTURES / "gemma-7b-it.jinja").read_text(encoding="utf-8"), {"bos_token": "<bos>"})
    with pytest.raises(InvalidParameterError, match="never uses the variable 'tools'"):
        gemma.chat_template(()).pieces([{"role": "user", "content": "x"}], tools=validate_tools(TOOLS))


# ---- rendering equals transformers ---------------------------------------------------------------
TOOL_TEMPLATES = {
    "llama-3.2-instruct.jinja": ({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
                                 ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                                  "<|python_tag|>", "<|eom_id|>"]),
    "qwen2.5-instruct.jinja": ({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
                               ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]),
    "mistral-nemo-instruct-2407.jinja": ({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
                                         ["<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]",
                                          "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]",
                                          "[/TOOL_RESULTS]"]),
}


def _as_transformers_takes_them(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """transformers' documented shape: a call's arguments as an object, content "" not None."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("content") is None:
            m["content"] = ""
        if "tool_calls" in m:
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                               for c in m["tool_calls"]]
        out.append(m)
    return out


@pytest.mark.parametrize("name", sorted(TOOL_TEMPLATES))
def test_tools_render_as_transformers(name: str) -> None:
    source = (FIXTURES / name).read_text(encoding="utf-8")
    specials, spellings = TOOL_TEMPLATES[name]
    tok = hf_tokenizer_with_template(source, specials)
    tpl = JinjaTemplate(source, dict(tok.special_tokens_map)).chat_template(spellings)
    conversations = [[{"role": "user", "content": "Weather in Paris?"}], ROUND_TRIP,
                     [*ROUND_TRIP, {"role": "assistant", "content": "21 C."}, {"role": "user", "content": "Thanks"}]]
    for conv in conversations:
        for tools in (TOOLS, None):
            if tools is None and conv is conversations[0]:
                continue
            want = tok.apply_chat_template(_as_transformers_takes_them(conv), tools=tools, tokenize=False,
                                           add_generation_prompt=True)
            pieces = tpl.pieces(conv, tools=validate_tools(tools) if tools else None)  # type: ignore[arg-type]
            assert render_pieces(pieces) == want, (name, conv, tools)


# ---- a real model through the whole path -----------------------------------------------------
QWEN = (FIXTURES / "qwen2.5-instruct.jinja").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    """The example plugin's bigram model, carrying Qwen2.5's template as its own (as a GGUF's
    tokenizer.chat_template would be)."""
    from openllm_hub_bigram import BUILTIN_MODEL

    with openllm_hub.load(Path(BUILTIN_MODEL), device="cpu") as m:
        m._set_model_chat_template(QWEN, {"eos_token": "<|im_end|>"})
        assert m.default_chat_template == "model" and m.chat_template().tool_format == "hermes"
        yield m


def test_a_model_answers_with_tools_offered(model: Model) -> None:
    question = [{"role": "user", "content": "Weather in Paris?"}]
    got = model.chat(question, tools=TOOLS, seed=3, max_new_tokens=24)
    streamed = list(model.stream_chat(question, tools=TOOLS, seed=3, max_new_tokens=24))
    assert "".join(c.text for c in streamed) == got.text and got.finish_reason in ("stop", "length")
    assert got.tool_calls is None  # random text: no call
    # the tools are in the prompt, rendered by the template
    rendered = render_pieces(model.chat_template().pieces(question, tools=validate_tools(TOOLS)))  # type: ignore[arg-type]
    assert '"name": "get_weather"' in rendered and "<tools>" in rendered
    assert model.chat_prompt_ids(question, tools=TOOLS) == model._pieces_ids(
        model.chat_template().pieces(question, tools=validate_tools(TOOLS)), model_specials=False)  # type: ignore[arg-type]
    assert got.usage.prompt_tokens == len(model.chat_prompt_ids(question, tools=TOOLS))
    # tool_choice none: the tools are not offered, the answer is the plain chat's
    plain = model.chat(question, seed=3, max_new_tokens=24)
    assert model.chat(question, tools=TOOLS, tool_choice="none", seed=3, max_new_tokens=24).text == plain.text


def test_tool_results_flow_back_in(model: Model) -> None:
    got = model.chat(ROUND_TRIP, tools=TOOLS, seed=5, max_new_tokens=12)
    ids = model.chat_prompt_ids(ROUND_TRIP, tools=TOOLS)
    assert got.usage.prompt_tokens == len(ids)
    rendered = render_pieces(model.chat_template().pieces(ROUND_TRIP, tools=validate_tools(TOOLS)))  # type: ignore[arg-type]
    assert rendered.endswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
                             "<|im_end|>\n<|im_start|>user\n<tool_response>\n{\"temperature\": 21}\n"
                             "</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_model_refuses_bad_tool_requests(model: Model) -> None:
    question = [{"role": "user", "content": "x"}]
    with pytest.raises(InvalidParameterError) as e:
        model.chat(question, tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}])
    assert e.value.where == "tools[0].function.parameters"
    with pytest.raises(InvalidParameterError, match="'plain' cannot render tools"):
        model.chat(question, tools=TOOLS, template="plain")
    with pytest.raises(InvalidParameterError) as e:
        model.chat(question, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    assert e.value.where == "tool_choice"


def test_calls_reach_the_completion_and_chunks() -> None:
    """The stream wrapper of stream_chat on the chunks of a finished answer (text the model could
    have written): content chunks, then the last chunk with the calls and finish_reason tool_calls."""
    from openllm_hub.core.model import Chunk, Timings, Usage, _read_tool_calls

    pieces = ["Sure. ", "<tool", '_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>']
    usage, timings = Usage(3, 3), Timings(0.1, 0.1, 1.0, 1.0)
    chunks = [Chunk(p, (i,)) for i, p in enumerate(pieces[:-1])]
    chunks.append(Chunk(pieces[-1], (2,), "stop", usage, timings))
    out = list(_read_tool_calls(iter(chunks), ToolCallStream("hermes")))
    assert [c.text for c in out] == ["Sure. ", "", ""] and [c.token_ids for c in out] == [(0,), (1,), (2,)]
    assert out[-1].finish_reason == "tool_calls" and out[-1].tool_calls is not None
    done = Model._collect(iter(out))
    assert done.text == "Sure." and done.finish_reason == "tool_calls" and done.usage == usage
    assert done.tool_calls is not None and _calls(list(done.tool_calls)) == [("get_time", {})]
    assert done.tool_calls[0].as_openai()["function"] == {"name": "get_time", "arguments": "{}"}


# ---- tiny LLaMA files (GGUF on llama.cpp, HF folder on transformers) carrying Qwen2.5's template ----
@pytest.fixture(scope="module")
def tool_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tools-llama")
    hf, plain = tiny_llama_files(base, gguf_name="plain.gguf", num_layers=1)
    set_hf_chat_template(hf, QWEN)
    return {"gguf": gguf_with_chat_template(plain, base / "qwen-template.gguf", QWEN), "hf": hf}


def test_tiny_gguf_and_hf_models_answer_with_tools(tool_files: dict[str, Path]) -> None:
    ids: dict[str, list[int]] = {}
    for kind, path in tool_files.items():
        with openllm_hub.load(path, device="cpu", threads=1) as m:
            assert m.default_chat_template == "model" and m.chat_template().tool_format == "hermes"
            for conv in ([{"role": "user", "content": "Weather in Paris?"}], ROUND_TRIP):
                got = m.chat(conv, tools=TOOLS, temperature=0, max_new_tokens=8)
                streamed = list(m.stream_chat(conv, tools=TOOLS, temperature=0, max_new_tokens=8))
                assert "".join(c.text for c in streamed) == got.text
                assert got.finish_reason in ("stop", "length", "tool_calls")
                assert got.usage.prompt_tokens == len(m.chat_prompt_ids(conv, tools=TOOLS))
            ids[kind] = m.chat_prompt_ids(ROUND_TRIP, tools=TOOLS)
            # the tool result is in the prompt, as text
            assert m.detokenize(ids[kind]).count('{"temperature": 21}') == 1
    assert ids["gguf"] == ids["hf"]


def test_constrained_answers_are_one_json_call() -> None:
    """The reader of ``required``/named answers (JSON of :func:`call_schema`, no wrapper)."""
    for fmt, key in (("hermes", "arguments"), ("llama3_json", "parameters"), ("mistral", "arguments")):
        reader = ToolCallStream(fmt, constrained=True)
        text = json.dumps({"name": "get_weather", key: {"city": "Paris"}})
        assert "".join(reader.feed(ch) for ch in text) == ""
        rest, calls = reader.finish()
        assert rest == "" and _calls(calls) == [("get_weather", {"city": "Paris"})]
        reader = ToolCallStream(fmt, constrained=True)
        reader.feed('{"name": "get_weather", "')  # cut off by max_new_tokens: content, not a crash
        assert reader.finish() == ('{"name": "get_weather", "', [])
