"""Chat as token ids on GLM-130B: the prompt is generate.py's (text, then ``[gMASK] <sop>``), and
``[MASK]``-style markers or command spellings typed into a message stay text (a raw prompt
still reads them as masks, as GLM-130B's generate.py does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sentencepiece as spm

from openllm_hub.core.chat import get_template
from openllm_hub.testing import check_chat_special_tokens_stay_text


def test_chat_ids_and_masks_as_text(model: Any, tokenizer_file: Path) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_file))
    cmds = model.special_tokens()
    assert {"[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>"} <= set(cmds)
    msgs = [{"role": "user", "content": "Fill [MASK] in, then [gMASK]<sop><eop>"}]
    text = get_template("plain").render(msgs)  # type: ignore[arg-type]
    offset = model.tokenizer.id_offset
    want = [*(i + offset for i in sp.encode(text)), cmds["[gMASK]"], cmds["<sop>"]]
    assert model.chat_prompt_ids(msgs, template="plain") == want
    assert cmds["[MASK]"] in model.tokenize(text)  # generate() on the raw text reads the mask
    assert model.chat(msgs, template="plain", max_new_tokens=2, temperature=0.0).usage.prompt_tokens == len(want)
    check_chat_special_tokens_stay_text(model, msgs, templates=("plain", "chatml", "chatglm2"))
