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

The model's own prompt tokens (``[gMASK] sop`` before v2/v3 prompts, ``[gMASK] <sop>`` after
v1 prompts) are added by the model (``model_specials``).

Neither ChatGLM-6B nor ChatGLM2-6B has a system role; a system message is put before the
first round followed by a blank line (an extension; the originals have no such input).
"""

from __future__ import annotations

from collections.abc import Sequence

from openllm_hub.plugin import ChatTemplate, Cut, GenerationConfig, Message, Piece, Special, Text

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
        description="ChatGLM3-6B: <|system|>/<|user|>/<|assistant|> role tokens",
    ),
)
