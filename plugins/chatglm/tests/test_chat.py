"""Chat prompts: each version's format, with history, as strings and as token ids.

Expected strings are written out from the released code (v1 ``chat``, v2 ``build_prompt``,
v3 ``build_chat_input``); expected ids are built the way the released tokenizers build them,
with the raw sentencepiece processor.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

import openllm_hub
from openllm_hub.core.chat import get_template

HISTORY = [
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a story\nabout a cat."},
]


def test_prompt_strings_match_each_version() -> None:
    first = HISTORY[:1]
    # ChatGLM-6B: the bare query without history; rounds counted from 0 with history
    assert get_template("chatglm").render(first) == "你好"  # type: ignore[arg-type]
    assert get_template("chatglm").render(HISTORY) == (  # type: ignore[arg-type]
        "[Round 0]\n问：你好\n答：Hello! How can I help?\n[Round 1]\n问：Tell me a story\nabout a cat.\n答：")
    # ChatGLM2-6B: rounds counted from 1, blank lines
    assert get_template("chatglm2").render(first) == "[Round 1]\n\n问：你好\n\n答："  # type: ignore[arg-type]
    assert get_template("chatglm2").render(HISTORY) == (  # type: ignore[arg-type]
        "[Round 1]\n\n问：你好\n\n答：Hello! How can I help?\n\n[Round 2]\n\n问：Tell me a story\nabout a cat.\n\n答：")
    # ChatGLM3-6B: role tokens, optional system prompt, ends with <|assistant|>
    msgs = [{"role": "system", "content": "You are ChatGLM3."}, *HISTORY]
    assert get_template("chatglm3").render(msgs) == (  # type: ignore[arg-type]
        "<|system|>\nYou are ChatGLM3.<|user|>\n你好<|assistant|>\nHello! How can I help?"
        "<|user|>\nTell me a story\nabout a cat.<|assistant|>")


def test_chat_token_ids_match_official_construction(v1_dir: Path, v2_dir: Path, v3_dir: Path) -> None:
    with openllm_hub.load(v1_dir, device="cpu") as m:
        sp = spm.SentencePieceProcessor(model_file=str(v1_dir / "ice_text.model"))
        text = ("[Round 0]<n>问：你好<n>答：Hello! How can I help?<n>"
                "[Round 1]<n>问：Tell me a story<n>about a cat.<n>答：")
        want = [*sp.encode(text), sp.piece_to_id("[gMASK]"), sp.piece_to_id("<sop>")]  # num_image_tokens=0
        assert m.tokenize(m.chat_template().render(HISTORY)) == want  # type: ignore[arg-type]
        assert m.default_chat_template == "chatglm"
    with openllm_hub.load(v2_dir, device="cpu") as m:
        sp = spm.SentencePieceProcessor(model_file=str(v2_dir / "tokenizer.model"))
        n = sp.get_piece_size()
        prompt = ("[Round 1]\n\n问：你好\n\n答：Hello! How can I help?\n\n"
                  "[Round 2]\n\n问：Tell me a story\nabout a cat.\n\n答：")
        ids = m.tokenize(m.chat_template().render(HISTORY))  # type: ignore[arg-type]
        assert ids == [n + 1, n + 3, *sp.encode(prompt)]
    with openllm_hub.load(v3_dir, device="cpu") as m:
        sp = spm.SentencePieceProcessor(model_file=str(v3_dir / "tokenizer.model"))
        n = sp.get_piece_size()
        system, user, assistant = n + 5, n + 6, n + 7

        def msg(role: int, content: str) -> list[int]:  # build_single_message(role, "", content)
            return [role, *sp.encode("\n"), *sp.encode(content)]

        msgs = [{"role": "system", "content": "You are ChatGLM3."}, *HISTORY]
        want = [n + 1, n + 3, *msg(system, "You are ChatGLM3."), *msg(user, "你好"),
                *msg(assistant, "Hello! How can I help?"), *msg(user, "Tell me a story\nabout a cat."), assistant]
        assert m.tokenize(m.chat_template().render(msgs)) == want  # type: ignore[arg-type]
        # the answer ends at eos, <|user|> or <|observation|>
        assert m.eos_token_ids == {sp.eos_id(), user, n + 8}


def test_chat_stops_at_v3_role_token(v3_dir: Path) -> None:
    """When the model emits <|user|> the answer ends there (finish_reason=stop). Force it:
    point <|user|>'s output-layer row along the prompt's last hidden state."""
    import torch

    with openllm_hub.load(v3_dir, device="cpu") as m:
        user = m.tokenizer.special_id("<|user|>")  # type: ignore[attr-defined]
        ids = m.tokenize(m.chat_template().render(HISTORY))  # type: ignore[arg-type]
        net = m.net  # type: ignore[attr-defined]
        with torch.no_grad():
            hidden = net.forward_hidden(torch.tensor(ids), None)[-1]
            net.output_module().weight[user] = hidden * 100
        assert int(m.logits(ids)[-1].argmax()) == user
        res = m.chat(HISTORY, max_new_tokens=8, temperature=0.0)  # type: ignore[arg-type]
        assert res.finish_reason == "stop" and res.token_ids == () and res.text == ""
