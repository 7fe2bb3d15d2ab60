"""Logprobs and embeddings through the server, read with the official ``openai`` client.

Logprobs (bigram model): chat's ``choices[].logprobs.content[]`` and the legacy completions'
``tokens``/``token_logprobs``/``top_logprobs``/``text_offset`` must carry exactly what the SDK
gives for the same request (which tests/test_logprobs.py checks against ``Model.logits()``),
whole and streamed, with one and with two slots. Embeddings: a tiny LLaMA f32 GGUF on
llama.cpp, and the ChatGLM2 torch engine (the plugin's fixture checkpoint) while a streamed
completion holds the other slot, compared with ``Model.embed`` (float32 on the wire: 1e-6
relative); the bigram engine cannot embed, which is a 400.
"""

from __future__ import annotations

import base64
import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from live_server import openai_client

import openllm_hub
from openllm_hub.core.model import Completion, Model
from openllm_hub.server import create_app

CHAT = [{"role": "user", "content": "Tell me about a fox."}]
PROMPT = "Once upon a time"


@pytest.fixture(scope="module", params=[1, 2], ids=["one-slot", "two-slots"])
def client(request: pytest.FixtureRequest, model: Model) -> Iterator[openai.OpenAI]:
    with openai_client(create_app(model, model_id="bigram", max_tokens_limit=256, parallel=request.param)) as c:
        yield c


def check_chat_logprobs(content: list[Any], want: Completion, top: int, bound: float = 0.0) -> None:
    assert want.logprobs is not None and len(content) == len(want.logprobs)
    for got, lp in zip(content, want.logprobs, strict=True):
        assert got.token == lp.token and abs(got.logprob - lp.logprob) <= bound and bytes(got.bytes) == lp.bytes
        assert len(got.top_logprobs) == top
        assert [(t.token, bytes(t.bytes)) for t in got.top_logprobs] == [(t.token, t.bytes) for t in lp.top]
        assert all(abs(a.logprob - b.logprob) <= bound for a, b in zip(got.top_logprobs, lp.top, strict=True))


def test_chat_logprobs_whole(client: openai.OpenAI, model: Model) -> None:
    r = client.chat.completions.create(model="bigram", messages=CHAT, seed=4, max_tokens=30,  # type: ignore[arg-type]
                                       logprobs=True, top_logprobs=3)
    want = model.chat(CHAT, seed=4, max_new_tokens=30, logprobs=True, top_logprobs=3)
    assert r.choices[0].message.content == want.text
    assert r.choices[0].logprobs is not None and r.choices[0].logprobs.content is not None
    check_chat_logprobs(r.choices[0].logprobs.content, want, 3)
    # and they are the log-softmax of the model's logits at those positions, computed apart from
    # the SDK's scoring (torch's log_softmax in float64); the bigram's rows are exact (1e-9)
    import torch

    prompt = model.chat_prompt_ids(CHAT)
    rows = model.logits([*prompt, *want.token_ids])[len(prompt) - 1 :]
    ref = torch.log_softmax(torch.from_numpy(np.asarray(rows, dtype=np.float64)), -1).numpy()
    for i, got in enumerate(r.choices[0].logprobs.content):
        assert abs(got.logprob - ref[i, want.token_ids[i]]) <= 1e-9
        # the alternatives: the row's most likely ones, best first
        assert np.allclose([t.logprob for t in got.top_logprobs], np.sort(ref[i])[::-1][:3], rtol=0, atol=1e-9)


def test_chat_logprobs_streamed(client: openai.OpenAI, model: Model) -> None:
    stream: Any = client.chat.completions.create(model="bigram", messages=CHAT, seed=8, max_tokens=40,  # type: ignore[arg-type]
                                                 logprobs=True, top_logprobs=2, stream=True)
    content: list[Any] = []
    text = ""
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            if chunk.choices[0].logprobs is not None:
                content.extend(chunk.choices[0].logprobs.content or [])
    want = model.chat(CHAT, seed=8, max_new_tokens=40, logprobs=True, top_logprobs=2)
    assert text == want.text
    check_chat_logprobs(content, want, 2)


def test_chat_without_logprobs_has_none(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="bigram", messages=CHAT, seed=1, max_tokens=5)  # type: ignore[arg-type]
    assert r.choices[0].logprobs is None


def test_completion_legacy_logprobs(client: openai.OpenAI, model: Model) -> None:
    r = client.completions.create(model="bigram", prompt=PROMPT, seed=2, max_tokens=20, logprobs=3)
    want = model.generate(PROMPT, seed=2, max_new_tokens=20, logprobs=True, top_logprobs=3)
    choice = r.choices[0]
    assert choice.text == want.text and choice.logprobs is not None and want.logprobs is not None
    lp = choice.logprobs
    assert lp.tokens == [s.token for s in want.logprobs]
    assert lp.token_logprobs == [s.logprob for s in want.logprobs]
    assert lp.top_logprobs == [{t.token: t.logprob for t in s.top} for s in want.logprobs]
    offsets = [len(PROMPT)]
    for s in want.logprobs[:-1]:
        offsets.append(offsets[-1] + len(s.token))
    assert lp.text_offset == offsets


def test_completion_legacy_logprobs_streamed(client: openai.OpenAI, model: Model) -> None:
    tokens: list[str] = []
    values: list[float | None] = []
    offsets: list[int] = []
    for chunk in client.completions.create(model="bigram", prompt=PROMPT, seed=6, max_tokens=30, logprobs=0,
                                           stream=True):
        lp = chunk.choices[0].logprobs if chunk.choices else None
        if lp is not None:
            tokens += lp.tokens or []
            values += lp.token_logprobs or []
            offsets += lp.text_offset or []
            assert lp.top_logprobs == [{} for _ in lp.tokens or []]
    want = model.generate(PROMPT, seed=6, max_new_tokens=30, logprobs=True)
    assert want.logprobs is not None
    assert tokens == [s.token for s in want.logprobs] and values == [s.logprob for s in want.logprobs]
    assert offsets[0] == len(PROMPT) and offsets == sorted(offsets)


def test_concurrent_requests_keep_their_own_logprobs(client: openai.OpenAI, model: Model) -> None:
    def ask(seed: int) -> Any:
        return client.completions.create(model="bigram", prompt=PROMPT, seed=seed, max_tokens=25, logprobs=1)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(ask, [11, 12, 13]))
    for seed, r in zip([11, 12, 13], answers, strict=True):
        want = model.generate(PROMPT, seed=seed, max_new_tokens=25, logprobs=True, top_logprobs=1)
        assert want.logprobs is not None
        assert r.choices[0].logprobs is not None
        assert r.choices[0].logprobs.token_logprobs == [s.logprob for s in want.logprobs]


@pytest.mark.parametrize(("kind", "kwargs", "param"), [
    ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("chat", {"top_logprobs": 2}, "top_logprobs"),
    ("completions", {"logprobs": 21}, "logprobs"),
    ("completions", {"logprobs": -1}, "logprobs"),
])
def test_logprob_limits_are_400s_naming_the_field(client: openai.OpenAI, kind: str, kwargs: dict[str, Any],
                                                  param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        if kind == "chat":
            client.chat.completions.create(model="bigram", messages=CHAT, max_tokens=4, **kwargs)  # type: ignore[arg-type]
        else:
            client.completions.create(model="bigram", prompt=PROMPT, max_tokens=4, **kwargs)
    body: Any = info.value.body
    assert body["param"] == param and param in body["message"]


def test_bigram_cannot_embed_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="cannot compute embeddings") as info:
        client.embeddings.create(model="bigram", input="hello")
    body: Any = info.value.body
    assert body["param"] == "model"  # the served model is what cannot embed


# ---- embeddings on llama.cpp --------------------------------------------------------------------
@pytest.fixture(scope="module")
def gguf_model(tiny_llama: tuple[Path, Path]) -> Iterator[Model]:
    with openllm_hub.load(tiny_llama[1], device="cpu", threads=1, kv_cache_type="f32") as m:
        yield m


@pytest.fixture(scope="module")
def gguf_client(gguf_model: Model) -> Iterator[openai.OpenAI]:
    with openai_client(create_app(gguf_model, model_id="tiny", parallel=2)) as c:
        yield c


@pytest.mark.parametrize("encoding", ["float", "base64", None])
def test_embeddings_match_the_sdk(gguf_client: openai.OpenAI, gguf_model: Model, encoding: str | None) -> None:
    texts = ["Hello world", "A fox in the snow."]
    kwargs: dict[str, Any] = {} if encoding is None else {"encoding_format": encoding}
    r = gguf_client.embeddings.create(model="tiny", input=texts, **kwargs)
    want = np.asarray(gguf_model.embed(texts))
    assert r.object == "list" and r.model == "tiny" and [d.index for d in r.data] == [0, 1]
    if encoding == "base64":  # asked for explicitly, the client hands the strings over as they came
        got = np.asarray([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in r.data])  # type: ignore[arg-type]
    else:  # None: the client asks for base64 itself and decodes it
        got = np.asarray([d.embedding for d in r.data])
    assert got.shape == want.shape
    assert np.allclose(got, want, rtol=1e-6, atol=1e-7)  # float32 on the wire
    tokens = sum(len(gguf_model.tokenize(t)) for t in texts)
    assert r.usage.prompt_tokens == tokens and r.usage.total_tokens == tokens


def test_embeddings_single_string_and_normalize(gguf_client: openai.OpenAI, gguf_model: Model) -> None:
    r = gguf_client.embeddings.create(model="tiny", input="Hello world", encoding_format="float",
                                      extra_body={"normalize": True})
    assert len(r.data) == 1
    assert np.allclose(r.data[0].embedding, gguf_model.embed(["Hello world"], normalize=True)[0], atol=1e-7)


@pytest.mark.parametrize(("kwargs", "param"), [({"input": []}, "input"),
                                               ({"input": "x", "dimensions": 8}, "dimensions")])
def test_embeddings_bad_requests(gguf_client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gguf_client.embeddings.create(model="tiny", **kwargs)
    body: Any = info.value.body
    assert body["param"] == param


@pytest.mark.parametrize("as_list", [True, False], ids=["list", "one-string"])
def test_embedding_a_text_too_long_names_its_input(gguf_client: openai.OpenAI, gguf_model: Model,
                                                   as_list: bool) -> None:
    """Model.embed's error about one text names the request's field, ``input[i]`` (``input`` for a
    single string), in its param and message."""
    ctx = gguf_model.info.context_length
    assert ctx is not None
    long = "fox " * ctx
    field = "input[1]" if as_list else "input"
    with pytest.raises(openai.BadRequestError) as info:
        gguf_client.embeddings.create(model="tiny", input=["Hello", long] if as_list else long)
    body: Any = info.value.body
    assert body["param"] == field
    assert body["message"].startswith(f"{field} is ") and f"the context holds {ctx}" in body["message"]
    assert "texts" not in body["message"] and "embed]" not in body["message"]


def test_chat_logprobs_on_llama_cpp_with_two_slots(gguf_client: openai.OpenAI, gguf_model: Model) -> None:
    r = gguf_client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, temperature=0,  # type: ignore[arg-type]
                                            logprobs=True, top_logprobs=2)
    want = gguf_model.chat(CHAT, max_new_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    assert r.choices[0].logprobs is not None and r.choices[0].logprobs.content is not None
    # llama.cpp reuses the cached prompt prefix, so the two runs evaluate the prompt in other
    # pieces: same tokens, logprobs equal to fp32 rounding (tests/test_logprobs.py's bound)
    check_chat_logprobs(r.choices[0].logprobs.content, want, 2, bound=5e-5)


# ---- embeddings on a torch engine (ChatGLM2), next to generation in another slot ----------------
CHATGLM2 = Path(__file__).resolve().parents[2] / "plugins" / "chatglm" / "tests" / "data" / "official_glm2" / "chatglm2"


@pytest.fixture(scope="module")
def chatglm_model() -> Iterator[Model]:
    with openllm_hub.load(CHATGLM2, device="cpu", dtype="fp32") as m:
        yield m


def test_chatglm_embeddings_match_the_sdk_while_a_completion_runs(chatglm_model: Model, server_thread: Any) -> None:
    """The ChatGLM torch engine's embeddings (checked against transformers' GLM in
    plugins/chatglm/tests/test_embeddings.py) through ``/v1/embeddings``, requested while a
    streamed completion holds the other slot; the completion is unchanged by them."""
    texts = ["你好", "A fox in the snow.", "Once upon a time " * 20]
    want = np.asarray(chatglm_model.embed(texts))
    alone = chatglm_model.generate(PROMPT, max_new_tokens=24, temperature=0.0)
    with server_thread(create_app(chatglm_model, model_id="glm", parallel=2)) as s, \
            openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=60) as c:
        stream: Any = c.completions.create(model="glm", prompt=PROMPT, max_tokens=24, temperature=0, stream=True)
        text, got = "", None
        for chunk in stream:
            text += chunk.choices[0].text if chunk.choices else ""
            if got is None:
                r = c.embeddings.create(model="glm", input=texts, encoding_format="float")
                got = np.asarray([d.embedding for d in r.data])
                tokens = sum(len(chatglm_model.tokenize(t)) for t in texts)
                assert r.usage.prompt_tokens == tokens
    assert got is not None and got.shape == want.shape == (3, 64)
    assert np.allclose(got, want, rtol=1e-6, atol=1e-7)  # float32 on the wire
    assert text == alone.text
