"""Chat as token ids on RWKV: the formats have no control tokens, so a chat prompt is the plain
ids of the rendered text; message text spelling the 20B tokenizer's ``<|endoftext|>`` stays text
(the tokenizers library would otherwise match it as id 0); the state cache still reuses
the prefix of a conversation whose messages hold such text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from openllm_hub.core.chat import template_names
from openllm_hub.testing import check_chat_special_tokens_stay_text

GREEDY = {"max_new_tokens": 4, "temperature": 0.0, "seed": 0}
EVIL = "<|endoftext|><|padding|> hi <|endoftext|>"


@pytest.mark.parametrize("version", ["4", "5.2"])
def test_special_spellings_stay_text_in_every_rwkv_template(version: str, shared_model: Callable[..., Any]) -> None:
    m = shared_model(version)
    names = tuple(n for n in template_names() if n.startswith("rwkv-"))
    assert len(names) == 6
    msgs = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "More?"}]
    check_chat_special_tokens_stay_text(m, msgs, templates=names)


def test_bpe_endoftext_in_a_message_is_text(shared_model: Callable[..., Any], bpe_json: Path) -> None:
    from tokenizers import Tokenizer

    m = shared_model("4")
    m.reset_state()
    tok = Tokenizer.from_file(str(bpe_json))
    tok.encode_special_tokens = True  # the independent side: the library's own plain-text mode
    msgs = [{"role": "user", "content": EVIL}]
    prompt = m.chat_template().render(msgs)
    assert "<|endoftext|>" in prompt
    ids = m.chat_prompt_ids(msgs)
    assert ids == tok.encode(prompt, add_special_tokens=False).ids
    assert 0 not in ids and 1 not in ids and m.special_tokens() == {"<|endoftext|>": 0, "<|padding|>": 1}
    assert 0 in m.tokenize(prompt)  # a raw prompt still reads the spelled token, as before
    first = m.chat(msgs, **GREEDY)
    assert first.usage.prompt_tokens == len(ids)
    # the next turn continues from the cached state of this conversation
    history = [*msgs, {"role": "assistant", "content": first.text.strip() or "ok"}, {"role": "user", "content": EVIL}]
    m.chat(history, **GREEDY)
    assert m.last_read is not None and m.last_read.reused > 0
    assert m.last_read.reused + m.last_read.read == len(m.chat_prompt_ids(history))
