"""The chat formats of the three ChatGLM versions, as core chat templates.

* ``chatglm`` (ChatGLM-6B's ``chat()``): the bare query when there is no history; otherwise
  ``[Round i]\\n问：{query}\\n答：{response}\\n`` per past turn with i counted from 0, then
  ``[Round n]\\n问：{query}\\n答：``. The tokenizer appends ``[gMASK] <sop>``.
* ``chatglm2`` (ChatGLM2-6B's ``build_prompt``): rounds counted from 1,
  ``[Round i]\\n\\n问：{query}\\n\\n答：{response}\\n\\n``, last ``[Round n]\\n\\n问：{query}\\n\\n答：``.
  The tokenizer prepends ``[gMASK] sop``.
* ``chatglm3`` (ChatGLM3-6B's ``build_chat_input``): ``<|system|>\\n{system}`` then
  ``<|user|>\\n{query}`` and ``<|assistant|>\\n{response}`` per turn, ending with
  ``<|assistant|>``; the model stops at ``<|user|>`` / ``<|observation|>`` (eos ids of the
  v3 engine). Role tokens are :class:`Special` pieces inserted by id, and each role's metadata
  line (``"\\n"``) is tokenized apart from the message (a :class:`Cut`), as the official
  ``build_single_message`` does; message text is plain text, so ``<|user|>`` typed by a user
  stays text.

  Tools (``build_chat_input`` of the same file, the tool example of THUDM's ``PROMPT.md``, and
  ``process_response`` of ``modeling_chatglm.py``): the offered functions go in the system
  message, ``"Answer the following questions as best as you can. You have access to the
  following tools:"`` (the caller's system prompt instead, when given) + ``"\\n"`` + the
  functions as ``json.dumps(tools, indent=4, ensure_ascii=False)``, each function as ChatGLM3
  takes it (``{"name", "description", "parameters"}``, OpenAI's ``{"type": "function",
  "function": ...}`` wrapper removed); a past call is an ``<|assistant|>`` message whose metadata
  line is the function's name and whose message is ``"```python\\ntool_call(k=v, ...)\\n```"``
  (one message per call, after the turn's text if it has any); a tool result is an
  ``<|observation|>`` message. The model writes its calls the same way (format ``chatglm3`` of
  :mod:`openllm_hub.core.tool_calls`) and stops at ``<|observation|>``.

The model's own prompt tokens (``[gMASK] sop`` before v2/v3 prompts, ``[gMASK] <sop>`` after
v1 prompts) are added by the model (``model_specials``).

Neither ChatGLM-6B nor ChatGLM2-6B has a system role; a system message is put before the
first round followed by a blank line (an extension; the originals have no such input).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from openllm_hub.plugin import (
    ChatTemplate,
    Cut,
    GenerationConfig,
    InvalidParameterError,
    Message,
    Piece,
    Special,
    Text,
    tool_call_code,
)

#: ChatGLM3's system prompt for tools (THUDM/ChatGLM3 ``PROMPT.md``, ``openai_api_demo/utils.py``)
TOOL_PROMPT = "Answer the following questions as best as you can. You have access to the following tools:"

#: Sampling defaults of the official chat() of each version (HF's top_k=50 default applied
#: there too); both engines (torch, llama.cpp) start from these.
CHAT_DEFAULTS = {
    "chatglm": GenerationConfig(temperature=0.95, top_p=0.7, top_k=50, repeat_penalty=1.0),
    "chatglm2": GenerationConfig(temperature=0.8, top_p=0.8, top_k=50, repeat_penalty=1.0),
    "chatglm3": GenerationConfig(temperature=0.8, top_p=0.8, top_k=50, repeat_penalty=1.0),
}


def _render_v1(tpl: ChatTemplate, msgs: Sequence[Message]) -> str:
    system = next((m["content"] for m in msgs if m["role"] == "system"), None)
    turns = [m for m in msgs if m["role"] != "system"]
    head = tpl.system.format(content=system) if system else ""
    if len(turns) == 1:
        return head + turns[0]["content"]
    text = head
    pairs = list(zip(turns[0:-1:2], turns[1:-1:2], strict=True))
    for i, (q, a) in enumerate(pairs):
        text += f"[Round {i}]\n问：{q['content']}\n答：{a['content']}\n"
    return text + f"[Round {len(pairs)}]\n问：{turns[-1]['content']}\n答："


def _pieces_v3(tpl: ChatTemplate, msgs: Sequence[Message]) -> list[Piece]:
    """``build_chat_input``: per message ``<|role|>``, its metadata line ``"\\n"`` tokenized on
    its own, the message; then ``<|assistant|>``."""
    pieces: list[Piece] = []
    for m in msgs:
        pieces += [Special(f"<|{m['role']}|>"), Text("\n"), Cut(), Text(m["content"])]
    return [*pieces, Special("<|assistant|>")]


def _v3_message(role: str, metadata: str, content: str) -> list[Piece]:
    """``build_single_message``: ``<|role|>``, ``metadata + "\\n"`` tokenized on its own, the message."""
    return [Special(f"<|{role}|>"), Text(f"{metadata}\n"), Cut(), Text(content)]


def _call_arguments(call: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """(name, arguments) of an OpenAI-shaped call of a past assistant message."""
    fn = call.get("function")
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(name, str) or not name or "\n" in name:
        raise InvalidParameterError(f"{where}.function.name must be the called function's name, got {name!r}",
                                    where=f"{where}.function.name")
    assert isinstance(fn, Mapping)
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            args = None
    if not isinstance(args, Mapping):
        raise InvalidParameterError(f"{where}.function.arguments must be a JSON object (as a string or an "
                                    f"object), got {fn.get('arguments')!r}", where=f"{where}.function.arguments",
                                    fix="pass the arguments the model's call gave back")
    return name, dict(args)


def _tools_v3(tpl: ChatTemplate, msgs: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None) -> list[Piece]:
    """``build_chat_input`` with tools (module docstring): the functions in the system message,
    past calls as ``<|assistant|>name`` messages, tool results as ``<|observation|>`` messages."""
    pieces: list[Piece] = []
    system = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else None
    if tools is not None:
        functions = [dict(t["function"]) for t in tools]
        content = (TOOL_PROMPT if system is None else system) + "\n" + json.dumps(functions, indent=4,
                                                                                 ensure_ascii=False)
        pieces += _v3_message("system", "", content)
    elif system is not None:
        pieces += _v3_message("system", "", system)
    for i, m in enumerate(msgs):
        calls = m.get("tool_calls")
        if m["role"] == "system":
            continue
        if m["role"] == "tool":
            pieces += _v3_message("observation", "", m["content"])
        elif m["role"] == "assistant" and calls:
            if m["content"]:
                pieces += _v3_message("assistant", "", m["content"])
            for j, call in enumerate(calls):
                name, args = _call_arguments(call, f"chat messages[{i}].tool_calls[{j}]")
                pieces += _v3_message("assistant", name, f"```python\n{tool_call_code(args)}\n```")
        else:
            pieces += _v3_message(m["role"], "", m["content"])
    return [*pieces, Special("<|assistant|>")]


TEMPLATES = (
    ChatTemplate(
        name="chatglm",
        system="{content}\n\n",
        render_fn=_render_v1,
        description="ChatGLM-6B: bare query, or [Round i] 问：/答： rounds counted from 0",
    ),
    ChatTemplate(
        name="chatglm2",
        user="[Round {round}]\n\n问：{content}\n\n答：",
        assistant="{content}\n\n",
        system="{content}\n\n",
        description="ChatGLM2-6B: [Round i] 问：/答： rounds counted from 1, blank lines between",
    ),
    ChatTemplate(
        name="chatglm3",
        pieces_fn=_pieces_v3,
        tools_fn=_tools_v3,
        tool_format="chatglm3",
        description="ChatGLM3-6B: <|system|>/<|user|>/<|assistant|> role tokens; tools in the system message, "
                    "calls as tool_call(...), results as <|observation|>",
    ),
)
