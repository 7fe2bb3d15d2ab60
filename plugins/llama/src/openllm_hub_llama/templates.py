"""Chat templates of the LLaMA fine-tunes, as their authors publish them.

* ``alpaca``: Stanford Alpaca's instruction format, with the trailing newline after
  ``### Response:`` that alpaca-lora's ``templates/alpaca.json`` uses. Chat renders every user
  turn as an instruction; a past answer ends with the ``</s>`` token, as every Alpaca training
  example does (and FastChat's ``alpaca`` conversation, ``sep2="</s>"``);
  :func:`alpaca_prompt` writes the with-input variant for completion.
* ``chinese-alpaca``: Chinese-Alpaca (v1) as its ``scripts/inference/inference_hf.py`` prompts:
  Alpaca's system sentence, then ``### Instruction:\\n\\n...\\n\\n### Response:\\n\\n``.
* ``chinese-alpaca-2``: Chinese-Alpaca-2, the Llama-2 layout with its bilingual system prompt.
* ``belle``: BELLE's model-card prompt ``Human: {input} \\n\\nAssistant: ``.
* ``vicuna``: FastChat's ``vicuna_v1.1`` (system sentence, ``USER: ... ASSISTANT:``, a past
  answer ended by the ``</s>`` token).
* ``llama-2``: Meta's Llama-2-chat layout as its ``chat_completion`` builds the ids: each
  exchange ``<s>[INST] <<SYS>>\\n...\\n<</SYS>>\\n\\n... [/INST] answer </s>``, each text
  tokenized on its own, the last ``<s>[INST] ... [/INST]``.

``<s>``/``</s>`` are control tokens inserted by id (template pieces); message text is tokenized
as plain text, so user text can never inject one.
"""

from __future__ import annotations

from collections.abc import Sequence

from openllm_hub.plugin import ChatTemplate, Message, Piece, Special, Text

ALPACA_SYSTEM = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")
ALPACA_INPUT_SYSTEM = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.")
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
CHINESE_ALPACA_2_SYSTEM = "You are a helpful assistant. 你是一个乐于助人的助手。"


def alpaca_prompt(instruction: str, input: str | None = None) -> str:
    """Stanford Alpaca's single-turn prompt, with or without an input paragraph."""
    if input:
        return (f"{ALPACA_INPUT_SYSTEM}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
                "### Response:\n")
    return f"{ALPACA_SYSTEM}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def _llama2_pieces(tpl: ChatTemplate, messages: Sequence[Message]) -> list[Piece]:
    """Meta's Llama-2 ``chat_completion``: the system prompt joins the first user message inside
    ``<<SYS>>``; each exchange is ``<s>`` + text + ``</s>``, the open turn ``<s>`` + text."""
    b_sys, e_sys = "<<SYS>>\n", "\n<</SYS>>\n\n"
    system = next((m["content"] for m in messages if m["role"] == "system"), tpl.default_system)
    turns = [m["content"] for m in messages if m["role"] != "system"]
    if system:
        turns[0] = b_sys + system + e_sys + turns[0]
    pieces: list[Piece] = []
    for question, answer in zip(turns[0:-1:2], turns[1:-1:2], strict=True):
        pieces += [Special("<s>"), Text(f"[INST] {question.strip()} [/INST] {answer.strip()} "), Special("</s>")]
    return [*pieces, Special("<s>"), Text(f"[INST] {turns[-1].strip()} [/INST]")]


TEMPLATES: tuple[ChatTemplate, ...] = (
    ChatTemplate(
        name="alpaca",
        system="{content}\n\n",
        default_system=ALPACA_SYSTEM,
        user="### Instruction:\n{content}\n\n### Response:\n",
        assistant="{content}</s>",
        specials=(Special("</s>"),),
        stop=("### Instruction:",),
        description="Stanford Alpaca / alpaca-lora instruction format",
    ),
    ChatTemplate(
        name="chinese-alpaca",
        system="{content}\n\n",
        default_system=ALPACA_SYSTEM,
        user="### Instruction:\n\n{content}\n\n### Response:\n\n",
        assistant="{content}\n\n",
        stop=("### Instruction:",),
        description="Chinese-Alpaca (Chinese-LLaMA-Alpaca v1)",
    ),
    ChatTemplate(
        name="chinese-alpaca-2",
        default_system=CHINESE_ALPACA_2_SYSTEM,
        stop=("[INST]",),
        pieces_fn=_llama2_pieces,
        model_specials=False,
        description="Chinese-Alpaca-2 (Llama-2 layout with its bilingual system prompt)",
    ),
    ChatTemplate(
        name="belle",
        user="Human: {content} \n\nAssistant: ",
        assistant="{content}\n",
        system="{content}\n",
        stop=("\nHuman:",),
        description="BELLE (Human: ... Assistant:)",
    ),
    ChatTemplate(
        name="vicuna",
        system="{content} ",
        default_system=VICUNA_SYSTEM,
        user="USER: {content} ASSISTANT:",
        assistant=" {content}</s>",
        specials=(Special("</s>"),),
        stop=("USER:",),
        description="Vicuna v1.1 (FastChat vicuna_v1.1)",
    ),
    ChatTemplate(
        name="llama-2",
        stop=("[INST]",),
        pieces_fn=_llama2_pieces,
        model_specials=False,
        description="Llama-2-chat ([INST] <<SYS>> ... <</SYS>> ... [/INST])",
    ),
)

__all__ = ["ALPACA_SYSTEM", "TEMPLATES", "VICUNA_SYSTEM", "alpaca_prompt"]
