"""Tool (function) calls: checking the tools a caller offers, and finding the calls a model wrote.

A chat model that was trained to call tools writes its calls as text in a format of its own;
the model's chat template says which (``tool_format`` on a
:class:`~openllm_hub.core.chat.ChatTemplate`, detected from the Jinja text of a model's own
template by :func:`detect_tool_format`). The formats read here:

* ``"hermes"`` (Qwen2.5, Hermes, many fine-tunes): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``,
  one block per call, text around the blocks is content;
* ``"llama3_json"`` (Llama 3.1/3.2): the whole answer is ``{"name": ..., "parameters": {...}}``
  (optionally after ``<|python_tag|>``; several separated by ``;``);
* ``"mistral"`` (Mistral Nemo and other v3 tokenizers): ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``
  (``[TOOL_CALLS]`` is a control token that engines may render as nothing: a bare JSON list of
  calls is read too);
* ``"chatglm3"`` (THUDM's ChatGLM3 code): a first line naming the function, then
  ``tool_call(key=value, ...)`` in a code fence; read with :mod:`ast` literals only, never run.

:func:`parse_tool_calls` returns ``(content, calls)``; text that does not parse as the format's
calls stays content (a malformed call is never an error: the model wrote text).
:class:`ToolCallStream` does the same while text streams in: content before a call goes out
as it comes, a call is held until the answer ends. With ``tool_choice`` ``"required"`` or a
named function the answer is constrained by the JSON schema of one call
(:func:`call_schema`), read by :func:`parse_constrained_call`.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from openllm_hub.errors import InvalidParameterError

ToolFormat = Literal["hermes", "llama3_json", "mistral", "chatglm3"]
TOOL_FORMATS: tuple[ToolFormat, ...] = ("hermes", "llama3_json", "mistral", "chatglm3")


@dataclass(frozen=True)
class ToolCall:
    """One call the model made, OpenAI-shaped: ``arguments`` is a JSON object as a string."""

    id: str
    name: str
    arguments: str
    type: Literal["function"] = "function"

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id(fmt: str | None = None) -> str:
    """A fresh call id: Mistral's templates require 9 letters or digits, others get ``call_...``."""
    if fmt == "mistral":
        return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
    return f"call_{secrets.token_hex(12)}"


# ---- the tools a caller offers ----------------------------------------------------------------
def validate_tools(tools: Any, where: str = "tools") -> list[dict[str, Any]]:
    """OpenAI's ``tools``: a list of ``{"type": "function", "function": {"name", "description"?,
    "parameters"?}}``; ``parameters`` must be a JSON-schema object (``{"type": "object", ...}``).
    Returns plain dicts (what chat templates receive)."""
    if not isinstance(tools, (list, tuple)):
        raise InvalidParameterError(f"{where} must be a list of tools, got {type(tools).__name__}", where=where)
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, tool in enumerate(tools):
        at = f"{where}[{i}]"
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            raise InvalidParameterError(f"{at} must be {{'type': 'function', 'function': {{...}}}}", where=at)
        fn = tool.get("function")
        if not isinstance(fn, Mapping):
            raise InvalidParameterError(f"{at}.function must be an object with a name", where=f"{at}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise InvalidParameterError(f"{at}.function.name must be 1-64 letters, digits, '_', '.' or '-', "
                                        f"got {name!r}", where=f"{at}.function.name")
        if name in names:
            raise InvalidParameterError(f"two tools are named {name!r}", where=f"{at}.function.name")
        names.add(name)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, Mapping) or params.get("type", "object") != "object":
            raise InvalidParameterError(f"{at}.function.parameters must be a JSON schema of an object "
                                        f"({{'type': 'object', 'properties': {{...}}}}), got {params!r}",
                                        where=f"{at}.function.parameters",
                                        fix="describe the arguments as the properties of one object")
        out.append({"type": "function", "function": {**dict(fn), "parameters": dict(params)}})
    return out


def tool_choice_mode(tool_choice: Any, tools: Sequence[Mapping[str, Any]] | None) -> tuple[str, str | None]:
    """``(mode, name)`` of OpenAI's ``tool_choice``: ``"none"``, ``"auto"`` (the default with
    tools), ``"required"``, or a named function (``("required", name)``)."""
    names = [t["function"]["name"] for t in tools or ()]
    if tool_choice is None:
        return ("auto" if names else "none"), None
    if tool_choice in ("none", "auto", "required"):
        if tool_choice != "none" and not names:
            raise InvalidParameterError(f"tool_choice is {tool_choice!r} but no tools are given", where="tool_choice",
                                        fix="pass tools, or leave tool_choice out")
        return str(tool_choice), None
    fn = tool_choice.get("function") if isinstance(tool_choice, Mapping) else None
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(name, str) or tool_choice.get("type", "function") != "function":
        raise InvalidParameterError(f"tool_choice must be 'none', 'auto', 'required' or "
                                    f"{{'type': 'function', 'function': {{'name': ...}}}}, got {tool_choice!r}",
                                    where="tool_choice")
    if name not in names:
        raise InvalidParameterError(f"tool_choice names the function {name!r}, which is not among the tools "
                                    f"({', '.join(names) or 'none given'})", where="tool_choice")
    return "required", name


def arguments_as_objects(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a chat template: assistant ``tool_calls`` whose ``arguments`` are a JSON
    string (OpenAI's shape) get them as an object (what published templates ``tojson``)."""
    out = []
    for m in messages:
        m = dict(m)
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            fixed = []
            for call in calls:
                call = dict(call)
                fn = call.get("function")
                if isinstance(fn, Mapping) and isinstance(fn.get("arguments"), str):
                    try:
                        call["function"] = {**dict(fn), "arguments": json.loads(fn["arguments"])}
                    except json.JSONDecodeError:
                        pass
                fixed.append(call)
            m["tool_calls"] = fixed
        out.append(m)
    return out


# ---- which format a template writes ------------------------------------------------------------
def detect_tool_format(source: str) -> ToolFormat | None:
    """The call format a Jinja chat template teaches its model, from the template text."""
    if "<tool_call>" in source:
        return "hermes"
    if "[TOOL_CALLS]" in source:
        return "mistral"
    if "<|python_tag|>" in source or '"parameters": ' in source or "Environment: ipython" in source:
        return "llama3_json"
    if "<|observation|>" in source or ("[gMASK]sop" in source and "<|" in source):
        return "chatglm3"
    return None


# ---- reading calls ---------------------------------------------------------------------------
def _call(obj: Any, fmt: str, args_key: str = "arguments") -> ToolCall | None:
    if not isinstance(obj, Mapping) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get(args_key, obj.get("arguments", obj.get("parameters", {})))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, Mapping):
        return None
    return ToolCall(new_call_id(fmt), obj["name"], json.dumps(args, ensure_ascii=False))


def _json_values(text: str, sep: str = "") -> list[Any] | None:
    """Every JSON value in ``text`` (separated by whitespace and ``sep``), None if any part is not JSON."""
    decoder, pos, out = json.JSONDecoder(), 0, list[Any]()
    while True:
        while pos < len(text) and (text[pos].isspace() or (sep and text[pos] == sep)):
            pos += 1
        if pos >= len(text):
            return out
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        out.append(value)


_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)


def _hermes(text: str) -> tuple[str, list[ToolCall]]:
    if "<tool_call>" not in text:
        return text, []
    calls = []
    for m in _HERMES.finditer(text):
        values = _json_values(m.group(1))
        if not values or len(values) != 1 or (call := _call(values[0], "hermes")) is None:
            return text, []
        calls.append(call)
    return _HERMES.sub("", text).strip(), calls


def _llama3(text: str) -> tuple[str, list[ToolCall]]:
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return text, []
    values = _json_values(body, ";")
    calls = [_call(v, "llama3_json", "parameters") for v in values or ()]
    if not calls or any(c is None for c in calls):
        return text, []
    return "", [c for c in calls if c is not None]


def _mistral(text: str) -> tuple[str, list[ToolCall]]:
    head, marker, rest = text.partition("[TOOL_CALLS]")
    if not marker:
        head, rest = "", text.strip()
        if not rest.startswith("[{"):
            return text, []
    values = _json_values(rest)
    if not values or len(values) != 1 or not isinstance(values[0], list) or not values[0]:
        return text, []
    calls = [_call(v, "mistral") for v in values[0]]
    if any(c is None for c in calls):
        return text, []
    return head.strip(), [c for c in calls if c is not None]


_FENCE = re.compile(r"^\s*```(?:python)?\s*\n(.*?)\n?```\s*$", re.DOTALL)


def _chatglm3_args(code: str) -> dict[str, Any] | None:
    """``tool_call(a=1, b='x')`` as ``{"a": 1, "b": "x"}``: Python literals only (ChatGLM3's
    own demo ``eval``s this line; here nothing is run)."""
    try:
        tree = ast.parse(code.strip(), mode="eval")
    except SyntaxError:
        return None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "tool_call"
            and not call.args and all(k.arg is not None for k in call.keywords)):
        return None
    try:
        return {str(k.arg): ast.literal_eval(k.value) for k in call.keywords}
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None


def _chatglm3(text: str) -> tuple[str, list[ToolCall]]:
    contents, calls = [], []
    for segment in text.split("<|assistant|>"):
        metadata, _, body = segment.partition("\n") if "\n" in segment else ("", "", segment)
        name = metadata.strip()
        if not name:
            contents.append(body.strip())
            continue
        fence = _FENCE.match(body)
        args = _chatglm3_args(fence.group(1) if fence else body)
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name) or args is None:
            return text, []
        calls.append(ToolCall(new_call_id("chatglm3"), name, json.dumps(args, ensure_ascii=False)))
    if not calls:
        return text, []
    return "\n".join(c for c in contents if c), calls


_PARSERS = {"hermes": _hermes, "llama3_json": _llama3, "mistral": _mistral, "chatglm3": _chatglm3}


def check_tool_format(fmt: str) -> ToolFormat:
    if fmt not in _PARSERS:
        raise InvalidParameterError(f"unknown tool call format {fmt!r}", where="tool_format",
                                    fix=f"use one of {', '.join(TOOL_FORMATS)}")
    return fmt  # type: ignore[return-value]


def parse_tool_calls(text: str, fmt: str) -> tuple[str, list[ToolCall]]:
    """``(content, calls)`` of an answer written in ``fmt``; an answer whose calls do not parse
    is all content (no calls)."""
    return _PARSERS[check_tool_format(fmt)](text)


# ---- constrained calls -----------------------------------------------------------------------
def _args_key(fmt: str) -> str:
    return "parameters" if fmt == "llama3_json" else "arguments"


def call_schema(tools: Sequence[Mapping[str, Any]], fmt: str, name: str | None = None) -> dict[str, Any]:
    """The JSON schema of one call to ``name`` (None: to any of ``tools``), as a JSON object
    ``{"name": ..., "<arguments key of fmt>": {...}}`` for the generation's ``json_schema``."""
    key = _args_key(fmt)
    options = [{"type": "object",
                "properties": {"name": {"const": t["function"]["name"]},
                               key: t["function"].get("parameters") or {"type": "object"}},
                "required": ["name", key], "additionalProperties": False}
               for t in tools if name is None or t["function"]["name"] == name]
    return options[0] if len(options) == 1 else {"anyOf": options}


def parse_constrained_call(text: str, fmt: str) -> tuple[str, list[ToolCall]]:
    """The call of an answer constrained by :func:`call_schema` (text that is not one stays content)."""
    values = _json_values(text)
    call = _call(values[0], fmt, _args_key(fmt)) if values and len(values) == 1 else None
    return (text, []) if call is None else ("", [call])


# ---- streaming -----------------------------------------------------------------------------
class ToolCallStream:
    """Reads an answer as it streams: :meth:`feed` returns the content that may go out now
    (text before anything that could start a call); :meth:`finish` returns the rest of the
    content and the calls. ``constrained``: the whole answer is one JSON call
    (:func:`parse_constrained_call`)."""

    #: what starts a call at the start of an answer, and (hermes, mistral) after some content
    _STARTS: Mapping[str, tuple[str, ...]] = {"hermes": ("<tool_call>",), "mistral": ("[TOOL_CALLS]", "[{"),
                                              "llama3_json": ("<|python_tag|>", "{"), "chatglm3": ()}
    _INNER: Mapping[str, str] = {"hermes": "<tool_call>", "mistral": "[TOOL_CALLS]"}

    def __init__(self, fmt: str, *, constrained: bool = False) -> None:
        self.fmt = check_tool_format(fmt)
        self.constrained = constrained
        self._buffer = ""
        self._held = constrained  # True once a call may have started: everything from here waits
        self._sent = 0  # characters of the buffer already given out as content

    def feed(self, text: str) -> str:
        """Add streamed text; returns the content that can go out now."""
        self._buffer += text
        if self._held:
            return ""
        if self.fmt == "chatglm3":  # the first line names a function, or is empty for a plain answer
            if self._sent == 0:
                if "\n" not in self._buffer:
                    return ""
                if self._buffer.partition("\n")[0].strip():
                    self._held = True
                    return ""
            out = self._buffer[self._sent:]
            self._sent += len(out)
            return out
        if self._sent == 0:
            head = self._buffer.lstrip()
            starts = self._STARTS[self.fmt]
            if any(head.startswith(m) for m in starts):
                self._held = True
                return ""
            if any(m.startswith(head) for m in starts):
                return ""  # not yet known (also: only whitespace so far)
        pending = self._buffer[self._sent:]
        cut = len(pending)
        inner = self._INNER.get(self.fmt)
        if inner is not None:
            at = pending.find(inner)
            if at >= 0:
                cut, self._held = at, True
            else:  # hold back a tail that could be the start of the marker
                for k in range(min(len(inner) - 1, len(pending)), 0, -1):
                    if inner.startswith(pending[-k:]):
                        cut = len(pending) - k
                        break
        out = pending[:cut]
        self._sent += len(out)
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The content not yet given out, and the calls (the given-out content holds none)."""
        rest = self._buffer[self._sent:]
        parse = parse_constrained_call if self.constrained else parse_tool_calls
        content, calls = parse(rest, self.fmt)
        return (content, calls) if calls else (rest, [])


__all__ = ["TOOL_FORMATS", "ToolCall", "ToolCallStream", "ToolFormat", "arguments_as_objects", "call_schema",
           "check_tool_format", "detect_tool_format", "new_call_id", "parse_constrained_call", "parse_tool_calls",
           "tool_choice_mode", "validate_tools"]
