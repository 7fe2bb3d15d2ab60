"""Error paths and serving behaviour: validation, bounds, auth, the queue, cancellation, shutdown.

Request/response checks use Starlette's TestClient; anything about connections (a full
queue, a client that goes away, shutting down) runs a real uvicorn server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from live_server import health, post_in_thread, serve_command, sigterm

from openllm_hub.core.model import Model
from openllm_hub.errors import InvalidParameterError
from openllm_hub.server import create_app

CHAT = [{"role": "user", "content": "Tell me a story."}]


def chat_body(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": CHAT, **kw}


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


@pytest.fixture(scope="module")
def client(model: Model) -> Iterator[TestClient]:
    with TestClient(create_app(model, max_tokens_limit=256, max_request_bytes=20_000)) as c:
        yield c


# ---- validation and bounds ------------------------------------------------------------------
def test_malformed_json(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", content=b'{"model": "m", "messages": [', headers={
        "content-type": "application/json"})
    err = assert_openai_error(r, 400, "invalid_request")
    assert "JSON" in err["message"]
    r = client.post("/v1/completions", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert_openai_error(r, 400)


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m"}, "messages"),
    (chat_body(temperature=3), "temperature"),
    (chat_body(top_p=0), "top_p"),
    (chat_body(seed=-1), "seed"),
    (chat_body(stop=["a", "b", "c", "d", "e"]), "stop"),
    (chat_body(stop=[""]), "stop"),
    (chat_body(max_tokens=0), "max_tokens"),
    (chat_body(unknown_field=1), "unknown_field"),
    (chat_body(logprobs=True, top_logprobs=21), "top_logprobs"),
    ({"model": "m", "messages": [{"role": "function", "content": "x"}]}, "messages.0.role"),
    (chat_body(tools=[{"type": "function"}]), "tools[0].function"),  # tools: tests/server/test_tools_server.py
])
def test_invalid_fields_name_the_parameter(client: TestClient, body: dict[str, Any], param: str) -> None:
    err = assert_openai_error(client.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == param


@pytest.mark.parametrize(("body", "param"), [
    (chat_body(n=2), "n"),
    (chat_body(presence_penalty=0.5), "presence_penalty"),
    (chat_body(logit_bias={"1": 5}), "logit_bias"),
])
def test_unsupported_features_are_refused(client: TestClient, body: dict[str, Any], param: str) -> None:
    err = assert_openai_error(client.post("/v1/chat/completions", json=body), 400, "unsupported_parameter")
    assert err["param"] == param


def test_conversation_rules_come_from_the_sdk(client: TestClient) -> None:
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    err = assert_openai_error(client.post("/v1/chat/completions", json={"model": "m", "messages": msgs}), 400)
    assert "alternate" in err["message"]
    err = assert_openai_error(client.post("/v1/chat/completions", json=chat_body(chat_template="nope")), 400)
    assert "nope" in err["message"]


def test_max_tokens_bound(client: TestClient) -> None:
    err = assert_openai_error(client.post("/v1/chat/completions", json=chat_body(max_tokens=257)), 400,
                              "max_tokens_too_large")
    assert "256" in err["message"]
    assert_openai_error(client.post("/v1/chat/completions", json=chat_body(max_completion_tokens=1000)), 400)
    r = client.post("/v1/chat/completions", json=chat_body(max_tokens=256, seed=0))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 256


def test_request_size_bound(client: TestClient) -> None:
    big = chat_body(messages=[{"role": "user", "content": "x" * 30_000}])
    assert_openai_error(client.post("/v1/chat/completions", json=big), 413, "request_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        data = json.dumps(big).encode()
        for i in range(0, len(data), 4096):
            yield data[i:i + 4096]

    r = client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert_openai_error(r, 413, "request_too_large")
    assert client.post("/v1/chat/completions", json=chat_body(max_tokens=3)).status_code == 200


def test_prompt_longer_than_context_then_keeps_serving(client: TestClient, model: Model) -> None:
    """The model's own error (raised on the worker thread) comes back as a 400; the next request works."""
    ctx = model.info.context_length
    assert ctx is not None
    r = client.post("/v1/completions", json={"model": "m", "prompt": "a" * ctx, "max_tokens": 5})
    err = assert_openai_error(r, 400)
    assert "context" in err["message"]
    r = client.post("/v1/completions", json={"model": "m", "prompt": "a" * ctx, "max_tokens": 5, "stream": True})
    assert_openai_error(r, 400)
    r = client.post("/v1/completions", json={"model": "m", "prompt": "Once", "max_tokens": 5, "seed": 1})
    assert r.status_code == 200
    assert r.json()["choices"][0]["text"] == model.generate("Once", max_new_tokens=5, seed=1).text


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_openai_error(client.get("/v1/nothing"), 404, "not_found")
    assert_openai_error(client.get("/v1/chat/completions"), 405, "method_not_allowed")


def test_content_parts_and_developer_role(client: TestClient, model: Model) -> None:
    msgs = [{"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Tell me "}, {"type": "text", "text": "a story"}]}]
    r = client.post("/v1/chat/completions", json={"model": "m", "messages": msgs, "seed": 4, "max_tokens": 40})
    want = model.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story"}],
                      seed=4, max_new_tokens=40)
    assert r.json()["choices"][0]["message"]["content"] == want.text


def test_health_and_page(client: TestClient) -> None:
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["capacity"] == 9 and h["running"] == 0
    page = client.get("/")
    assert page.status_code == 200 and "<textarea" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    # the page refers to nothing outside this server
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_create_app_validates_its_arguments(model: Model) -> None:
    for kw in ({"queue_size": -1}, {"max_tokens_limit": 0}, {"max_request_bytes": 0}, {"api_key": " "}):
        with pytest.raises(InvalidParameterError):
            create_app(model, **kw)


# ---- auth ----------------------------------------------------------------------------------------
def test_api_key_required_on_the_api_only(model: Model) -> None:
    with TestClient(create_app(model, api_key="s3cret")) as c:
        for path in ("/v1/models", "/openapi.json"):
            r = c.get(path)
            assert_openai_error(r, 401, "invalid_api_key")
            assert r.headers["www-authenticate"] == "Bearer"
        assert_openai_error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert_openai_error(c.get("/v1/models", headers={"Authorization": "s3cret"}), 401)
        assert_openai_error(c.post("/v1/completions", content=b"{bad", headers={"content-type": "application/json"}),
                            401)  # auth is checked before the body is read
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "bearer s3cret"}).status_code == 200
        # the page and health are open: the page asks for the key; health tells nothing private
        assert c.get("/").status_code == 200
        assert c.get("/static/app.js").status_code == 200
        assert c.get("/health").status_code == 200


def test_host_check_refuses_other_names(model: Model) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    with TestClient(create_app(model, allowed_hosts=["localhost", "127.0.0.1", "::1"])) as c:
        assert_openai_error(c.get("/v1/models", headers={"Host": "evil.example"}), 400, "invalid_host")
        assert_openai_error(c.get("/", headers={"Host": "evil.example:8000"}), 400, "invalid_host")
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
            assert c.get("/v1/models", headers={"Host": host}).status_code == 200


def test_non_json_content_type_is_refused(client: TestClient) -> None:
    """A form or text/plain POST (what another site's page can send without CORS) starts nothing."""
    body = json.dumps({"model": "m", "prompt": "a", "max_tokens": 3}).encode()
    err = assert_openai_error(client.post("/v1/completions", content=body, headers={"content-type": "text/plain"}),
                              400)
    assert "application/json" in err["message"]


# ---- errors inside a generation ---------------------------------------------------------------------
def test_fault_in_one_generation_is_reported_and_server_keeps_serving(
        model: Model, paced: Any, serve: Callable[..., Any]) -> None:
    import openai

    faulty = paced(model, fail_after=3)
    srv = serve(create_app(faulty))
    r = httpx.post(srv.url + "/v1/completions", json={"model": "m", "prompt": "Tom", "max_tokens": 50}, timeout=60)
    err = assert_openai_error(r, 500, "internal_error")
    assert "injected fault" in err["message"]
    with openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0) as c:
        stream = c.completions.create(model="m", prompt="Tom", max_tokens=50, stream=True)
        with pytest.raises(openai.APIError, match="injected fault"):
            list(stream)
        faulty.fail_after = None
        ok = c.completions.create(model="m", prompt="Tom", max_tokens=10, seed=2)
    assert ok.choices[0].text == model.generate("Tom", max_new_tokens=10, seed=2).text
    assert faulty.closed_streams == faulty.started == 3


# ---- queue, cancellation, shutdown -------------------------------------------------------------------
def test_full_queue_gets_429_with_retry_after(model: Model, paced: Any, serve: Callable[..., Any],
                                              eventually: Callable[..., None]) -> None:
    slow = paced(model, gated=True)  # holds each generation until the test opens the gate
    srv = serve(create_app(slow, queue_size=1))
    results: dict[str, httpx.Response] = {}
    body = {"model": "m", "prompt": "Once", "max_tokens": 20, "seed": 9}
    a = post_in_thread(srv.url, body, results, "a")
    eventually(lambda: health(srv.url)["running"] == 1, "the first request to run")
    b = post_in_thread(srv.url, body, results, "b")
    eventually(lambda: health(srv.url)["waiting"] == 1, "the second request to wait")

    r = httpx.post(srv.url + "/v1/completions", json=body, timeout=60)
    err = assert_openai_error(r, 429, "queue_full")
    assert err["type"] == "rate_limit_error"
    assert int(r.headers["retry-after"]) >= 1
    r = httpx.post(srv.url + "/v1/chat/completions", json=chat_body(stream=True), timeout=60)
    assert_openai_error(r, 429, "queue_full")

    slow.gate.set()
    a.join(60)
    b.join(60)
    want = model.generate("Once", max_new_tokens=20, seed=9).text
    assert [results[k].json()["choices"][0]["text"] for k in "ab"] == [want, want]
    assert httpx.post(srv.url + "/v1/completions", json=body, timeout=60).status_code == 200


def test_slot_is_free_when_the_answer_arrives(model: Model, serve: Callable[..., Any]) -> None:
    """A client that sends its next request as soon as it has an answer never meets a full queue."""
    srv = serve(create_app(model, queue_size=0))
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        for i in range(40):
            stream = i % 2 == 1
            r = c.post("/v1/chat/completions", json=chat_body(max_tokens=4, seed=i, stream=stream))
            assert r.status_code == 200, r.text
            if stream:
                assert r.text.endswith("data: [DONE]\n\n")


def test_streaming_client_disconnect_cancels_generation(model: Model, paced: Any, serve: Callable[..., Any],
                                                        eventually: Callable[..., None],
                                                        long_answer_seed: Callable[..., int]) -> None:
    full = 300
    seed = long_answer_seed(model, prompt="Once", tokens=full)
    slow = paced(model, delay=0.02)  # uncancelled, the answer would take >= 6 s
    srv = serve(create_app(slow, max_tokens_limit=full))
    body = {"model": "m", "prompt": "Once", "max_tokens": full, "seed": seed, "stream": True}
    with httpx.Client(timeout=60) as c, c.stream("POST", srv.url + "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["choices"][0]["text"]
    # leaving the block closed the connection mid-answer
    eventually(lambda: slow.closed_streams == 1, "the generation to be cancelled")
    assert 0 < slow.tokens_per_stream[0] < full
    eventually(lambda: health(srv.url)["running"] == 0, "the worker to be free")
    r2 = httpx.post(srv.url + "/v1/completions", json={**body, "stream": False, "max_tokens": 5}, timeout=60)
    assert r2.status_code == 200


def _raw_request(port: int, body: dict[str, Any]) -> socket.socket:
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return s


def test_whole_answer_client_disconnect_cancels_running_and_waiting(
        model: Model, paced: Any, serve: Callable[..., Any], eventually: Callable[..., None],
        long_answer_seed: Callable[..., int]) -> None:
    full = 300
    seed = long_answer_seed(model, prompt="Once", tokens=full)
    slow = paced(model, delay=0.02)
    srv = serve(create_app(slow, queue_size=2, max_tokens_limit=full))
    body = {"model": "m", "prompt": "Once", "max_tokens": full, "seed": seed}
    running = _raw_request(srv.port, body)
    eventually(lambda: slow.started == 1, "the first generation to start")
    waiting = _raw_request(srv.port, body)
    eventually(lambda: health(srv.url)["waiting"] == 1, "the second request to queue")
    waiting.close()
    eventually(lambda: health(srv.url)["waiting"] == 0, "the waiting request to leave the queue")
    running.close()
    eventually(lambda: slow.closed_streams == 1, "the running generation to be cancelled")
    assert slow.tokens_per_stream[0] < full
    eventually(lambda: health(srv.url)["running"] == 0, "the worker to be free")
    assert slow.started == 1, "the abandoned request must never run"


def test_graceful_shutdown_finishes_in_flight_request(model: Model, paced: Any, serve: Callable[..., Any],
                                                      eventually: Callable[..., None]) -> None:
    slow = paced(model, delay=0.01)
    srv = serve(create_app(slow), graceful_timeout=30)
    results: dict[str, httpx.Response] = {}
    body = {"model": "m", "prompt": "Lily", "max_tokens": 40, "seed": 3, "temperature": 0}
    t = post_in_thread(srv.url, body, results, "a")
    eventually(lambda: slow.started == 1, "the generation to start")
    srv.stop()
    t.join(60)
    r = results["a"]
    assert r.status_code == 200
    assert r.json()["choices"][0]["text"] == model.generate("Lily", max_new_tokens=40, seed=3, temperature=0).text


def test_graceful_shutdown_cancels_after_timeout(model: Model, paced: Any, serve: Callable[..., Any],
                                                 eventually: Callable[..., None],
                                                 long_answer_seed: Callable[..., int]) -> None:
    full = 300
    seed = long_answer_seed(model, prompt="Once", tokens=full)
    slow = paced(model, delay=0.05)  # >= 15 s if it ran to the end
    srv = serve(create_app(slow, max_tokens_limit=full, shutdown_grace=1), graceful_timeout=1)
    received: list[str] = []

    def stream() -> None:
        with httpx.stream("POST", srv.url + "/v1/completions", timeout=60, json={
                "model": "m", "prompt": "Once", "max_tokens": full, "seed": seed, "stream": True}) as r:
            try:
                for line in r.iter_lines():
                    received.append(line)
            except httpx.RemoteProtocolError:
                received.append("<cut>")  # the server ended the stream mid-answer

    t = threading.Thread(target=stream)
    t.start()
    eventually(lambda: slow.started == 1 and slow.tokens_per_stream[0] > 0, "the generation to start")
    srv.stop()
    t.join(60)
    assert slow.closed_streams == 1 and slow.tokens_per_stream[0] < full
    assert received and "data: [DONE]" not in received


# ---- the command ---------------------------------------------------------------------------------
def test_serve_command_runs_and_stops_on_sigterm(bigram_path: Path) -> None:
    env = {**os.environ, "OPENLLM_HUB_API_KEY": "k3y"}
    with serve_command(bigram_path, "--queue-size", "2", "--log-level", "warning", env=env) as (proc, url):
        assert httpx.get(url + "/v1/models").status_code == 401
        r = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k3y"})
        assert r.json()["data"][0]["id"] == bigram_path.name
        assert health(url)["capacity"] == 3
        assert httpx.get(url + "/health", headers={"Host": "evil.example"}).status_code == 400
        err = sigterm(proc)
    assert proc.returncode == 0, err
    assert f"{url}/" in err and "API key required" in err


def test_serve_command_reports_bad_input(bigram_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "openllm_hub.server", str(bigram_path), "--queue-size", "-1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "queue_size" in r.stderr
    r = subprocess.run([sys.executable, "-m", "openllm_hub.server", "/no/such/model"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "error" in r.stderr


# ---- what serve --help and the README say -------------------------------------------------------
def _openai_fields() -> dict[str, set[str]]:
    """The fields OpenAI's API defines for each request, from the official client's own types."""
    from openai.types import completion_create_params, embedding_create_params
    from openai.types.chat import completion_create_params as chat_create_params

    return {"ChatCompletionRequest": set(chat_create_params.CompletionCreateParamsStreaming.__annotations__),
            "CompletionRequest": set(completion_create_params.CompletionCreateParamsStreaming.__annotations__),
            "EmbeddingRequest": set(embedding_create_params.EmbeddingCreateParams.__annotations__)}


def _readme_server_section() -> str:
    readme = (Path(__file__).parents[2] / "README.md").read_text("utf-8")
    start = readme.index("`openllm-hub serve MODEL")
    return readme[start:readme.index("\n\n", start)]


def test_serve_help_and_readme_list_every_endpoint_and_extension_field(model: Model) -> None:
    """Every route of the app and every request field beyond OpenAI's are in ``serve --help``
    and in the README's server section (both written by hand, checked against the code)."""
    import argparse

    from fastapi.routing import APIRoute

    from openllm_hub.server import schemas
    from openllm_hub.server.cli import add_serve_command

    help_text = add_serve_command(argparse.ArgumentParser(prog="openllm-hub").add_subparsers()).format_help()
    paths = {r.path.split("/{")[0] for r in create_app(model).routes
             if isinstance(r, APIRoute) and r.path not in ("/", "/favicon.ico")}
    assert {"/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/health",
            "/metrics"} <= paths
    extensions = {name for cls, theirs in _openai_fields().items()
                  for name in set(getattr(schemas, cls).model_fields) - theirs}
    assert {"top_k", "repeat_penalty", "grammar", "chat_template", "normalize"} <= extensions
    for where, text in (("serve --help", " ".join(help_text.split())), ("README", " ".join(
            _readme_server_section().split()))):
        for path in paths:
            assert re.search(rf"{re.escape(path)}(?![\w/])", text), f"{where} does not list {path}"
        assert re.search(r"chat page at `?/", text), where
        for name in extensions:
            assert name in text, f"{where} does not name the extension field {name!r}"
