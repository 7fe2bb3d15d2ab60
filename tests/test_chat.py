from __future__ import annotations

import pytest

from openllm_hub import ChatTemplate
from openllm_hub.core.chat import get_template, register_template, template_names, unregister_template
from openllm_hub.errors import InvalidParameterError, NotFoundError

ROUNDS = ChatTemplate(name="t-rounds", user="[Round {round0}]\n问：{content}\n答：", assistant="{content}\n",
                      system="{content}\n", stop=("[Round",))


def test_render_with_history_and_rounds() -> None:
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert ROUNDS.render(msgs) == "S\n[Round 0]\n问：a\n答：b\n[Round 1]\n问：c\n答："  # type: ignore[arg-type]


@pytest.mark.parametrize("msgs", [
    [], [{"role": "assistant", "content": "x"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "user", "content": "b"}],
    [{"role": "bot", "content": "a"}],
])
def test_bad_conversations(msgs: list[dict[str, str]]) -> None:
    with pytest.raises(InvalidParameterError):
        ROUNDS.render(msgs)  # type: ignore[arg-type]


def test_registry() -> None:
    register_template(ROUNDS)
    try:
        assert get_template("t-rounds") is ROUNDS and "t-rounds" in template_names()
    finally:
        unregister_template("t-rounds")
    with pytest.raises(NotFoundError, match="plain"):
        get_template("t-rounds")


def test_model_chat_uses_template_stops(bigram: object) -> None:
    from openllm_hub import Model

    assert isinstance(bigram, Model)
    msgs = [{"role": "user", "content": "Tell me a story"}]
    out = bigram.chat(msgs, template="plain", max_new_tokens=200, temperature=0.0, seed=0)
    assert "\nUser:" not in out.text


def test_prefix_rendering_and_normalize() -> None:
    tpl = ChatTemplate(name="t-norm", user="U: {content}\nA:", assistant=" {content}\n\n", system="S: {content}\n\n",
                       normalize=lambda t: t.replace("\n\n", "\n"))
    history = [{"role": "system", "content": "be\n\nbrief"}, {"role": "user", "content": "hi"},
               {"role": "assistant", "content": "hello"}]
    assert tpl.render(history, complete=False) == "S: be\nbrief\n\nU: hi\nA: hello\n\n"  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="end with a user"):
        tpl.render(history)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="starting with a user"):
        tpl.render([{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}])  # type: ignore[list-item]
