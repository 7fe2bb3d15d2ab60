"""Load test of ``openllm-hub serve``: concurrent clients on loopback for a bounded time.

Starts the real server (``python -m openllm_hub.server``) on 127.0.0.1 with the example
bigram model, then runs phases of N concurrent clients, each sending requests back to back
for ``--duration`` seconds:

* ``below``: N = the queue's capacity (1 running + queue_size waiting), non-streaming chat.
  Expected: zero failed requests.
* ``stream``: N = capacity, streaming chat; also time to first token.
* ``above``: N = 3 x capacity. Expected: some 429 (queue full) answers, no other failure.
  A client that gets a 429 waits 50 ms and tries again.

Reports throughput, p50/p99 latency and the server's resident memory sampled through the
run (flat = no growth from the first phase to the last). Only loopback is contacted, and the
run stops by itself. Usage::

    python benchmarks/bench_server.py [--duration 20] [--queue-size 4] [--max-tokens 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

MESSAGES = [{"role": "user", "content": "Tell me a story about a fox."}]


@dataclass
class PhaseResult:
    name: str
    clients: int
    seconds: float
    ok: int = 0
    rejected_429: int = 0
    failed: int = 0
    completion_tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)
    server_cpu_s: float = 0.0
    rss_end_mib: float = 0.0

    def summary(self) -> dict[str, Any]:
        def pct(xs: list[float], q: float) -> float | None:
            if not xs:
                return None
            xs = sorted(xs)
            return round(1000 * xs[min(len(xs) - 1, int(q * len(xs)))], 1)

        return {
            "phase": self.name, "clients": self.clients, "seconds": round(self.seconds, 1), "ok": self.ok,
            "429": self.rejected_429, "failed": self.failed,
            "requests_per_s": round(self.ok / self.seconds, 1),
            "tokens_per_s": round(self.completion_tokens / self.seconds, 1),
            "p50_ms": pct(self.latencies, 0.50), "p99_ms": pct(self.latencies, 0.99),
            "ttft_p50_ms": pct(self.first_token, 0.50), "ttft_p99_ms": pct(self.first_token, 0.99),
            "mean_tokens": round(self.completion_tokens / max(self.ok, 1), 1),
            # CPU the server spent per answered request: comparable across runs on a busy machine
            "server_cpu_ms_per_request": round(1000 * self.server_cpu_s / max(self.ok, 1), 2),
            "server_rss_mib_at_end": round(self.rss_end_mib, 1),
        }


async def one_request(client: httpx.AsyncClient, result: PhaseResult, *, stream: bool, max_tokens: int) -> None:
    body = {"model": "bench", "messages": MESSAGES, "max_tokens": max_tokens, "stream": stream}
    t0 = time.perf_counter()
    try:
        if not stream:
            r = await client.post("/v1/chat/completions", json=body)
            if r.status_code == 429:
                result.rejected_429 += 1
                await asyncio.sleep(0.05)
                return
            if r.status_code != 200:
                result.failed += 1
                return
            result.completion_tokens += r.json()["usage"]["completion_tokens"]
        else:
            body["stream_options"] = {"include_usage": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code == 429:
                    result.rejected_429 += 1
                    await r.aread()
                    await asyncio.sleep(0.05)
                    return
                if r.status_code != 200:
                    result.failed += 1
                    await r.aread()
                    return
                first = None
                done = False
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    obj = json.loads(line[6:])
                    if first is None and obj.get("choices") and obj["choices"][0]["delta"].get("content"):
                        first = time.perf_counter() - t0
                    if obj.get("usage"):
                        result.completion_tokens += obj["usage"]["completion_tokens"]
                if not done:
                    result.failed += 1
                    return
                if first is not None:
                    result.first_token.append(first)
    except httpx.HTTPError:
        result.failed += 1
        return
    result.ok += 1
    result.latencies.append(time.perf_counter() - t0)


def cpu_seconds(ps: psutil.Process) -> float:
    t = ps.cpu_times()
    return float(t.user + t.system)


async def run_phase(url: str, name: str, clients: int, duration: float, *, stream: bool,
                    max_tokens: int, ps: psutil.Process) -> PhaseResult:
    result = PhaseResult(name, clients, duration)
    cpu0 = cpu_seconds(ps)
    end = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker() -> None:
            while time.perf_counter() < end:
                await one_request(client, result, stream=stream, max_tokens=max_tokens)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        result.seconds = time.perf_counter() - t0
    result.server_cpu_s = cpu_seconds(ps) - cpu0
    result.rss_end_mib = ps.memory_info().rss / (1024 * 1024)
    return result


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    ap.add_argument("--queue-size", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--model", help="model to serve (default: the example bigram model)")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()

    if args.model is None:
        from openllm_hub_bigram import BUILTIN_MODEL

        args.model = str(BUILTIN_MODEL)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "openllm_hub.server", args.model, "--port", str(port),
                             "--queue-size", str(args.queue_size), "--log-level", "warning",
                             "--max-tokens-limit", str(max(args.max_tokens, 16))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    capacity = args.queue_size + 1
    memory: list[tuple[float, int]] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not start")
            time.sleep(0.2)
        ps = psutil.Process(proc.pid)
        t_start = time.monotonic()

        async def sample_memory(stop: asyncio.Event) -> None:
            while not stop.is_set():
                memory.append((time.monotonic() - t_start, ps.memory_info().rss))
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except TimeoutError:
                    pass

        async def all_phases() -> list[PhaseResult]:
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_memory(stop))
            common = {"max_tokens": args.max_tokens, "ps": ps}
            out = [
                await run_phase(url, "warmup", 2, min(3.0, args.duration), stream=False, **common),
                await run_phase(url, "below", capacity, args.duration, stream=False, **common),
                await run_phase(url, "stream", capacity, args.duration, stream=True, **common),
                await run_phase(url, "above", 3 * capacity, args.duration, stream=False, **common),
            ]
            stop.set()
            await sampler
            return out

        warmup, *phases = asyncio.run(all_phases())
        health = httpx.get(url + "/health").json()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    rss = [m for _, m in memory]
    mib = 1024 * 1024
    report = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"duration_s": args.duration, "queue_size": args.queue_size, "capacity": capacity,
                     "max_tokens": args.max_tokens, "model": os.path.basename(args.model)},
        "phases": [p.summary() for p in phases],
        "memory_mib": {"at_start": round(rss[0] / mib, 1), "after_warmup": round(warmup.rss_end_mib, 1),
                       "last": round(rss[-1] / mib, 1), "max": round(max(rss) / mib, 1), "samples": len(rss)},
        "server_completed": health["completed"],
        "server_exit_code": proc.returncode,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    below, stream, above = phases
    ok = below.failed == 0 and below.rejected_429 == 0 and stream.failed == 0 and stream.rejected_429 == 0 \
        and above.failed == 0 and above.rejected_429 > 0
    print("expectations:", "met" if ok else "NOT met", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
