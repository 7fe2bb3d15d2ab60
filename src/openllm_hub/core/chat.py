"""Chat templates: how a conversation becomes a prompt, as data.

A :class:`ChatTemplate` names the text around each role and the stop strings that end an
answer. Plugins add templates through the ``register_chat_templates`` hook or their
``Family.chat_templates``; the registry (:mod:`openllm_hub.core.registry`) holds the table and
refuses a name another plugin already took; the generic ones (``plain``, ``chatml``) come from
the core's built-in plugin (:mod:`openllm_hub.core.builtin_plugin`). A model names its
default and a caller may pick another by name.

A template lays a conversation out as a sequence of *pieces* (:meth:`ChatTemplate.pieces`):
:class:`Text` (tokenized as plain text: special-token spellings in it stay text, so a message
can never inject a control token) and :class:`Special` (a control token named by its spelling,
``<s>``, ``</s>``, ``<|user|>``, ``[gMASK]``, which the model resolves to its id). The model
turns pieces into ids (:meth:`~openllm_hub.core.model.Model.chat_prompt_ids`); message text is
always a :class:`Text`. :class:`Cut` ends a run of text where the official tokenizer encodes two
texts separately (ChatGLM3's role metadata line and the message). ``render()`` joins the pieces
into a string for display only (specials spelled out); it is never the path to ids. Layouts that
plain formats cannot express give a ``pieces_fn``; a model's own Jinja template
(:mod:`openllm_hub.core.chat_jinja`, the reserved name ``"model"``) produces the same pieces.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

from openllm_hub.errors import InvalidParameterError

Role = Literal["system", "user", "assistant", "tool"]

#: The reserved template name of a model's own template (the Jinja text its file ships, see
#: :mod:`openllm_hub.core.chat_jinja`): ``model.chat_template("model")``; no plugin may take it.
MODEL_TEMPLATE = "model"
#: What to do when a template cannot render tools (templates may say more: ``no_tools_fix``)
NO_TOOLS_FIX = "use the model's own template ('model') when it supports tools, or leave tools out"


class Message(TypedDict):
    """One chat turn, OpenAI-shaped. Tools: an assistant turn may hold ``tool_calls`` (OpenAI's
    ``[{"id", "type": "function", "function": {"name", "arguments"}}]``), answered by ``tool``
    turns (``content``: the result, ``tool_call_id``: the call's id, ``name`` optional)."""

    role: Role
    content: str
    tool_calls: NotRequired[list[dict[str, Any]]]
    tool_call_id: NotRequired[str]
    name: NotRequired[str]


@dataclass(frozen=True)
class Text:
    """Plain text of a prompt. Adjacent :class:`Text` pieces form one run, tokenized as one
    string with the model's plain-text tokenization: special-token spellings in it stay text."""

    text: str


@dataclass(frozen=True)
class Special:
    """A control token by its spelling in the model's vocabulary (``<s>``, ``</s>``,
    ``<|user|>``, ``[gMASK]``, ``sop``, ``<|im_start|>``); the model inserts its id. A model
    without it refuses the prompt, unless ``optional``: then the spelling is plain text (for
    generic templates such as ChatML, which base models without the tokens also use)."""

    name: str
    optional: bool = False


@dataclass(frozen=True)
class Cut:
    """Ends a run of text: the texts on either side are tokenized separately (ChatGLM3's
    tokenizer encodes a role's metadata line apart from the message, and so must we)."""


#: One element of a template's output.
Piece = Text | Special | Cut


def render_pieces(pieces: Iterable[Piece]) -> str:
    """The pieces as one string, specials spelled out: for display and debugging only."""
    return "".join(p.text if isinstance(p, Text) else p.name if isinstance(p, Special) else "" for p in pieces)


@dataclass(frozen=True)
class ChatTemplate:
    """A chat layout.

    ``user`` and ``assistant`` are format strings with ``{content}``, ``{round}`` (1-based
    count of user turns) and ``{round0}`` (0-based). ``user`` should end with the cue that
    makes the model answer (e.g. ``"### Response:\\n"``); ``assistant`` closes a past answer.
    ``system`` formats the system prompt (the caller's, else ``default_system``).
    ``normalize`` rewrites each message's text first (e.g. RWKV collapses blank lines, which
    its formats use as turn separators).

    ``specials``: the control tokens the format strings (and ``prefix``) spell, e.g.
    ``Special("</s>")`` in ``assistant=" {content}</s>"``; those spellings in the *format
    strings* become :class:`Special` pieces, never those in message text. ``model_specials``:
    the model's own prompt tokens (what ``tokenize(add_special=True)`` adds: LLaMA's BOS,
    ChatGLM's ``[gMASK] sop``) go around the pieces; False for templates that place them.
    ``pieces_fn`` lays out what format strings cannot express (``render_fn``, returning one
    string of plain text, is the older form of it).
    """

    name: str
    user: str = "{content}"
    assistant: str = "{content}\n"
    system: str = "{content}\n\n"
    prefix: str = ""
    default_system: str | None = None
    stop: tuple[str, ...] = ()
    description: str = ""
    render_fn: Callable[[ChatTemplate, Sequence[Message]], str] | None = field(default=None, compare=False)
    normalize: Callable[[str], str] | None = field(default=None, compare=False)
    specials: tuple[Special, ...] = ()
    model_specials: bool = True
    pieces_fn: Callable[[ChatTemplate, Sequence[Message]], Sequence[Piece]] | None = field(default=None,
                                                                                            compare=False)
    #: Tools: lays out a conversation with tool calls/results and the offered ``tools`` (None:
    #: none offered); None when the template has no tool support (``tools`` are then refused).
    tools_fn: Callable[[ChatTemplate, Sequence[Message], Sequence[Mapping[str, Any]] | None],
                       Sequence[Piece]] | None = field(default=None, compare=False)
    #: How the model writes its tool calls (a :mod:`openllm_hub.core.tool_calls` format name)
    tool_format: str | None = None
    #: Templates without tool support (``tools_fn`` None): why, and what to do instead, said
    #: when tools are refused (None: the generic advice, :data:`NO_TOOLS_FIX`)
    no_tools_fix: str | None = None

    def refuse_tools(self, where: str) -> InvalidParameterError:
        """The error for tools, tool calls or tool results given to a template without tool support."""
        return InvalidParameterError(f"the chat template {self.name!r} cannot render tools, tool calls or tool "
                                     "results", where=where, fix=self.no_tools_fix or NO_TOOLS_FIX)

    def pieces(self, messages: Sequence[Message], *, complete: bool = True,
               tools: Sequence[Mapping[str, Any]] | None = None) -> list[Piece]:
        """Lay out ``messages`` (ending with a user turn, or tool results) as the pieces of the
        prompt for the next answer; message text is always a :class:`Text`. ``tools``: the
        functions the model may call (OpenAI's ``tools``), for templates with tool support.

        ``complete=False`` lays out a prefix of a conversation (e.g. only the system prompt, or
        history ending with an answer), for engines that cache the state of a prefix.
        """
        msgs = validate_messages(messages, complete=complete)
        uses_tools = tools is not None or any(m["role"] == "tool" or "tool_calls" in m for m in msgs)
        if uses_tools and self.tools_fn is None:
            raise self.refuse_tools("tools" if tools is not None else "chat messages")
        if uses_tools:
            assert self.tools_fn is not None
            if not complete:
                raise InvalidParameterError(f"template {self.name!r} can only render complete conversations",
                                            where="chat template")
            return list(self.tools_fn(self, msgs, tools))
        if self.pieces_fn is not None or self.render_fn is not None:
            if not complete:
                raise InvalidParameterError(f"template {self.name!r} can only render complete conversations",
                                            where="chat template")
            if self.pieces_fn is not None:
                return list(self.pieces_fn(self, msgs))
            assert self.render_fn is not None
            return [Text(self.render_fn(self, msgs))]
        clean = self.normalize or (lambda text: text)
        out = self._format(self.prefix.replace("{", "{{").replace("}", "}}"))
        system = next((m["content"] for m in msgs if m["role"] == "system"), self.default_system)
        if system:
            out += self._format(self.system, content=clean(system))
        rounds = 0
        for m in msgs:
            if m["role"] == "user":
                rounds += 1
                out += self._format(self.user, content=clean(m["content"]), round=rounds, round0=rounds - 1)
            elif m["role"] == "assistant":
                out += self._format(self.assistant, content=clean(m["content"]), round=rounds, round0=rounds - 1)
        return out

    def render(self, messages: Sequence[Message], *, complete: bool = True) -> str:
        """The prompt as one string, special tokens spelled out: for display and debugging.
        Models never tokenize it; they turn :meth:`pieces` into ids."""
        return render_pieces(self.pieces(messages, complete=complete))

    def _format(self, fmt: str, **values: object) -> list[Piece]:
        """``fmt.format(**values)`` as pieces: the format's literal text split at the spellings
        of ``specials``; substituted values (message text) stay :class:`Text` whatever they hold."""
        pattern = (re.compile("|".join(re.escape(s.name) for s in sorted(self.specials, key=lambda s: -len(s.name))))
                   if self.specials else None)
        by_name = {s.name: s for s in self.specials}
        out: list[Piece] = []
        for literal, name, spec, conv in string.Formatter().parse(fmt):
            pos = 0
            for m in pattern.finditer(literal) if pattern is not None else ():
                if m.start() > pos:
                    out.append(Text(literal[pos:m.start()]))
                out.append(by_name[m.group()])
                pos = m.end()
            if pos < len(literal):
                out.append(Text(literal[pos:]))
            if name is not None:
                if name not in values:
                    raise InvalidParameterError(f"template {self.name!r} uses an unknown field {{{name}}}",
                                                where="chat template", fix="use {content}, {round} or {round0}")
                out.append(Text(format(values[name] if conv is None else  # {x!r} etc.
                                       (repr if conv == "r" else ascii if conv == "a" else str)(values[name]),
                                       spec or "")))
        return out


def validate_messages(messages: Iterable[Mapping[str, Any]], *, complete: bool = True) -> list[Message]:
    """Check roles and order: an optional system message first, then turns alternating from
    a user message; with ``complete`` the last turn must be the user's. Tools: an assistant
    turn may hold ``tool_calls`` (its ``content`` may then be None or absent: ""), each
    answered by ``tool`` turns after it; a conversation may then end with tool results."""
    out: list[Message] = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        calls = m.get("tool_calls") if role == "assistant" else None
        if calls is not None:
            if not isinstance(calls, list) or not all(isinstance(c, Mapping) for c in calls):
                raise InvalidParameterError(f"message {i}'s tool_calls must be a list of calls, got {calls!r}",
                                            where=f"chat messages[{i}].tool_calls")
            content = "" if content is None else content
        if role not in ("system", "user", "assistant", "tool") or not isinstance(content, str):
            raise InvalidParameterError(
                f"message {i} must be {{'role': 'system'|'user'|'assistant'|'tool', 'content': str}}, got {dict(m)!r}",
                where="chat messages",
            )
        if role == "system" and i != 0:
            raise InvalidParameterError("a system message may only come first", where=f"chat messages[{i}]")
        msg = Message(role=role, content=content)
        if calls is not None:
            msg["tool_calls"] = [dict(c) for c in calls]
        for key in ("tool_call_id", "name") if role == "tool" else ():
            value = m.get(key)
            if value is not None:
                if not isinstance(value, str):
                    raise InvalidParameterError(f"message {i}'s {key} must be a string", where=f"chat messages[{i}]")
                msg[key] = value
        out.append(msg)
    turns = [m for m in out if m["role"] != "system"]
    previous: Message | None = None
    for i, turn in enumerate(turns):
        if turn["role"] == "tool":
            if previous is None or not (previous["role"] == "tool" or "tool_calls" in previous):
                raise InvalidParameterError("a tool message must follow an assistant message with tool_calls "
                                            "(or another tool message)", where=f"chat messages, turn {i}")
        elif turn["role"] != ("user" if previous is None or previous["role"] == "assistant" else "assistant"):
            raise InvalidParameterError("turns must alternate, starting with a user message",
                                        where=f"chat messages, turn {i}")
        previous = turn
    if complete and (not turns or turns[-1]["role"] not in ("user", "tool")):
        raise InvalidParameterError("the conversation must end with a user message (or tool results)",
                                    where="chat messages")
    return out


# ---- the template table lives in the registry; these are shortcuts to it ----------------------
def register_template(template: ChatTemplate, *, replace: bool = False) -> None:
    """Add a template outside any plugin (tests, scripts); plugins use the
    ``register_chat_templates`` hook or ``Family.chat_templates``. A different template of
    the same name is refused unless ``replace``."""
    from openllm_hub.core.registry import get_registry

    get_registry().add_template(template, replace=replace)


def unregister_template(name: str) -> None:
    """Remove a template by name (no error when it is not there)."""
    from openllm_hub.core.registry import get_registry

    get_registry().remove_template(name)


def get_template(name: str) -> ChatTemplate:
    """Look a template up by name (plugins loaded first); the error lists the known names."""
    from openllm_hub.core.registry import get_registry

    return get_registry().template(name)


def template_names() -> list[str]:
    """The names of every registered template, sorted."""
    from openllm_hub.core.registry import get_registry

    return get_registry().template_names()
