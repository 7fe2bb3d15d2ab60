"""The official ``openai`` client against a real uvicorn server serving the bigram model.

Each answer is compared with the SDK called directly on the same model with the same seed
and parameters: the server must be a faithful transport (same text, same finish reason,
same token counts), whole or streamed, for chat and for plain completions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from openllm_hub.core.model import Model
from openllm_hub.server import create_app

KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(model: Model, server_thread: Any) -> Iterator[Any]:
    with server_thread(create_app(model, api_key=KEY, model_id="bigram-stories", max_tokens_limit=512)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60) as c:
        yield c


CHAT = [{"role": "system", "content": "You tell stories."},
        {"role": "user", "content": "Tell me about a fox."},
        {"role": "assistant", "content": "Once upon a time, Tom had a little fox."},
        {"role": "user", "content": "And then?"}]


def test_models_list(client: openai.OpenAI, model: Model) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["bigram-stories"]
    meta = models[0].model_extra["meta"]  # type: ignore[index]
    assert meta["family"] == "bigram" and meta["context_length"] == model.info.context_length
    assert meta["max_tokens_limit"] == 512
    assert client.models.retrieve("bigram-stories").id == "bigram-stories"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


@pytest.mark.parametrize("seed", [1, 7])
def test_chat_matches_sdk(client: openai.OpenAI, model: Model, seed: int) -> None:
    r = client.chat.completions.create(model="bigram-stories", messages=CHAT, seed=seed, temperature=0.9,  # type: ignore[arg-type]
                                       top_p=0.9, max_tokens=80)
    want = model.chat(CHAT, seed=seed, temperature=0.9, top_p=0.9, max_new_tokens=80)
    assert r.object == "chat.completion" and r.model == "bigram-stories"
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == want.text
    assert choice.finish_reason == want.finish_reason
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (want.usage.prompt_tokens,
                                                                  want.usage.completion_tokens)
    assert r.usage.total_tokens == want.usage.total_tokens


def test_chat_stream_matches_sdk(client: openai.OpenAI, model: Model) -> None:
    stream = client.chat.completions.create(model="x", messages=CHAT, seed=3, max_tokens=120, stream=True,  # type: ignore[arg-type]
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    want = model.chat(CHAT, seed=3, max_new_tokens=120)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [want.finish_reason]
    assert len({c.id for c in chunks}) == 1
    # the usage chunk comes last, with no choices (OpenAI's stream_options.include_usage)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == want.usage.completion_tokens
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2, "answer was not streamed"


def test_completion_matches_sdk(client: openai.OpenAI, model: Model) -> None:
    prompt = "Once upon a time, Mia"
    r = client.completions.create(model="x", prompt=prompt, seed=11, max_tokens=60, temperature=0.7)
    want = model.generate(prompt, seed=11, max_new_tokens=60, temperature=0.7)
    assert r.object == "text_completion"
    assert r.choices[0].text == want.text and r.choices[0].finish_reason == want.finish_reason
    assert r.usage is not None and r.usage.completion_tokens == want.usage.completion_tokens


def test_completion_default_is_16_tokens(client: openai.OpenAI) -> None:
    """OpenAI's completions default max_tokens is 16; greedy (temperature 0) never stops earlier here."""
    r = client.completions.create(model="x", prompt="The dog", temperature=0)
    assert r.usage is not None and r.usage.completion_tokens <= 16


def test_completion_stream_with_stop_and_chinese(client: openai.OpenAI, model: Model) -> None:
    """Multi-byte text streams intact: the pieces join to exactly the SDK's text."""
    prompt = "从前，小明和一只"
    answers = []
    for seed in range(3):
        stream = client.completions.create(model="x", prompt=prompt, seed=seed, max_tokens=200, stream=True,
                                           stop=["。"])
        pieces = [c.choices[0].text for c in stream if c.choices]
        want = model.generate(prompt, seed=seed, max_new_tokens=200, stop=["。"])
        assert "".join(pieces) == want.text and "。" not in want.text
        answers.append(want.text)
    assert any("\u4e00" <= ch <= "\u9fff" for text in answers for ch in text), "answers should be Chinese"


def test_stop_sequences_and_max_tokens(client: openai.OpenAI, model: Model) -> None:
    for seed in range(5):
        r = client.completions.create(model="x", prompt="Once upon a time", seed=seed, max_tokens=100,
                                      stop=[".", "!"])
        want = model.generate("Once upon a time", seed=seed, max_new_tokens=100, stop=[".", "!"])
        assert r.choices[0].text == want.text
        assert "." not in r.choices[0].text
    r = client.completions.create(model="x", prompt="Once upon a time", seed=0, max_tokens=5, temperature=1.0)
    assert r.usage is not None and r.usage.completion_tokens <= 5


def test_extension_parameters(client: openai.OpenAI, model: Model) -> None:
    r = client.chat.completions.create(model="x", messages=CHAT, seed=2, max_tokens=50,  # type: ignore[arg-type]
                                       extra_body={"top_k": 5, "repeat_penalty": 1.3})
    want = model.chat(CHAT, seed=2, max_new_tokens=50, top_k=5, repeat_penalty=1.3)
    assert r.choices[0].message.content == want.text


def test_errors_are_openai_exceptions(client: openai.OpenAI, server: Any) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="x", messages=CHAT, max_tokens=10_000)  # type: ignore[arg-type]
    assert exc.value.code == "max_tokens_too_large"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="x", messages=CHAT, n=2)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):  # the conversation must end with a user turn
        client.chat.completions.create(model="x", messages=[{"role": "assistant", "content": "hi"}])
    with openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    # the server is still serving after all that
    assert client.completions.create(model="x", prompt="A", max_tokens=2).choices


def test_async_client_concurrent_requests(server: Any, model: Model) -> None:
    """Concurrent requests queue and all get their own, correct answer."""
    import asyncio

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as c:
            rs = await asyncio.gather(*(c.completions.create(model="x", prompt="Tom", seed=s, max_tokens=40)
                                        for s in range(6)))
        return [r.choices[0].text for r in rs]

    got = asyncio.run(main())
    assert got == [model.generate("Tom", seed=s, max_new_tokens=40).text for s in range(6)]
