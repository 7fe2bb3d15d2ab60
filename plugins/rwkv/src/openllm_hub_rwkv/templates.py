"""ChatRWKV's chat formats as chat templates (registered through the plugin hook).

Formats (ChatRWKV ``v2/chat.py`` and its prompt files; RWKV World's model cards):

* ``rwkv-raven``: ``Bob: ...\\n\\nAlice:`` (Raven and ChatRWKV's chat prompt);
* ``rwkv-world``: ``User: ...\\n\\nAssistant:`` with ``System: ...`` (World, RWKV-5/6/7);
* ``rwkv-qa``: ``Q: ...\\n\\nA:`` under ChatRWKV's Q&A preamble;
* ``rwkv-instruct``: Raven's ``+i`` format (``# Instruction:`` / ``# Response:``);
* ``rwkv-raven-zh`` and ``rwkv-world-zh``: the same layouts with a Chinese default system
  prompt, as ChatRWKV's Chinese prompt files use.

No tools: neither ChatRWKV nor the RWKV World/RWKV-7 model cards define a way to offer functions
or a format for calls, so these templates render none (inventing one would make a model call
tools in a format it never saw, and its "calls" would parse by luck). Tools are refused with
:data:`NO_TOOLS_FIX`, which says what works instead: a structured answer (``json_schema``).

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

from openllm_hub.plugin import ChatTemplate

_BLANK_LINES = re.compile(r"\n\s*\n")


def normalize(text: str) -> str:
    """ChatRWKV's message clean-up: CRLF to LF, strip, collapse blank lines to one newline."""
    return _BLANK_LINES.sub("\n", text.replace("\r\n", "\n").strip())


#: Why RWKV's templates refuse tools and what to do instead (the error's fix).
NO_TOOLS_FIX = ("RWKV's chat formats (ChatRWKV's, RWKV World's) have no tool-call format: rendering tools needs a "
                "template that defines one (Hermes <tool_call>, Llama 3.1 JSON, Mistral [TOOL_CALLS], ChatGLM3), "
                "and RWKV models were not trained with any. Leave tools out (or tool_choice='none'); for a "
                "machine-readable answer describe the function in the system message and constrain the answer "
                "with json_schema (response_format in the server), which RWKV supports")


def _rwkv(name: str, user: str, assistant: str, system: str, stop: tuple[str, ...], description: str,
          default_system: str | None = None) -> ChatTemplate:
    return ChatTemplate(name=name, user=user, assistant=assistant, system=system, stop=stop,
                        default_system=default_system, description=description, normalize=normalize,
                        no_tools_fix=NO_TOOLS_FIX)


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


def render(tpl: ChatTemplate, messages: Sequence[Mapping[str, str]], *, complete: bool = True) -> str:
    """The prompt for ``messages`` (``complete=False``: a prefix of a conversation, e.g. only
    the system prompt). RWKV templates normalise message text (see :func:`normalize`)."""
    return tpl.render(messages, complete=complete)  # type: ignore[arg-type]


def continuation_probe(tpl: ChatTemplate, messages: Sequence[Mapping[str, str]]) -> str:
    """Text the template would add next: an answer after a user turn, else a user turn."""
    if (tpl.render_fn is not None or tpl.pieces_fn is not None) and tpl.name not in NAMES:
        return ""
    rounds = sum(1 for m in messages if m.get("role") == "user")
    last = next((m.get("role") for m in reversed(messages) if m.get("role") != "system"), None)
    if last == "user":
        return tpl.assistant.format(content="Yes", round=rounds, round0=rounds - 1)
    return tpl.user.format(content="Yes", round=rounds + 1, round0=rounds)
