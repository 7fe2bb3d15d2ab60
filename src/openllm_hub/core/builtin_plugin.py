"""The core's built-in plugin: what every installation has, registered like any plugin.

The registry registers this module before the installed plugins (as simonw/llm registers its
default plugins), so the generic chat templates and the generic ``gguf`` family
(:mod:`openllm_hub.core.gguf_family`: any GGUF llama.cpp runs) go through the same hook, the same name
checks and the same records as a plugin's: a plugin that registers ``plain`` or ``chatml``
again is reported as broken, not silently replacing them. ``openllm-hub plugins --all``
lists it.
"""

from __future__ import annotations

from collections.abc import Callable

from openllm_hub.core.chat import ChatTemplate, Special
from openllm_hub.core.family import Family
from openllm_hub.core.hookspecs import hookimpl

OPENLLM_HUB_API_VERSION = 1
#: The name of this plugin's record in the registry.
NAME = "openllm-hub (built-in)"

#: Templates every installation has.
BUILTIN_TEMPLATES = (
    ChatTemplate(
        name="plain",
        user="User: {content}\nAssistant:",
        assistant=" {content}\n",
        system="{content}\n",
        stop=("\nUser:",),
        description="Generic 'User:/Assistant:' turns, for base models with no chat training",
    ),
    ChatTemplate(
        name="chatml",
        user="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
        assistant="{content}<|im_end|>\n",
        system="<|im_start|>system\n{content}<|im_end|>\n",
        stop=("<|im_end|>",),
        # control tokens where the vocabulary has them (Qwen, OpenHermes, ...), else their text
        specials=(Special("<|im_start|>", optional=True), Special("<|im_end|>", optional=True)),
        description="ChatML (<|im_start|>role ... <|im_end|>)",
    ),
)


@hookimpl
def register_chat_templates(register: Callable[[ChatTemplate], None]) -> None:
    for template in BUILTIN_TEMPLATES:
        register(template)


@hookimpl
def register_families(register: Callable[[Family], None]) -> None:
    from openllm_hub.core.gguf_family import FAMILY

    register(FAMILY)


__all__ = ["BUILTIN_TEMPLATES", "NAME", "register_chat_templates", "register_families"]
