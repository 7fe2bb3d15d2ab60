"""Several requests at once: ``create_app(parallel=N)`` / ``serve --parallel N``, and ``/metrics``.

Every answer is compared with the SDK called directly on the same model, prompt, seed and
parameters. The bigram engine interleaves (one token per running request in turn), so the
order in which tokens are produced is fixed by the scheduler's rules, not by timing: the
tests hold the first generation at a gate (:class:`PacedModel`, see conftest.py) until the
requests they need are admitted, then check who ran with whom from the recorded order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from live_server import health, post_in_thread, serve_command, sigterm
from prometheus_client.parser import text_string_to_metric_families

import openllm_hub
from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.model import Model
from openllm_hub.server import create_app

KEY = "k-parallel"


def _recording(paced: Any) -> Any:
    class Recording(paced):  # type: ignore[misc, valid-type]
        """PacedModel that records, for each token it yields, its prompt's length and how many
        streams were alive at that moment."""

        def __init__(self, *args: Any, fail_on: str | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.order: list[int] = []
            self.live: list[int] = []
            self.fail_ids = self.tokenize(fail_on) if fail_on else None

        def _token_stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[int]:
            for n, token in enumerate(super()._token_stream(prompt_ids, config)):
                if prompt_ids == self.fail_ids and n >= 2:
                    raise RuntimeError("injected fault in one request")
                self.order.append(len(prompt_ids))
                self.live.append(self.started - self.closed_streams)
                yield token

    return Recording


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, by name and labels, parsed with prometheus_client's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


# ---- eight official clients at once -----------------------------------------------------------
STORIES = ["Once upon a time", "Lily went to the park", "Tom had a big red", "The cat",
           "A little bird", "One day, a girl named", "Sam and his dog", "The sun was"]


def _request(i: int) -> dict[str, Any]:
    """Request i: completions for even i, chat for odd; streamed for i in 2, 3, 6, 7; greedy for i < 4."""
    params: dict[str, Any] = {"seed": 100 + i, "max_tokens": 24 + 2 * i, "temperature": 0.0 if i < 4 else 0.9}
    return {"chat": i % 2 == 1, "stream": (i // 2) % 2 == 1, "text": STORIES[i], "params": params}


def _call(client: openai.OpenAI, req: dict[str, Any]) -> tuple[str, str, int, int]:
    """(text, finish reason, prompt tokens, completion tokens) of one request through the client."""
    p = req["params"]
    extra = {"stream_options": {"include_usage": True}} if req["stream"] else {}
    if req["chat"]:
        messages = [{"role": "user", "content": req["text"]}]
        if not req["stream"]:
            r = client.chat.completions.create(model="m", messages=messages, **p)  # type: ignore[arg-type]
            assert r.usage is not None
            return (r.choices[0].message.content or "", r.choices[0].finish_reason, r.usage.prompt_tokens,
                    r.usage.completion_tokens)
        parts, finish, usage = [], "", None
        for ev in client.chat.completions.create(model="m", messages=messages, stream=True, **p, **extra):  # type: ignore[arg-type, call-overload]
            if ev.choices:
                parts.append(ev.choices[0].delta.content or "")
                finish = ev.choices[0].finish_reason or finish
            usage = ev.usage or usage
        assert usage is not None
        return "".join(parts), finish, usage.prompt_tokens, usage.completion_tokens
    if not req["stream"]:
        c = client.completions.create(model="m", prompt=req["text"], **p)
        assert c.usage is not None
        return c.choices[0].text, c.choices[0].finish_reason, c.usage.prompt_tokens, c.usage.completion_tokens
    parts, finish, usage = [], "", None
    for ev in client.completions.create(model="m", prompt=req["text"], stream=True, **p, **extra):  # type: ignore[call-overload]
        if ev.choices:
            parts.append(ev.choices[0].text)
            finish = ev.choices[0].finish_reason or finish
        usage = ev.usage or usage
    assert usage is not None
    return "".join(parts), finish, usage.prompt_tokens, usage.completion_tokens


def _expected(model: Model, req: dict[str, Any]) -> tuple[str, str, int, int]:
    p = {**req["params"]}
    p["max_new_tokens"] = p.pop("max_tokens")
    if req["chat"]:
        done = model.chat([{"role": "user", "content": req["text"]}], **p)
    else:
        done = model.generate(req["text"], **p)
    return done.text, done.finish_reason, done.usage.prompt_tokens, done.usage.completion_tokens


def _eight_clients_at_once(url: str, requests: list[dict[str, Any]], eventually: Callable[..., None],
                           release: Callable[[], None]) -> dict[int, Any]:
    """Send ``requests`` from eight official clients at once; once the server counts all eight
    in flight (running or waiting), ``release`` the engine's gate; each request's
    :func:`_call` result (or its exception), by index."""
    results: dict[int, Any] = {}

    def run(i: int) -> None:
        with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120) as client:
            try:
                results[i] = _call(client, requests[i])
            except Exception as exc:  # noqa: BLE001 - reported by the caller's assertions
                results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    try:
        eventually(lambda: health(url)["running"] + health(url)["waiting"] == len(requests),
                   f"all {len(requests)} requests admitted")
    finally:
        release()
    for t in threads:
        t.join(120)
    return results


def test_eight_openai_clients_at_once_get_their_single_run_answers(
        model: Model, paced: Any, serve: Callable[..., Any], eventually: Callable[..., None]) -> None:
    slow = _recording(paced)(model, gated=True)
    srv = serve(create_app(slow, parallel=4, queue_size=8, api_key=KEY))
    requests = [_request(i) for i in range(8)]
    results = _eight_clients_at_once(srv.url, requests, eventually, slow.gate.set)
    for i in range(8):
        assert results[i] == _expected(model, requests[i]), f"request {i}: {requests[i]}"
    assert max(slow.live) == 4, "four requests must have run at once"

    card = httpx.get(srv.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]
    assert card["meta"]["batching"] == "interleaved" and card["meta"]["parallel"] == 4
    assert card["meta"]["queue_capacity"] == 12 and card["meta"]["slot_tokens"] == model.info.context_length

    assert httpx.get(srv.url + "/metrics").status_code == 401, "metrics need the key when the server has one"
    page = httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    m = _metrics(page.text)
    want = [_expected(model, r) for r in requests]
    finished = {reason: sum(1 for w in want if w[1] == reason) for reason in ("stop", "length")}
    for reason, count in finished.items():
        assert _value(m, "openllm_hub_requests_total", outcome=reason) == count
    assert _value(m, "openllm_hub_requests_total", outcome="error") == 0
    assert _value(m, "openllm_hub_requests_total", outcome="cancelled") == 0
    assert _value(m, "openllm_hub_requests_refused_total") == 0
    assert _value(m, "openllm_hub_prompt_tokens_total") == sum(w[2] for w in want)
    assert _value(m, "openllm_hub_generated_tokens_total") == sum(w[3] for w in want)
    assert _value(m, "openllm_hub_time_to_first_token_seconds_count") == 8
    assert _value(m, "openllm_hub_time_to_first_token_seconds_bucket", le="+Inf") == 8
    assert _value(m, "openllm_hub_time_per_output_token_seconds_count") == sum(1 for w in want if w[3] >= 2)
    assert _value(m, "openllm_hub_requests_running") == 0 and _value(m, "openllm_hub_requests_waiting") == 0
    assert _value(m, "openllm_hub_slots") == 4


# ---- slots, queue, 429 -----------------------------------------------------------------------
GREEDY = {"max_tokens": 6, "temperature": 0, "repeat_penalty": 1.0}


def _post(url: str, prompt: str, results: dict[str, httpx.Response]) -> threading.Thread:
    return post_in_thread(url, {"model": "m", "prompt": prompt, **GREEDY}, results, prompt, timeout=120)


def test_slots_full_then_queue_then_429_first_in_first_out(
        model: Model, paced: Any, serve: Callable[..., Any], eventually: Callable[..., None]) -> None:
    slow = _recording(paced)(model, gated=True)
    srv = serve(create_app(slow, parallel=2, queue_size=1))
    results: dict[str, httpx.Response] = {}
    # prompts of 3, 5 and 7 ids (BOS + bytes): the recorded order says whose token it was
    a = _post(srv.url, "ab", results)
    eventually(lambda: health(srv.url)["running"] == 1, "the first request to take a slot")
    b = _post(srv.url, "abcd", results)
    eventually(lambda: health(srv.url)["waiting"] == 1, "the second request to queue")
    c = _post(srv.url, "abcdef", results)
    eventually(lambda: health(srv.url)["waiting"] == 2, "the third request to queue")
    assert health(srv.url)["capacity"] == 3
    r = httpx.post(srv.url + "/v1/completions", json={"model": "m", "prompt": "x", **GREEDY}, timeout=60)
    assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full" and int(r.headers["retry-after"]) >= 1
    slow.gate.set()
    for t in (a, b, c):
        t.join(120)
    for prompt in ("ab", "abcd", "abcdef"):
        want = model.generate(prompt, max_new_tokens=6, temperature=0, repeat_penalty=1.0)
        assert want.usage.completion_tokens == 6, "the check needs answers of the full length"
        assert results[prompt].json()["choices"][0]["text"] == want.text
    # a (3) alone in the first step, then a and b in turn; c (7) only once a finished
    order = slow.order
    assert order[:5] == [3, 3, 5, 3, 5]
    first_c = order.index(7)
    assert order[:first_c].count(3) == 6 and 7 not in order[:first_c]
    assert max(slow.live) == 2
    m = _metrics(httpx.get(srv.url + "/metrics").text)
    assert _value(m, "openllm_hub_requests_refused_total") == 1
    assert _value(m, "openllm_hub_requests_total", outcome="length") == 3
    assert _value(m, "openllm_hub_generated_tokens_total") == 18


def test_a_disconnecting_client_frees_its_slot_and_its_neighbour_is_unchanged(
        model: Model, paced: Any, serve: Callable[..., Any], eventually: Callable[..., None],
        long_answer_seed: Callable[..., int]) -> None:
    full = 300
    seed = long_answer_seed(model, prompt="Once", tokens=full)
    slow = paced(model, delay=0.01)
    srv = serve(create_app(slow, parallel=2, max_tokens_limit=full))
    results: dict[str, httpx.Response] = {}
    body = {"model": "m", "prompt": "Once", "max_tokens": full, "seed": seed, "stream": True}
    with httpx.Client(timeout=60) as c, c.stream("POST", srv.url + "/v1/completions", json=body) as r:
        assert r.status_code == 200
        next(line for line in r.iter_lines() if line.startswith("data:"))
        neighbour = threading.Thread(target=lambda: results.update(n=httpx.post(
            srv.url + "/v1/completions", json={"model": "m", "prompt": "Lily", "max_tokens": 40, "seed": 5},
            timeout=120)))
        neighbour.start()
        eventually(lambda: slow.started == 2, "both requests to run")
    # leaving the block closed the connection mid-answer
    eventually(lambda: slow.closed_streams >= 1, "the abandoned generation to be cancelled")
    assert slow.tokens_per_stream[0] < full
    neighbour.join(120)
    assert results["n"].json()["choices"][0]["text"] == model.generate("Lily", max_new_tokens=40, seed=5).text
    eventually(lambda: health(srv.url)["running"] == 0, "every slot to be free")
    m = _metrics(httpx.get(srv.url + "/metrics").text)
    assert _value(m, "openllm_hub_requests_total", outcome="cancelled") == 1


def test_a_failing_request_does_not_fail_its_neighbours(
        model: Model, paced: Any, serve: Callable[..., Any], eventually: Callable[..., None]) -> None:
    faulty = _recording(paced)(model, gated=True, fail_on="abcd")
    srv = serve(create_app(faulty, parallel=3))
    results: dict[str, httpx.Response] = {}
    threads = [_post(srv.url, "ab", results)]
    eventually(lambda: health(srv.url)["running"] == 1, "the first request to run")
    threads += [_post(srv.url, "abcd", results), _post(srv.url, "abcdef", results)]
    eventually(lambda: health(srv.url)["waiting"] == 2, "the others to queue")
    faulty.gate.set()
    for t in threads:
        t.join(120)
    assert results["abcd"].status_code == 500 and "injected fault" in results["abcd"].json()["error"]["message"]
    for prompt in ("ab", "abcdef"):
        want = model.generate(prompt, max_new_tokens=6, temperature=0, repeat_penalty=1.0).text
        assert results[prompt].json()["choices"][0]["text"] == want
    m = _metrics(httpx.get(srv.url + "/metrics").text)
    assert _value(m, "openllm_hub_requests_total", outcome="error") == 1


# ---- what a slot holds, what the server says about itself -------------------------------------
@pytest.fixture(scope="module")
def client(model: Model) -> Iterator[TestClient]:
    with TestClient(create_app(model, parallel=3, queue_size=2)) as c:
        yield c


def test_prompt_plus_max_tokens_over_a_slot_is_refused_before_admission(client: TestClient, model: Model) -> None:
    ctx = model.info.context_length
    assert ctx is not None
    prompt = "a" * (ctx - 100)  # BOS + ctx - 100 ids
    r = client.post("/v1/completions", json={"model": "m", "prompt": prompt, "max_tokens": 200})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
    assert f"{ctx - 99} tokens" in err["message"] and "at most 99" in err["message"]
    r = client.post("/v1/completions", json={"model": "m", "prompt": prompt, "max_tokens": 99, "seed": 1})
    assert r.status_code == 200
    # without max_tokens, the answer is bounded by the room left instead
    r = client.post("/v1/chat/completions", json={"model": "m", "seed": 2,
                                                  "messages": [{"role": "user", "content": "a" * (ctx - 200)}]})
    assert r.status_code == 200 and r.json()["usage"]["total_tokens"] <= ctx
    m = _metrics(client.get("/metrics").text)
    assert _value(m, "openllm_hub_requests_total", outcome="length") + \
        _value(m, "openllm_hub_requests_total", outcome="stop") == 2, "the refused request never ran"


def test_models_metadata_says_how_requests_share_the_model(client: TestClient) -> None:
    meta = client.get("/v1/models").json()["data"][0]["meta"]
    assert meta["batching"] == "interleaved" and meta["parallel"] == 3 and meta["queue_capacity"] == 5
    assert client.get("/health").json()["capacity"] == 5


def test_create_app_refuses_zero_slots(model: Model) -> None:
    from openllm_hub.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="parallel"):
        create_app(model, parallel=0)


# ---- the command -----------------------------------------------------------------------------
def test_serve_parallel_flag_and_start_up_line(bigram_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENLLM_HUB_API_KEY"}
    with serve_command(bigram_path, "--parallel", "3", "--queue-size", "2", "--log-level", "warning",
                       env=env) as (proc, url):
        assert health(url)["capacity"] == 5
        assert json.loads(httpx.get(url + "/v1/models").text)["data"][0]["meta"]["parallel"] == 3
        err = sigterm(proc)
    assert proc.returncode == 0, err
    assert "3 parallel slots (interleaved; --parallel), 2 more may wait" in err
    r = subprocess.run([sys.executable, "-m", "openllm_hub.server", str(bigram_path), "--parallel", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--parallel" in r.stderr


def test_a_closed_model_fails_the_running_requests_and_the_server_keeps_answering(
        model: Model, paced: Any, serve: Callable[..., Any], eventually: Callable[..., None]) -> None:
    slow = _recording(paced)(model, gated=True)
    srv = serve(create_app(slow, parallel=2))
    results: dict[str, httpx.Response] = {}
    t = _post(srv.url, "ab", results)
    eventually(lambda: health(srv.url)["running"] == 1, "the request to run")
    slow.close()
    slow.gate.set()
    t.join(120)
    assert results["ab"].status_code == 503 and results["ab"].json()["error"]["code"] == "model_closed"
    r = httpx.post(srv.url + "/v1/completions", json={"model": "m", "prompt": "x", **GREEDY}, timeout=60)
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_closed"
    assert health(srv.url)["running"] == 0


def test_eight_openai_clients_on_a_batching_engine(tiny_llama: tuple[Path, Path], serve: Callable[..., Any],
                                                   eventually: Callable[..., None],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The same eight official clients (completions and chat, streamed and not, greedy and sampled)
    on a GGUF served with eight slots by llama.cpp's batched decoder: each gets its single-run
    answer (float32 weights and KV cache: batch rows equal single runs), and they ran as one
    batch: the first decoding step waits until all eight are in flight, and one step then gives
    a token to all eight sequences."""
    from openllm_hub.engines.llama_cpp_batch import LlamaCppBatchDecoder

    gate = threading.Event()
    per_step: list[int] = []
    real_step = LlamaCppBatchDecoder.step

    def gated_step(self: LlamaCppBatchDecoder) -> dict[int, Any]:
        gate.wait(120)
        out = real_step(self)
        per_step.append(sum(isinstance(t, int) for t in out.values()))
        return out

    _, gguf = tiny_llama
    with openllm_hub.load(gguf, device="cpu", threads=1, kv_cache_type="f32") as model:
        requests = [_request(i) for i in range(8)]
        want = [_expected(model, req) for req in requests]
        monkeypatch.setattr(LlamaCppBatchDecoder, "step", gated_step)
        srv = serve(create_app(model, parallel=8, queue_size=8, api_key=KEY))
        results = _eight_clients_at_once(srv.url, requests, eventually, gate.set)
        card = httpx.get(srv.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]
    for i in range(8):
        assert results[i] == want[i], f"request {i}: {requests[i]}"
    assert max(per_step) == 8, f"tokens per decoding step: {per_step}: the eight requests never ran in one batch"
    assert card["meta"]["batching"] == "batched" and card["meta"]["parallel"] == 8
