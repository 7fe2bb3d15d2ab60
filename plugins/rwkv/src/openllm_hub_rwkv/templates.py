"""ChatRWKV's chat formats as chat templates (registered through the plugin hook).

Formats (ChatRWKV ``v2/chat.py`` and its prompt files; RWKV World's model cards):

* ``rwkv-raven``: ``Bob: ...\\n\\nAlice:`` (Raven and ChatRWKV's chat prompt);
* ``rwkv-world``: ``User: ...\\n\\nAssistant:`` with ``System: ...`` (World, RWKV-5/6/7);
* ``rwkv-qa``: ``Q: ...\\n\\nA:`` under ChatRWKV's Q&A preamble;
* ``rwkv-instruct``: Raven's ``+i`` format (``# Instruction:`` / ``# Response:``);
* ``rwkv-raven-zh`` and ``rwkv-world-zh``: the same layouts with a Chinese default system
  prompt, as ChatRWKV's Chinese prompt files use.

An answer ends at a blank line (ChatRWKV stops at ``\\n\\n``), so message text is normalised
the way ChatRWKV does: stripped, with runs of blank lines collapsed to one newline.

:func:`continuation_probe` gives the text a template puts after a conversation next (the
start of the next answer or user turn); the model tokenizes a prompt with and without it to
find how many leading tokens stay the same when the conversation grows, and caches the RNN
state there. (Reuse itself is decided by exact token-id prefixes, so a wrong guess only
costs a re-read.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import cast

from openllm_hub.core.chat import ChatTemplate, Message
from openllm_hub.errors import InvalidParameterError

_BLANK_LINES = re.compile(r"\n\s*\n")


def normalize(text: str) -> str:
    """ChatRWKV's message clean-up: CRLF to LF, strip, collapse blank lines to one newline."""
    return _BLANK_LINES.sub("\n", text.replace("\r\n", "\n").strip())


def _render(tpl: ChatTemplate, messages: Sequence[Message]) -> str:
    return render(tpl, cast("Sequence[Mapping[str, str]]", messages))


def _rwkv(name: str, user: str, assistant: str, system: str, stop: tuple[str, ...], description: str,
          default_system: str | None = None) -> ChatTemplate:
    return ChatTemplate(name=name, user=user, assistant=assistant, system=system, stop=stop,
                        default_system=default_system, description=description, render_fn=_render)


RAVEN_ZH_SYSTEM = "以下是Bob与Alice之间的一段对话。Alice聪明、友善、知识渊博，会用中文详细而有条理地回答Bob的问题。"
WORLD_ZH_SYSTEM = "你是一个乐于助人的AI助手。请用中文详细、准确地回答用户的问题。"
QA_SYSTEM = "Expert Questions & Helpful Answers\n\nAsk Research Experts"
INSTRUCT_SYSTEM = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")

TEMPLATES: tuple[ChatTemplate, ...] = (
    _rwkv("rwkv-raven", "Bob: {content}\n\nAlice:", " {content}\n\n", "{content}\n\n", ("\n\n",),
          "RWKV-4 Raven / ChatRWKV chat: 'Bob: ...\\n\\nAlice:'"),
    _rwkv("rwkv-raven-zh", "Bob: {content}\n\nAlice:", " {content}\n\n", "{content}\n\n", ("\n\n",),
          "Raven chat with a Chinese system prompt (ChatRWKV's Chinese chat)", RAVEN_ZH_SYSTEM),
    _rwkv("rwkv-world", "User: {content}\n\nAssistant:", " {content}\n\n", "System: {content}\n\n", ("\n\n",),
          "RWKV World / RWKV-5, 6, 7: 'User: ...\\n\\nAssistant:'"),
    _rwkv("rwkv-world-zh", "User: {content}\n\nAssistant:", " {content}\n\n", "System: {content}\n\n", ("\n\n",),
          "RWKV World chat with a Chinese system prompt", WORLD_ZH_SYSTEM),
    _rwkv("rwkv-qa", "Q: {content}\n\nA:", " {content}\n\n", "{content}\n\n", ("\n\n",),
          "ChatRWKV's Q&A prompt: 'Q: ...\\n\\nA:'", QA_SYSTEM),
    _rwkv("rwkv-instruct", "# Instruction:\n{content}\n\n# Response:\n", "{content}\n\n", "{content}\n\n",
          ("\n\n# Instruction",), "Raven's instruction format ('+i' in ChatRWKV)", INSTRUCT_SYSTEM),
)
NAMES = frozenset(t.name for t in TEMPLATES)


def _check_prefix(messages: Sequence[Mapping[str, str]], *, complete: bool) -> list[Message]:
    """Validate a conversation (``complete``: ending with a user turn) or a prefix of one."""
    out: list[Message] = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise InvalidParameterError(
                f"message {i} must be {{'role': 'system'|'user'|'assistant', 'content': str}}, got {dict(m)!r}",
                where="chat messages")
        if role == "system" and i != 0:
            raise InvalidParameterError("a system message may only come first", where=f"chat messages[{i}]")
        out.append(cast(Message, {"role": role, "content": content}))
    turns = [m for m in out if m["role"] != "system"]
    expected = "user"
    for i, turn in enumerate(turns):
        if turn["role"] != expected:
            raise InvalidParameterError("turns must alternate, starting with a user message", where=f"turn {i}")
        expected = "assistant" if expected == "user" else "user"
    if complete and (not turns or turns[-1]["role"] != "user"):
        raise InvalidParameterError("the conversation must end with a user message", where="chat messages")
    return out


def render(tpl: ChatTemplate, messages: Sequence[Mapping[str, str]], *, complete: bool = True) -> str:
    """The prompt for ``messages`` (``complete=False``: a prefix of a conversation, e.g. only
    the system prompt). RWKV templates normalise message text (see :func:`normalize`)."""
    msgs = _check_prefix(messages, complete=complete)
    if tpl.render_fn is not None and tpl.name not in NAMES:
        if not complete:
            raise InvalidParameterError(f"template {tpl.name!r} can only render complete conversations",
                                        where="prefill")
        return tpl.render(msgs)
    clean = normalize if tpl.name in NAMES else (lambda s: s)
    parts = [tpl.prefix]
    system = next((m["content"] for m in msgs if m["role"] == "system"), tpl.default_system)
    if system:
        parts.append(tpl.system.format(content=clean(system)))
    rounds = 0
    for m in msgs:
        if m["role"] == "user":
            rounds += 1
            parts.append(tpl.user.format(content=clean(m["content"]), round=rounds, round0=rounds - 1))
        elif m["role"] == "assistant":
            parts.append(tpl.assistant.format(content=clean(m["content"]), round=rounds, round0=rounds - 1))
    return "".join(parts)


def continuation_probe(tpl: ChatTemplate, messages: Sequence[Mapping[str, str]]) -> str:
    """Text the template would add next: an answer after a user turn, else a user turn."""
    if tpl.render_fn is not None and tpl.name not in NAMES:
        return ""
    rounds = sum(1 for m in messages if m.get("role") == "user")
    last = next((m.get("role") for m in reversed(messages) if m.get("role") != "system"), None)
    if last == "user":
        return tpl.assistant.format(content="Yes", round=rounds, round0=rounds - 1)
    return tpl.user.format(content="Yes", round=rounds + 1, round0=rounds)
