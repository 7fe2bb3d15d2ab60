"""Stateful chat: reusing the RNN state equals re-reading the history; saved states continue
exactly; a system prompt's state is computed once; ChatRWKV's formats as templates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import openllm_hub
from openllm_hub.core.chat import template_names
from openllm_hub.errors import CorruptFileError, DestinationExistsError, InvalidParameterError

VERSIONS = ("4", "5.2", "6", "7")
GREEDY = {"max_new_tokens": 8, "temperature": 0.0, "seed": 0}
#: Reading the same token ids in other chunk splits (a cached state, then the rest; versus
#: everything from the start) changes only fp32 rounding inside the package's kernels:
#: measured max |diff| 1-5e-6 on logits spanning ~15-20; the bound is 1e-4.
REUSE_BOUND = 1e-4


def _turn1(lang: str) -> list[dict[str, str]]:
    text = "What is RWKV?" if lang == "en" else "企鹅会飞吗？"
    return [{"role": "user", "content": text}]


def _history(first: list[dict[str, str]], answer: str, lang: str) -> list[dict[str, str]]:
    follow = "Tell me more, please." if lang == "en" else "请再详细说说，谢谢！🙂"
    return [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": follow}]


@pytest.mark.parametrize(("version", "lang"), [("4", "en"), ("5.2", "zh"), ("6", "en"), ("7", "zh")])
def test_reused_state_equals_rereading(version: str, lang: str, shared_model: Callable[..., Any]) -> None:
    m = shared_model(version)
    m.reset_state()
    first = _turn1(lang)
    answer = m.chat(first, **GREEDY).text
    history = _history(first, answer, lang)
    reused = m.prefill_chat(history)
    stats = m.last_read
    n_prompt = len(m.tokenize(m.chat_template().render(history)))
    assert stats.reused > 0 and stats.reused + stats.read == n_prompt  # only the new part was read
    m.reset_state()
    full = m.prefill_chat(history)
    assert m.last_read.reused == 0 and m.last_read.read == n_prompt
    assert float(np.abs(reused - full).max()) <= REUSE_BOUND
    assert int(np.argmax(reused)) == int(np.argmax(full))
    # the answer of the second turn: from the cached state vs from scratch
    m.reset_state()
    m.chat(first, **GREEDY)
    from_state = m.chat(history, **GREEDY)
    assert m.last_read.reused > 0
    m.reset_state()
    from_scratch = m.chat(history, **GREEDY)
    assert m.last_read.reused == 0
    assert from_state.token_ids == from_scratch.token_ids and from_state.text == from_scratch.text


def test_chat_equals_generate_on_rendered_prompt(shared_model: Callable[..., Any]) -> None:
    """The stateful chat is still the SDK's chat: the same as generate() on the template's prompt."""
    m = shared_model("5.2")
    m.reset_state()
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    prompt = m.chat_template().render(msgs)
    a = m.chat(msgs, **GREEDY)
    b = m.generate(prompt, stop=list(m.chat_template().stop), **GREEDY)
    assert a.token_ids == b.token_ids
    again = m.chat(msgs, **GREEDY)  # the whole prompt is now cached: nothing is read
    assert m.last_read.read == 0 and again.token_ids == a.token_ids


def test_saved_state_continues_identically(shared_model: Callable[..., Any], ckpt: dict[str, Path],
                                           tmp_path: Path) -> None:
    m = shared_model("5.2")
    m.reset_state()
    first = _turn1("zh")
    answer = m.chat(first, **GREEDY).text
    path = m.save_state(tmp_path / "chat.state")
    history = _history(first, answer, "zh")
    here = m.prefill_chat(history)
    here_stats = m.last_read
    here_text = m.chat(history, **GREEDY).text
    with openllm_hub.load(ckpt["5.2"], device="cpu") as other:
        other.load_state(path)
        there = other.prefill_chat(history)
        assert other.last_read == here_stats and here_stats.reused > 0
        assert np.array_equal(here, there)  # bit for bit: the same state, the same reads
        assert other.chat(history, **GREEDY).text == here_text
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "openllm-hub-rwkv-state" and meta["rwkv_version"] == "5.2"


@pytest.mark.parametrize("version", ("4", "5.2"))
def test_system_prompt_state_computed_once(version: str, shared_model: Callable[..., Any]) -> None:
    m = shared_model(version)
    m.reset_state()
    system = [{"role": "system", "content": "You are a helpful, concise assistant.\n\nAnswer in one line."}]
    m.prefill_chat(system)
    n_system = m.last_read.read
    for question in ("Hi!", "你好！"):
        m.chat([*system, {"role": "user", "content": question}], **GREEDY)
        # the system prompt's tokens came from the cached state (minus trailing blank-line
        # tokens that the next turn may tokenize differently)
        assert 0 < m.last_read.reused <= n_system
        assert m.last_read.reused >= n_system - 2


def test_state_cache_off_reads_everything(ckpt: dict[str, Path]) -> None:
    with openllm_hub.load(ckpt["7"], device="cpu", state_cache=0) as m:
        first = _turn1("en")
        answer = m.chat(first, **GREEDY).text
        m.chat(_history(first, answer, "en"), **GREEDY)
        assert m.last_read.reused == 0


def test_state_file_errors(shared_model: Callable[..., Any], ckpt: dict[str, Path], tmp_path: Path) -> None:
    m = shared_model("6")
    m.reset_state()
    with pytest.raises(InvalidParameterError, match="no chat state"):
        m.save_state(tmp_path / "early.state")
    m.chat(_turn1("en"), **GREEDY)
    with pytest.raises(DestinationExistsError):
        m.save_state(ckpt["6"], force=True)  # never over the model itself
    p = m.save_state(tmp_path / "v6.state")
    with pytest.raises(DestinationExistsError):
        m.save_state(p)
    assert m.save_state(p, force=True) == p
    other = shared_model("5.2")
    with pytest.raises(InvalidParameterError, match="another model"):
        other.load_state(p)
    junk = tmp_path / "junk.state"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptFileError):
        m.load_state(junk)


def test_templates_registered_and_rendered(shared_model: Callable[..., Any], ckpt: dict[str, Path]) -> None:
    names = set(template_names())
    assert {"rwkv-raven", "rwkv-raven-zh", "rwkv-world", "rwkv-world-zh", "rwkv-qa", "rwkv-instruct"} <= names
    assert shared_model("4").default_chat_template == "rwkv-raven"  # 20B-style tokenizer: Raven
    assert shared_model("5.2").default_chat_template == "rwkv-world"  # World tokenizer
    tpl = shared_model("5.2").chat_template
    msgs = [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "hi\n\n\nthere"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "你好"}]
    assert tpl("rwkv-world").render(msgs) == (
        "System: Be brief.\n\nUser: hi\nthere\n\nAssistant: Hello!\n\nUser: 你好\n\nAssistant:")
    assert tpl("rwkv-raven").render(msgs[1:2]) == "Bob: hi\nthere\n\nAlice:"
    assert tpl("rwkv-qa").render(msgs[3:]).endswith("\n\nQ: 你好\n\nA:")
    assert tpl("rwkv-instruct").render(msgs[3:]).endswith("# Instruction:\n你好\n\n# Response:\n")
    assert "Alice" in tpl("rwkv-raven-zh").render(msgs[3:]) and "中文" in tpl("rwkv-raven-zh").render(msgs[3:])
    assert tpl("rwkv-world-zh").render(msgs[3:]).startswith("System: 你是")
    with openllm_hub.load(ckpt["7"], device="cpu", chat_template="rwkv-qa") as m:
        assert m.default_chat_template == "rwkv-qa" and m.info.extra["chat_template"] == "rwkv-qa"
