"""Concurrent streaming clients through the server, side by side: ``openllm-hub serve`` on
llama.cpp (f16 and q8_0 GGUF), on torch (the same weights as an HF folder, float32; a ChatGLM2
folder of comparable size) and llama-cpp-python's own ``python -m llama_cpp.server`` on the
same GGUF files.

For every server and N in ``--clients`` (1, 2, 4, 8), N closed-loop httpx clients send
streaming ``POST /v1/completions`` requests back to back. Every request uses the same settings
on every server: one of eight fixed prompts (6-23 tokens with the LLaMA tokenizer; client i's
k-th request takes prompt (i + k) mod 8, so consecutive requests never share a prompt and no
server gets a free prompt-cache hit), ``max_tokens`` = ``--max-tokens``, greedy (temperature
0, repeat_penalty 1.0).

Arrivals: with N > 1 the clients start spread over one request's time (client i after
i x T1 / N, T1 = the median request time of the one-client phase), as independent users
would, and keep that offset (equal requests on a continuous-batching server finish in the same
order they started). With N clients that all start at once and make equal requests, every
round begins with N prompts to read and every request's first token waits for all of them, so
the worst case is measured too: an extra ``burst`` phase with the most clients (``--no-burst``
skips it). The measured window starts when the last client has started and lasts
``--duration`` s; requests still running at its end finish, but only tokens that arrived
inside the window count (no ramp-up or drain in the rates). Reported per phase:

* aggregate generated tokens/s: completion tokens that arrived in the window / its length
  (a request's tokens are spread evenly over its streamed pieces);
* p50 / p99 time to first token (TTFT) of the requests sent in the window: from sending the
  request to the first streamed piece of text, as a client sees it (queueing included);
* tokens per server CPU-second (the server process's user + system time over the window):
  with one compute thread this is robust to neighbours on a shared machine, which stretch
  wall clock but not CPU time;
* the load average (``uptime``) before and after each server's phases.

Our server runs as ``python -m openllm_hub.server MODEL --parallel P -t T`` (the ``serve``
command on its own; ``-c C`` per slot on llama.cpp, ``--dtype fp32`` on torch). llama-cpp-python's
server runs with ``--n_threads T --n_threads_batch T --n_ctx C --interrupt_requests False`` (its
default, True, makes a new request cancel the one that is streaming, which would turn this
benchmark into a cancellation test); it serves one request at a time, so it is the
"no batching" reference. It needs its own environment: ``--llama-cpp-python PYTHON`` names a
Python that has ``llama-cpp-python[server]`` installed (a scratch venv, never the project's);
without it, or if it does not import, those servers are skipped and the report says why.

Rounds (``--rounds``) repeat every server, the second in reverse order, so the noise of a
shared machine shows as the spread between rounds. Models are built in ``--work`` when
missing: the random 134M LLaMA of bench_llama_overhead.py (HF folder, f16 GGUF, q8_0 GGUF by
the SDK's quantizer) and a random ChatGLM2 (hidden 768, 12 layers, 12 heads, 2 KV groups,
FFN 3072: about 102M parameters) from the chatglm plugin's builder. ``--quick`` is a smoke
run (tiny models in ``--work``/quick, 1 and 2 clients, 2 s phases, 8 tokens, one round:
about two minutes). No assertion on timings; the exit status is 1 only when a request failed.
The full run takes about 20 minutes on 2 cores. Usage::

    python -m venv /tmp/lcpp-venv && /tmp/lcpp-venv/bin/pip install 'llama-cpp-python[server]==0.3.36'
    python benchmarks/bench_concurrency.py [--quick] [--llama-cpp-python /tmp/lcpp-venv/bin/python]
        [--threads 1] [--ctx 512] [--parallel 8] [--clients 1,2,4,8] [--duration 15]
        [--max-tokens 32] [--rounds 2] [--servers ours-f16,lcpp-f16,...] [--json out.json]
    python benchmarks/bench_concurrency.py --report run1.json run2.json   # one table of both runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

PROMPTS = ["Building a website can be done in 10 simple steps:\n1.", "Once upon a time, in a land far away,",
           "The capital of France is", "Here is a recipe for pancakes. Ingredients:",
           "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"",
           "The three laws of thermodynamics are", "Dear hiring manager, I am writing to apply for",
           "In 1969, the first humans landed on"]
GOAL_SPEEDUP = {"llama.cpp": 3.0, "torch": 2.0}
GOAL_TTFT_RATIO = 2.0


@dataclass
class Server:
    name: str
    engine: str  # "llama.cpp" or "torch": which speed-up goal applies
    kind: str  # "ours" or "llama_cpp.server"
    model: Path


@dataclass
class Request:
    prompt: int
    start: float  # perf_counter when sent
    ttft: float | None
    latency: float
    tokens: int
    finish: str | None
    text: str
    exact_count: bool
    pieces: list[float]  # perf_counter of each streamed piece of text

    def tokens_between(self, t0: float, t1: float) -> float:
        """The request's tokens that arrived in [t0, t1), spread evenly over its pieces."""
        if not self.pieces:
            return 0.0
        return self.tokens * sum(t0 <= t < t1 for t in self.pieces) / len(self.pieces)


@dataclass
class Phase:
    clients: int
    mode: str  # "staggered" or "burst"
    window: tuple[float, float] = (0.0, 0.0)
    server_cpu_s: float = 0.0
    requests: list[Request] = field(default_factory=list)
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        w0, w1 = self.window
        tokens = sum(r.tokens_between(w0, w1) for r in self.requests)
        inside = [r for r in self.requests if w0 <= r.start < w1]
        ttft = sorted(r.ttft for r in inside if r.ttft is not None)
        return {"clients": self.clients, "mode": self.mode, "seconds": round(w1 - w0, 2),
                "requests": len(inside), "failed": self.failed, "tokens": round(tokens, 1),
                "tok_s": round(tokens / (w1 - w0), 2), "tok_per_cpu_s": round(tokens / max(self.server_cpu_s, 1e-9), 2),
                "ttft_p50_ms": pct(ttft, 0.50), "ttft_p99_ms": pct(ttft, 0.99),
                "latency_p50_ms": pct(sorted(r.latency for r in inside), 0.50),
                "mean_tokens": round(sum(r.tokens for r in inside) / max(len(inside), 1), 1),
                "finish_not_length": sum(r.finish != "length" for r in self.requests),
                "approx_token_counts": sum(not r.exact_count for r in self.requests),
                "errors": self.errors[:3]}


def pct(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted ``xs`` in ms (None when empty)."""
    if not xs:
        return None
    return round(1000 * xs[min(len(xs) - 1, max(0, round(q * len(xs) + 0.5) - 1))], 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_seconds(ps: psutil.Process) -> float:
    t = ps.cpu_times()
    return float(t.user + t.system)


# ---- models ------------------------------------------------------------------------------------
def build_models(work: Path, quick: bool) -> dict[str, Path]:
    """The four model files (built when missing): LLaMA HF folder, its f16 and q8_0 GGUF, ChatGLM2."""
    import openllm_hub

    work.mkdir(parents=True, exist_ok=True)
    if quick:
        from openllm_hub_llama.tiny import make_tiny_hf

        hf = work / "llama-tiny-hf"
        if not (hf / "config.json").is_file():
            make_tiny_hf(hf, hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4, dtype="float16",
                         init_std=0.02)
        f16 = work / "llama-tiny-f16.gguf"
        if not f16.is_file():
            openllm_hub.convert(hf, f16, to="gguf", outtype="f16", progress=False)
        q8 = work / "llama-tiny-q8_0.gguf"
        glm_dims: dict[str, Any] = {"hidden": 64, "layers": 2, "heads": 4, "kv_groups": 2, "ffn": 128}
        glm = work / "chatglm2-tiny"
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_llama_overhead import build_hf, build_model

        hf = build_hf(work)
        f16 = build_model(work)
        q8 = work / "overhead-134m-q8_0.gguf"
        glm_dims = {"hidden": 768, "layers": 12, "heads": 12, "kv_groups": 2, "ffn": 3072}
        glm = work / "chatglm2-102m"
    if not q8.is_file():
        openllm_hub.quantize(f16, q8, "q8_0", progress=False)
    if not (glm / "config.json").is_file():
        import torch
        from openllm_hub_chatglm.tiny import build_checkpoint

        build_checkpoint(glm, "chatglm2", seq_length=2048, seed=0, dtype=torch.float16, **glm_dims)
    return {"hf": hf, "f16": f16, "q8_0": q8, "chatglm2": glm}


def parameters(models: dict[str, Path]) -> dict[str, int]:
    """Parameter counts of the two torch folders (from their safetensors headers)."""
    import struct

    out: dict[str, int] = {}
    for key in ("hf", "chatglm2"):
        n = 0
        for f in models[key].glob("*.safetensors"):
            with f.open("rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(size))
            for name, meta in header.items():
                if name != "__metadata__":
                    count = 1
                    for d in meta["shape"]:
                        count *= d
                    n += count
        out[key] = n
    return out


# ---- servers -----------------------------------------------------------------------------------
def command(server: Server, port: int, args: argparse.Namespace) -> list[str]:
    if server.kind == "ours":
        cmd = [sys.executable, "-m", "openllm_hub.server", str(server.model), "--port", str(port),
               "-t", str(args.threads), "--parallel", str(args.parallel), "--queue-size", str(args.parallel),
               "--device", "cpu", "--model-id", "bench", "--log-level", "warning"]
        if server.engine == "llama.cpp":
            cmd += ["-c", str(args.ctx)]
        else:
            cmd += ["--dtype", "fp32"]
        return cmd
    return [args.llama_cpp_python, "-m", "llama_cpp.server", "--model", str(server.model), "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", str(args.ctx), "--n_threads", str(args.threads),
            "--n_threads_batch", str(args.threads), "--n_batch", "512", "--interrupt_requests", "False",
            "--model_alias", "bench", "--verbose", "False"]


def start(server: Server, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    with log.open("wb") as out:
        proc = subprocess.Popen(command(server, port, args), stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"{server.name} did not start in 300 s: {log.read_text()[-2000:]}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- clients -----------------------------------------------------------------------------------
async def one_request(client: httpx.AsyncClient, server: Server, prompt: int, max_tokens: int) -> Request:
    body: dict[str, Any] = {"model": "bench", "prompt": PROMPTS[prompt], "max_tokens": max_tokens,
                            "temperature": 0.0, "repeat_penalty": 1.0, "stream": True}
    if server.kind == "ours":
        body["stream_options"] = {"include_usage": True}
    t0 = time.perf_counter()
    texts: list[str] = []
    pieces: list[float] = []
    usage: int | None = None
    finish: str | None = None
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        done = False
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line.strip() == "data: [DONE]":
                done = True
                break
            now = time.perf_counter()
            obj = json.loads(line[6:])
            if "error" in obj:
                raise RuntimeError(f"error in stream: {obj['error']}")
            if obj.get("usage"):
                usage = int(obj["usage"]["completion_tokens"])
            for choice in obj.get("choices") or []:
                if choice.get("text"):
                    texts.append(choice["text"])
                    pieces.append(now)
                finish = choice.get("finish_reason") or finish
        if not done:
            raise RuntimeError("stream ended without [DONE]")
    # llama_cpp.server sends no usage in streams: a "length" finish means max_tokens tokens;
    # otherwise (an end-of-sequence token) count the text pieces, one per token as it streams them
    tokens = usage if usage is not None else max_tokens if finish == "length" else len(pieces)
    return Request(prompt, t0, pieces[0] - t0 if pieces else None, time.perf_counter() - t0, tokens, finish,
                   "".join(texts), usage is not None or finish == "length", pieces)


async def run_phase(url: str, server: Server, clients: int, duration: float, max_tokens: int,
                    ps: psutil.Process, spacing: float) -> Phase:
    """``clients`` closed-loop clients; client i sends its first request ``i * spacing`` s after
    the first one (0: all at once). The measured window starts when the last client has started
    and lasts ``duration`` s; requests running at its end finish (their later tokens not counted)."""
    phase = Phase(clients, "one" if clients == 1 else "burst" if spacing == 0 else "staggered")
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        w0 = t0 + (clients - 1) * spacing
        w1 = w0 + duration
        phase.window = (w0, w1)

        async def worker(i: int) -> None:
            await asyncio.sleep(i * spacing)
            k = 0
            while time.perf_counter() < w1:
                try:
                    phase.requests.append(await one_request(client, server, (i + k) % len(PROMPTS), max_tokens))
                except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                    phase.failed += 1
                    phase.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    await asyncio.sleep(0.2)
                k += 1

        async def cpu_clock() -> None:
            await asyncio.sleep(max(0.0, w0 - time.perf_counter()))
            cpu0 = cpu_seconds(ps)
            await asyncio.sleep(max(0.0, w1 - time.perf_counter()))
            phase.server_cpu_s = cpu_seconds(ps) - cpu0

        await asyncio.gather(cpu_clock(), *(worker(i) for i in range(clients)))
    return phase


async def warm_up(url: str, server: Server, clients: int, max_tokens: int) -> None:
    """Page in the weights and let the engine allocate its batch: one request, then ``clients`` at once."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await one_request(client, server, 0, max_tokens)
        await asyncio.gather(*(one_request(client, server, i % len(PROMPTS), max_tokens) for i in range(clients)))


def bench_server(server: Server, args: argparse.Namespace, counts: list[int]) -> dict[str, Any]:
    log = args.work / f"server-{server.name}.log"
    before = uptime()
    t_start = time.monotonic()
    proc, url = start(server, args, log)
    load_s = time.monotonic() - t_start
    try:
        ps = psutil.Process(proc.pid)
        asyncio.run(warm_up(url, server, max(counts), min(args.max_tokens, 4)))
        phases: list[Phase] = []
        request_s = 0.0
        for n in counts:
            # arrivals spread over one request's time at the first (one-client) phase
            phases.append(asyncio.run(run_phase(url, server, n, args.duration, args.max_tokens, ps, request_s / n)))
            if not request_s:
                request_s = statistics.median(r.latency for r in phases[0].requests)
            if n == max(counts) and args.burst:
                phases.append(asyncio.run(run_phase(url, server, n, args.duration, args.max_tokens, ps, 0.0)))
        models = httpx.get(url + "/v1/models", timeout=10).json()
    finally:
        stop(proc)
    after = uptime()
    rows = [p.summary() for p in phases]
    # greedy texts of the one-client phase, by prompt: equal across servers on the same file?
    texts: dict[str, str] = {}
    for r in phases[0].requests:
        texts.setdefault(str(r.prompt), r.text)
    meta = (models.get("data") or [{}])[0].get("meta") if isinstance(models, dict) else None
    slots = [ln for ln in log.read_text(errors="replace").splitlines() if "parallel slot" in ln]
    return {"server": server.name, "engine": server.engine, "kind": server.kind, "model": server.model.name,
            "startup_s": round(load_s, 1), "uptime_before": before, "uptime_after": after,
            "exit_code": proc.returncode, "phases": rows, "texts_1_client": texts, "models_meta": meta,
            "slots": slots[0] if slots else None}


def machine() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    info: dict[str, Any] = {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    try:
        import llama_cpp
        import torch
        import transformers

        info.update(llama_cpp_python=llama_cpp.__version__, torch=torch.__version__,
                    transformers=transformers.__version__)
    except ImportError:
        pass
    return info


def llama_cpp_server_version(python: str | None) -> tuple[str | None, str]:
    """(version, why not) of llama-cpp-python's server in ``python``'s environment."""
    if not python:
        return None, "no --llama-cpp-python given"
    try:
        got = subprocess.run([python, "-c", "import llama_cpp, llama_cpp.server.app, sse_starlette, uvicorn; "
                              "print(llama_cpp.__version__)"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{python}: {exc}"
    if got.returncode != 0:
        return None, f"{python} cannot import llama_cpp.server: {got.stderr.strip()[-500:]}"
    return got.stdout.strip(), ""


# ---- report ------------------------------------------------------------------------------------
def report(results: list[dict[str, Any]]) -> list[str]:
    """The markdown table (every round's value, round by round; ratios of the medians) and the
    goals per server (on the staggered phase with the most clients)."""
    by_server: dict[str, list[dict[str, Any]]] = {}
    for res in results:
        by_server.setdefault(res["server"], []).append(res)
    lines = ["| server | N | tok/s (wall), per round | x over N=1 (median) | TTFT p50 ms | TTFT p99 ms | "
             "TTFT p50 / N=1 (median) | tok per server CPU-s | requests |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    goals = []
    for name, runs in by_server.items():
        keys = [(p["clients"], p["mode"]) for p in runs[0]["phases"]]
        med: dict[tuple[int, str], dict[str, float]] = {}
        for key in keys:
            rows = [p for run in runs for p in run["phases"] if (p["clients"], p["mode"]) == key]
            med[key] = {k: statistics.median(r[k] for r in rows if r[k] is not None)
                        for k in ("tok_s", "ttft_p50_ms", "ttft_p99_ms", "tok_per_cpu_s")
                        if any(r[k] is not None for r in rows)}
            base = med[keys[0]]

            def col(k: str, fmt: str = "{}", rows: list[dict[str, Any]] = rows) -> str:
                return " / ".join(fmt.format(r[k]) for r in rows)

            ttft_ratio = med[key].get("ttft_p50_ms", 0) / max(base.get("ttft_p50_ms", 1), 1e-9)
            label = f"{key[0]}" + (" burst" if key[1] == "burst" else "")
            lines.append(f"| {name} | {label} | {col('tok_s', '{:.1f}')} | {med[key]['tok_s'] / base['tok_s']:.2f}x | "
                         f"{col('ttft_p50_ms')} | {col('ttft_p99_ms')} | {ttft_ratio:.2f}x | "
                         f"{col('tok_per_cpu_s', '{:.1f}')} | {col('requests')} |")
        hi = max((k for k in keys if k[1] != "burst"), key=lambda k: k[0])
        one = med[keys[0]]
        speedup = med[hi]["tok_s"] / one["tok_s"]
        cpu_speedup = med[hi]["tok_per_cpu_s"] / one["tok_per_cpu_s"]
        ttft = med[hi].get("ttft_p50_ms", float("nan")) / one.get("ttft_p50_ms", float("nan"))
        burst = med.get((hi[0], "burst"), {}).get("ttft_p50_ms", float("nan")) / one.get("ttft_p50_ms", float("nan"))
        goal = GOAL_SPEEDUP[runs[0]["engine"]]

        def per_round(k: str, run_list: list[dict[str, Any]] = runs, hi: tuple[int, str] = hi,
                      lo: tuple[int, str] = keys[0]) -> str:
            """The ratio N=hi / N=1 within each round (one server's phases run back to back)."""
            out = []
            for run in run_list:
                got = {(p["clients"], p["mode"]): p[k] for p in run["phases"]}
                out.append(f"{got[hi] / got[lo]:.2f}" if got[hi] and got[lo] else "-")
            return " / ".join(out)

        goals.append(f"{name}: {hi[0]} clients = {speedup:.2f}x the tok/s of {keys[0][0]} (goal >= {goal:.0f}x: "
                     f"{'met' if speedup >= goal else 'missed'}; per round {per_round('tok_s')}; by server CPU "
                     f"time {cpu_speedup:.2f}x), TTFT p50 {ttft:.2f}x (goal <= {GOAL_TTFT_RATIO:.0f}x: "
                     f"{'met' if ttft <= GOAL_TTFT_RATIO else 'missed'}; per round {per_round('ttft_p50_ms')}; "
                     f"{burst:.2f}x when all arrive at once)")
    return [*lines, "", *goals]


def same_texts(results: list[dict[str, Any]]) -> dict[str, bool]:
    """Whether both servers on the same GGUF gave the same greedy texts (first round, one client).
    An incomplete UTF-8 sequence (this random model emits many) is U+FFFD in our stream and left
    out by llama_cpp.server, so U+FFFD is dropped before comparing."""
    same: dict[str, bool] = {}
    first = {r["server"]: r["texts_1_client"] for r in results if r["round"] == min(x["round"] for x in results)}
    for f in ("f16", "q8_0"):
        a, b = first.get(f"ours-{f}"), first.get(f"lcpp-{f}")
        if a and b:
            same[f] = all(a[k].replace("\ufffd", "") == b[k].replace("\ufffd", "") for k in a.keys() & b.keys())
    return same


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny models, 1 and 2 clients, 2 s phases")
    ap.add_argument("--work", type=Path, default=Path("/tmp/openllm-hub-bench"))
    ap.add_argument("--llama-cpp-python", help="a Python with llama-cpp-python[server] (a scratch venv)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=512, help="context per sequence (per slot on our llama.cpp)")
    ap.add_argument("--parallel", type=int, default=8, help="our server's --parallel (slots)")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-burst", dest="burst", action="store_false",
                    help="skip the extra phase where the most clients all start at once")
    ap.add_argument("--servers", help="comma-separated subset of: ours-f16, ours-q8_0, lcpp-f16, lcpp-q8_0, "
                                      "ours-hf-torch, ours-chatglm2-torch")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                    help="run nothing: print the table of earlier --json files together (their rounds renumbered)")
    args = ap.parse_args()
    if args.report:
        merged: list[dict[str, Any]] = []
        for path in args.report:
            got = json.loads(path.read_text())["results"]
            offset = max((r["round"] for r in merged), default=0)
            merged += [{**r, "round": r["round"] + offset} for r in got]
        print("\n".join(report(merged)))
        print(json.dumps({"same_greedy_text_ours_vs_lcpp": same_texts(merged)}))
        return 0
    if args.quick:
        args.work = args.work / "quick"
        args.clients, args.duration, args.max_tokens, args.rounds = "1,2", 2.0, 8, 1
    counts = [int(c) for c in args.clients.split(",")]
    models = build_models(args.work, args.quick)
    lcpp_version, why_not = llama_cpp_server_version(args.llama_cpp_python)
    servers = [Server("ours-f16", "llama.cpp", "ours", models["f16"]),
               Server("ours-q8_0", "llama.cpp", "ours", models["q8_0"]),
               Server("lcpp-f16", "llama.cpp", "llama_cpp.server", models["f16"]),
               Server("lcpp-q8_0", "llama.cpp", "llama_cpp.server", models["q8_0"]),
               Server("ours-hf-torch", "torch", "ours", models["hf"]),
               Server("ours-chatglm2-torch", "torch", "ours", models["chatglm2"])]
    if args.servers:
        wanted = args.servers.split(",")
        servers = [s for s in servers if s.name in wanted]
    skipped: dict[str, str] = {}
    if lcpp_version is None:
        skipped = {s.name: why_not for s in servers if s.kind != "ours"}
        servers = [s for s in servers if s.kind == "ours"]
    info: dict[str, Any] = {
        "machine": machine(), "llama_cpp_server_version": lcpp_version, "skipped": skipped,
        "settings": {"threads": args.threads, "ctx_per_sequence": args.ctx, "parallel": args.parallel,
                     "clients": counts, "duration_s": args.duration, "max_tokens": args.max_tokens,
                     "rounds": args.rounds, "prompts": len(PROMPTS), "sampling": "greedy, repeat_penalty 1.0"},
        "models": {k: str(v) for k, v in models.items()}, "parameters": parameters(models)}
    print(json.dumps(info, indent=1), flush=True)
    results: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for rnd in range(args.rounds):
        for server in servers if rnd % 2 == 0 else servers[::-1]:
            try:
                res = bench_server(server, args, counts)
            except (RuntimeError, OSError, httpx.HTTPError) as exc:
                print(f"round {rnd + 1} {server.name}: FAILED: {exc}", flush=True)
                skipped[server.name] = str(exc)[:1000]
                continue
            res["round"] = rnd + 1
            results.append(res)
            line = ", ".join(f"N={p['clients']}: {p['tok_s']} tok/s, TTFT p50 {p['ttft_p50_ms']} ms"
                             + (f" ({p['failed']} failed)" if p["failed"] else "") for p in res["phases"])
            load = [res[k].split("load average:")[-1].strip() for k in ("uptime_before", "uptime_after")]
            print(f"round {rnd + 1} {server.name} [load {load[0]} -> {load[1]}]: {line}", flush=True)
    info["wall_s"] = round(time.monotonic() - t0, 1)
    info["same_greedy_text_ours_vs_lcpp"] = same_texts(results)
    lines = report(results) if results else ["no server ran"]
    print("\n".join(lines))
    print(json.dumps({k: info[k] for k in ("wall_s", "skipped", "same_greedy_text_ours_vs_lcpp")}))
    if args.json:
        args.json.write_text(json.dumps({"info": info, "results": results, "table": lines}, indent=1))
    failed = sum(p["failed"] for r in results for p in r["phases"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
