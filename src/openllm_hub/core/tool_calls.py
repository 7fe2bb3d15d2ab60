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
* ``"chatglm3"`` (THUDM's ChatGLM3 code: ``modeling_chatglm.py`` ``process_response``, the
  ``PROMPT.md`` tool example): the metadata line of an ``<|assistant|>`` segment names the
  function, then ``tool_call(key=value, ...)`` in a ```` ```python ```` fence; read with
  :mod:`ast` literals only, never run (the official code ``eval`` it). Values are read as
  JSON first (what a constrained call writes), else as Python literals (what the model writes:
  ``True``, ``'x'``); :func:`tool_call_code` writes a past call back in this form. A call after
  text in the same answer starts with ``<|assistant|>``, a control token engines leave out of
  the text: the offered tools' names (``names``) tell where the call starts.

:func:`parse_tool_calls` returns ``(content, calls)``; text that does not parse as the format's
calls stays content (a malformed call is never an error: the model wrote text).
:class:`ToolCallStream` does the same while text streams in: content before a call goes out
as it comes, a call is held until the answer ends. With ``tool_choice`` ``"required"`` or a
named function the answer is constrained so the call always parses
(:func:`call_constraint`): formats whose calls are JSON by the JSON schema of one call
(:func:`call_schema`, read by :func:`parse_constrained_call`), formats with a syntax of their
own (ChatGLM3) by a grammar of that syntax (:func:`call_grammar`, read by the format's own
parser), so the model writes its calls the way it was trained to.
"""

from __future__ import annotations

import ast
import json
import keyword
import re
import secrets
import string
from collections.abc import Callable, Mapping, Sequence
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


def _literal(code: str, node: ast.expr) -> Any:
    """The value of one argument: its source as JSON when it is JSON (``true``, ``null``,
    ``"a\\/b"`` as JSON reads them), else as a Python literal (``True``, ``'x'``)."""
    source = ast.get_source_segment(code, node)
    if source is not None:
        try:
            return json.loads(source)
        except (json.JSONDecodeError, RecursionError):
            pass
    return ast.literal_eval(node)


def _chatglm3_args(code: str) -> dict[str, Any] | None:
    """``tool_call(a=1, b='x')`` as ``{"a": 1, "b": "x"}`` (also ``tool_call(**{"a-b": 1})``
    for names that are not Python identifiers): literals only (ChatGLM3's own demo runs ``eval`` on
    this line; here nothing is run). None when it is anything else."""
    code = code.strip()
    try:
        tree = ast.parse(code, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "tool_call"
            and not call.args):
        return None
    out: dict[str, Any] = {}
    try:
        for k in call.keywords:
            value = _literal(code, k.value)
            if k.arg is not None:
                out[k.arg] = value
            elif isinstance(value, dict) and all(isinstance(key, str) for key in value):
                out.update(value)
            else:
                return None
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return None
    return out


def _py(value: Any) -> str:
    """``value`` (JSON data) as a Python literal: strings as JSON spells them (a valid Python
    string literal, double-quoted as in ChatGLM3's examples), ``True``/``False``/``None``."""
    if value is True:
        return "True"
    if value is False:
        return "False"
    if value is None:
        return "None"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {_py(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_py(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _keyword(name: str) -> bool:
    """Whether ``name`` can be a keyword argument of a Python call."""
    return name.isidentifier() and not keyword.iskeyword(name)


def tool_call_code(arguments: Mapping[str, Any]) -> str:
    """ChatGLM3's call line for a call's arguments: ``tool_call(city="Paris", days=3)``, as in
    THUDM's ``PROMPT.md`` tool example (names that are not Python identifiers go in a
    ``**{...}`` at the end, which Python's call syntax, and so the official ``eval``, accepts)."""
    plain = [f"{k}={_py(v)}" for k, v in arguments.items() if _keyword(str(k))]
    rest = {k: v for k, v in arguments.items() if not _keyword(str(k))}
    return "tool_call(" + ", ".join([*plain, *([f"**{_py(rest)}"] if rest else [])]) + ")"


_OPEN = "\n```python\n"


def _ending_name(head: str, names: Sequence[str]) -> str | None:
    """The longest of ``names`` that ``head`` ends with."""
    found = [n for n in names if n and head.endswith(n)]
    return max(found, key=len) if found else None


def _chatglm3_after_text(text: str, names: Sequence[str]) -> tuple[str, list[ToolCall]] | None:
    """Calls after text in one answer: ChatGLM3 starts each call with its ``<|assistant|>``
    control token, which engines leave out of the text, so the call's name follows the text
    directly (``"Let me check.get_weather\n```python\n..."``). Told apart by the offered
    tools' names (the longest one the text before the fence ends with); None when it is not so."""
    parts = text.split(_OPEN)
    if len(parts) < 2 or not names:
        return None
    content, calls, head = "", [], parts[0]
    for i, part in enumerate(parts[1:]):
        name = _ending_name(head, names)
        if name is None or (i > 0 and head[: -len(name)].strip()):
            return None
        if i == 0:
            content = head[: -len(name)]
        body, _, head = part.partition("\n```")
        args = _chatglm3_args(body)
        if args is None:
            return None
        calls.append(ToolCall(new_call_id("chatglm3"), name, json.dumps(args, ensure_ascii=False)))
    return (content.strip(), calls) if not head.strip() else None


def _chatglm3(text: str, names: Sequence[str] = ()) -> tuple[str, list[ToolCall]]:
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
            return _chatglm3_after_text(text, names) or (text, [])
        calls.append(ToolCall(new_call_id("chatglm3"), name, json.dumps(args, ensure_ascii=False)))
    if not calls:
        return _chatglm3_after_text(text, names) or (text, [])
    return "\n".join(c for c in contents if c), calls


_PARSERS: Mapping[str, Callable[[str, Sequence[str]], tuple[str, list[ToolCall]]]] = {
    "hermes": lambda text, _: _hermes(text), "llama3_json": lambda text, _: _llama3(text),
    "mistral": lambda text, _: _mistral(text), "chatglm3": _chatglm3}


def check_tool_format(fmt: str) -> ToolFormat:
    if fmt not in _PARSERS:
        raise InvalidParameterError(f"unknown tool call format {fmt!r}", where="tool_format",
                                    fix=f"use one of {', '.join(TOOL_FORMATS)}")
    return fmt  # type: ignore[return-value]


def parse_tool_calls(text: str, fmt: str, names: Sequence[str] = ()) -> tuple[str, list[ToolCall]]:
    """``(content, calls)`` of an answer written in ``fmt``; an answer whose calls do not parse
    is all content (no calls). ``names``: the offered tools' names, which tell where a ChatGLM3
    call starts after text (its ``<|assistant|>`` token is not in the text)."""
    return _PARSERS[check_tool_format(fmt)](text, names)


# ---- constrained calls -----------------------------------------------------------------------
def _lark(text: str) -> str:
    """``text`` as a Lark string literal."""
    return json.dumps(text, ensure_ascii=False)


def _chatglm3_value(schema: Any) -> str:
    """A Lark expression for one argument's value: Python's ``True``/``False``/``None`` for a
    plain boolean/null (what the model writes), otherwise JSON of ``schema`` (llguidance's
    ``%json``; the reader takes JSON values too)."""
    if isinstance(schema, Mapping) and set(schema) <= {"type", "description", "title"}:
        if schema.get("type") == "boolean":
            return '("True" | "False")'
        if schema.get("type") == "null":
            return '"None"'
    return "%json " + json.dumps(schema if isinstance(schema, Mapping) else {}, ensure_ascii=False)


def _chatglm3_call_rules(k: int, name: str, params: Mapping[str, Any]) -> list[str]:
    """The Lark rules of one ChatGLM3 call (rule ``call_<k>``): the metadata line (the name),
    then ``tool_call(...)`` in a python fence, its keyword arguments those of ``params``:
    required ones always, optional ones or not, in the schema's order. Schemas whose
    arguments cannot be keywords one by one (references to ``$defs``, combinators, a required
    name that is not an identifier) take ``tool_call(**<JSON of params>)``."""
    props = params.get("properties") or {}
    required = set(params.get("required") or ())
    head = f'call_{k}: " "? {_lark(name + chr(10) + "```python" + chr(10) + "tool_call(")} '
    tail = f' {_lark(")" + chr(10) + "```")}'
    whole = ("$defs" in params or "definitions" in params or any(c in params for c in ("anyOf", "oneOf", "allOf"))
             or not isinstance(props, Mapping) or not required <= set(props)
             or not all(_keyword(str(p)) for p in required))
    if whole:
        return [f"{head}\"**\" args_{k}{tail}", f"args_{k}: %json {json.dumps(dict(params), ensure_ascii=False)}"]
    items = [(str(p), p in required) for p in props if _keyword(str(p))]
    rules = [f"v_{k}_{j}: {_chatglm3_value(props[p])}" for j, (p, _) in enumerate(items)]

    def item(j: int) -> str:
        return f"{_lark(items[j][0] + '=')} v_{k}_{j}"

    def rest(i: int) -> str:  # items i.. each after ", " (optional ones optional)
        return " ".join(f'", " {item(j)}' if items[j][1] else f'(", " {item(j)})?' for j in range(i, len(items)))

    first_required = next((j for j, (_, req) in enumerate(items) if req), None)
    heads = [f"{item(i)} {rest(i + 1)}".strip() for i in range(len(items) if first_required is None
                                                                else first_required + 1)]
    args = "(" + " | ".join(heads) + ")" + ("?" if first_required is None else "") if heads else ""
    return [f"{head}{args}{tail}", *rules]


#: formats whose calls are not JSON -> the Lark rules ``call_<k>`` of one call in their own
#: syntax (:func:`call_grammar`)
_OWN_SYNTAX: Mapping[str, Callable[[int, str, Mapping[str, Any]], list[str]]] = {"chatglm3": _chatglm3_call_rules}


def call_grammar(tools: Sequence[Mapping[str, Any]], fmt: str, name: str | None = None) -> str | None:
    """A Lark grammar (llguidance's syntax) of one call to ``name`` (None: to any of ``tools``)
    written in ``fmt``'s own syntax, for formats whose calls are not JSON (``chatglm3``);
    None for the JSON formats (constrained by :func:`call_schema`)."""
    call_rules = _OWN_SYNTAX.get(check_tool_format(fmt))
    if call_rules is None:
        return None
    chosen = [t["function"] for t in tools if name is None or t["function"]["name"] == name]
    rules = [r for k, fn in enumerate(chosen)
             for r in call_rules(k, fn["name"], fn.get("parameters") or {"type": "object"})]
    return "start: " + " | ".join(f"call_{k}" for k in range(len(chosen))) + "\n" + "\n".join(rules) + "\n"


def check_call_schemas(tools: Sequence[Mapping[str, Any]], name: str | None = None) -> None:
    """Compile the ``parameters`` schema of each tool a required/named choice may call (``name``,
    or every tool), so that one the constrained-decoding library cannot compile is an error
    naming that tool's field (the combined constraint of :func:`call_constraint` would only
    name ``json_schema``). Without llguidance nothing is checked here: the constraint itself
    then names the missing extra."""
    try:
        import llguidance  # noqa: F401 - the optional extra 'structured'
    except ImportError:
        return
    from openllm_hub.core.config import GenerationConfig
    from openllm_hub.core.constrain import grammar_text

    for i, tool in enumerate(tools):
        fn = tool["function"]
        if name is not None and fn["name"] != name:
            continue
        where = f"tools[{i}].function.parameters"
        try:
            grammar_text(GenerationConfig(json_schema=dict(fn.get("parameters") or {"type": "object"})))
        except InvalidParameterError as exc:
            why = re.sub(r"^the json_schema [^:]*: ", "", exc.what)  # the schema is this field, not json_schema
            raise InvalidParameterError(f"{where} (of {fn['name']!r}) cannot be compiled into the constraint of a "
                                        f"required tool call: {why}", where=where,
                                        fix=f"{exc.fix or 'fix the schema'}; or use tool_choice 'auto', which "
                                            "does not constrain the answer") from None


def call_constraint(tools: Sequence[Mapping[str, Any]], fmt: str, name: str | None = None) -> dict[str, Any]:
    """The generation parameter that constrains a ``required``/named answer to one call in
    ``fmt``: ``{"grammar": ...}`` (:func:`call_grammar`) or ``{"json_schema": ...}``
    (:func:`call_schema`)."""
    grammar = call_grammar(tools, fmt, name)
    return {"grammar": grammar} if grammar is not None else {"json_schema": call_schema(tools, fmt, name)}


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
    content and the calls. ``constrained``: the whole answer is one call, constrained by
    :func:`call_constraint` (JSON read by :func:`parse_constrained_call`, or the format's own
    syntax read by its parser)."""

    #: what starts a call at the start of an answer, and (hermes, mistral) after some content
    _STARTS: Mapping[str, tuple[str, ...]] = {"hermes": ("<tool_call>",), "mistral": ("[TOOL_CALLS]", "[{"),
                                              "llama3_json": ("<|python_tag|>", "{"), "chatglm3": ()}
    _INNER: Mapping[str, str] = {"hermes": "<tool_call>", "mistral": "[TOOL_CALLS]"}

    def __init__(self, fmt: str, *, constrained: bool = False, names: Sequence[str] = ()) -> None:
        self.fmt = check_tool_format(fmt)
        self.constrained = constrained
        self.names = tuple(names)  # the offered tools' names (see parse_tool_calls)
        #: ChatGLM3: what starts a call after text (its control token, when an engine's text keeps it)
        self._markers = ("<|assistant|>", *(n + _OPEN for n in self.names if n))
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
                first = self._buffer.partition("\n")[0].strip()
                if first and (not self.names or first in self.names):
                    self._held = True
                    return ""
            return self._chatglm3_text()
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

    def _chatglm3_text(self) -> str:
        """Text of a ChatGLM3 answer that may go out: up to a call after the text (an offered
        name followed by the python fence, or ``<|assistant|>``), holding back a tail that
        could start one."""
        pending = self._buffer[self._sent:]
        cut = len(pending)
        starts = [i for i in (pending.find(m) for m in self._markers) if i >= 0]
        if starts:
            cut, self._held = min(starts), True
        else:
            for k in range(min(max((len(m) for m in self._markers), default=1) - 1, len(pending)), 0, -1):
                if any(m.startswith(pending[-k:]) for m in self._markers):
                    cut = len(pending) - k
                    break
        out = pending[:cut]
        self._sent += len(out)
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The content not yet given out, and the calls (the given-out content holds none)."""
        rest = self._buffer[self._sent:]
        json_call = self.constrained and self.fmt not in _OWN_SYNTAX
        content, calls = parse_constrained_call(rest, self.fmt) if json_call else parse_tool_calls(rest, self.fmt,
                                                                                                     self.names)
        return (content, calls) if calls else (rest, [])


__all__ = ["TOOL_FORMATS", "ToolCall", "ToolCallStream", "ToolFormat", "arguments_as_objects", "call_constraint",
           "call_grammar", "call_schema", "check_call_schemas", "check_tool_format", "detect_tool_format",
           "new_call_id", "parse_constrained_call", "parse_tool_calls", "tool_call_code", "tool_choice_mode",
           "validate_tools"]
