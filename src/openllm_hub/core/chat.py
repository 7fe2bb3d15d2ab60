"""Chat templates: how a conversation becomes one prompt string, as data.

A :class:`ChatTemplate` names the text around each role and the stop strings that end an
answer. Plugins add templates through the ``register_chat_templates`` hook or their
``Family.chat_templates``; the registry (:mod:`openllm_hub.core.registry`) holds the table and
refuses a name another plugin already took; the generic ones (``plain``, ``chatml``) come from
the core's built-in plugin (:mod:`openllm_hub.core.builtin_plugin`). A model names its
default and a caller may pick another by name. Layouts that plain formats cannot express
(ChatGLM's round counters are covered; anything stranger) give a ``render`` function instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from openllm_hub.errors import InvalidParameterError

Role = Literal["system", "user", "assistant"]


class Message(TypedDict):
    """One chat turn, OpenAI-shaped."""

    role: Role
    content: str


@dataclass(frozen=True)
class ChatTemplate:
    """A chat layout.

    ``user`` and ``assistant`` are format strings with ``{content}``, ``{round}`` (1-based
    count of user turns) and ``{round0}`` (0-based). ``user`` should end with the cue that
    makes the model answer (e.g. ``"### Response:\\n"``); ``assistant`` closes a past answer.
    ``system`` formats the system prompt (the caller's, else ``default_system``).
    ``normalize`` rewrites each message's text first (e.g. RWKV collapses blank lines, which
    its formats use as turn separators).
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

    def render(self, messages: Sequence[Message], *, complete: bool = True) -> str:
        """Lay out ``messages`` (ending with a user turn) as the prompt for the next answer.

        ``complete=False`` renders a prefix of a conversation (e.g. only the system prompt, or
        history ending with an answer), for engines that cache the state of a prefix.
        """
        msgs = validate_messages(messages, complete=complete)  # type: ignore[arg-type]
        if self.render_fn is not None:
            if not complete:
                raise InvalidParameterError(f"template {self.name!r} can only render complete conversations",
                                            where="chat template")
            return self.render_fn(self, msgs)
        clean = self.normalize or (lambda text: text)
        parts = [self.prefix]
        system = next((m["content"] for m in msgs if m["role"] == "system"), self.default_system)
        if system:
            parts.append(self.system.format(content=clean(system)))
        rounds = 0
        for m in msgs:
            if m["role"] == "user":
                rounds += 1
                parts.append(self.user.format(content=clean(m["content"]), round=rounds, round0=rounds - 1))
            elif m["role"] == "assistant":
                parts.append(self.assistant.format(content=clean(m["content"]), round=rounds, round0=rounds - 1))
        return "".join(parts)


def validate_messages(messages: Iterable[Mapping[str, str]], *, complete: bool = True) -> list[Message]:
    """Check roles and order: an optional system message first, then turns alternating from
    a user message; with ``complete`` the last turn must be the user's."""
    out: list[Message] = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise InvalidParameterError(
                f"message {i} must be {{'role': 'system'|'user'|'assistant', 'content': str}}, got {dict(m)!r}",
                where="chat messages",
            )
        if role == "system" and i != 0:
            raise InvalidParameterError("a system message may only come first", where=f"chat messages[{i}]")
        out.append(Message(role=role, content=content))  # type: ignore[typeddict-item]
    turns = [m for m in out if m["role"] != "system"]
    for i, turn in enumerate(turns):
        if turn["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise InvalidParameterError("turns must alternate, starting with a user message",
                                        where=f"chat messages, turn {i}")
    if complete and (not turns or turns[-1]["role"] != "user"):
        raise InvalidParameterError("the conversation must end with a user message", where="chat messages")
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
