"""The LLaMA fine-tunes' chat templates against their authors' prompt builders, re-stated
here from the published code: Stanford Alpaca's ``PROMPT_DICT`` (with alpaca-lora's
trailing newline), Chinese-Alpaca's ``inference_hf.py``, BELLE's model card, FastChat's
``vicuna_v1.1`` conversation (``ADD_COLON_TWO``), Meta's Llama-2 ``chat_completion``."""

from __future__ import annotations

import pytest
from openllm_hub_llama.templates import alpaca_prompt

from openllm_hub.core.chat import get_template

SYS = "You are terse."
ONE = [{"role": "user", "content": "Name a colour."}]
MULTI = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "How are you?"}]


def fastchat_add_colon_two(system: str, turns: list[tuple[str, str | None]], sep: str = " ",
                           sep2: str = "</s>") -> str:
    """FastChat's SeparatorStyle.ADD_COLON_TWO get_prompt()."""
    seps = [sep, sep2]
    ret = system + seps[0]
    for i, (role, message) in enumerate(turns):
        ret += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
    return ret


def meta_llama2(dialog: list[dict[str, str]]) -> list[str]:
    """The text pieces of Meta's Llama-2 chat_completion, one per BOS-prefixed segment."""
    b_inst, e_inst, b_sys, e_sys = "[INST]", "[/INST]", "<<SYS>>\n", "\n<</SYS>>\n\n"
    if dialog[0]["role"] == "system":
        dialog = [{"role": dialog[1]["role"], "content": b_sys + dialog[0]["content"] + e_sys + dialog[1]["content"]},
                  *dialog[2:]]
    pieces = [f"{b_inst} {p['content'].strip()} {e_inst} {a['content'].strip()} "
              for p, a in zip(dialog[::2], dialog[1::2])]
    pieces.append(f"{b_inst} {dialog[-1]['content'].strip()} {e_inst}")
    return pieces


def test_alpaca() -> None:
    want = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nName a colour.\n\n### Response:\n")
    assert get_template("alpaca").render(ONE) == want == alpaca_prompt("Name a colour.")
    with_input = alpaca_prompt("Translate.", "Bonjour")
    assert with_input == ("Below is an instruction that describes a task, paired with an input that provides further "
                          "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                          "Translate.\n\n### Input:\nBonjour\n\n### Response:\n")


def test_chinese_alpaca() -> None:
    prompt_input = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                    "the request.\n\n### Instruction:\n\n{instruction}\n\n### Response:\n\n")
    assert get_template("chinese-alpaca").render(ONE) == prompt_input.format(instruction="Name a colour.")


def test_belle() -> None:
    assert get_template("belle").render(ONE) == "Human: Name a colour. \n\nAssistant: "
    assert get_template("belle").render(MULTI) == "Human: Hi \n\nAssistant: Hello!\nHuman: How are you? \n\nAssistant: "


def test_vicuna() -> None:
    system = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions.")
    tpl = get_template("vicuna")
    assert tpl.render(ONE) == fastchat_add_colon_two(system, [("USER", "Name a colour."), ("ASSISTANT", None)])
    # history: FastChat ends a past answer with </s> (a control token: ids in test_chat_ids.py)
    want = fastchat_add_colon_two(system, [("USER", "Hi"), ("ASSISTANT", "Hello!"), ("USER", "How are you?"),
                                           ("ASSISTANT", None)])
    assert tpl.render(MULTI) == want
    assert tpl.render([{"role": "system", "content": SYS}, *ONE]) == fastchat_add_colon_two(
        SYS, [("USER", "Name a colour."), ("ASSISTANT", None)])


CHINESE_ALPACA_2_SYSTEM = "You are a helpful assistant. 你是一个乐于助人的助手。"


@pytest.mark.parametrize("name,default", [("llama-2", None), ("chinese-alpaca-2", CHINESE_ALPACA_2_SYSTEM)])
def test_llama2_layout(name: str, default: str | None) -> None:
    tpl = get_template(name)
    system = [{"role": "system", "content": default}] if default else []
    # each Meta segment is BOS + text (+ EOS after an answer); render() spells the control tokens
    assert tpl.render(ONE) == "<s>" + "".join(meta_llama2([*system, *ONE]))
    assert tpl.render(MULTI) == "<s>" + "</s><s>".join(meta_llama2([*system, *MULTI]))
    with_sys = [{"role": "system", "content": SYS}, *MULTI]
    assert tpl.render(with_sys) == "<s>" + "</s><s>".join(meta_llama2(with_sys))
    assert tpl.render(with_sys).startswith("<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST]")
