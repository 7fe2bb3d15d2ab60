"""RWKV plugin benchmarks: SDK overhead, flat cost per token, and chat state reuse.

1. Decode speed through the SDK (``model.generate``, greedy, no penalties) against the rwkv
   package called directly (``forward([token], state)`` + argmax, as ChatRWKV's loop does) on
   the very package object the SDK holds, so both sides use the same weights in memory (two
   separately loaded copies of one checkpoint differ by up to 15-25 % in speed from memory
   placement alone, measured here; a second table shows that case). Runs alternate and the
   best of each is kept. Reported as tokens/s by wall clock and by process CPU time (the
   neighbours on a shared machine change the first, not the second). Goal: SDK / package >= 0.98.
2. Cost per token as the context grows: one 4096-token greedy generation, time per token and
   resident memory in 512-token windows. An RNN carries a fixed-size state, so both stay flat.
3. First-token latency of a chat turn after a multi-turn history: continuing from the cached
   RNN state versus re-reading the whole history (``reset_state()`` first).

The models are random RWKV checkpoints in the real layouts (``openllm_hub_rwkv.tiny``), 12
layers x 512, World vocabulary (65536), about 105M parameters, cpu fp32. Usage::

    nice python benchmarks/bench_rwkv.py [--threads 1] [--tokens 128] [--reps 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

PROMPT = "User: Tell me about the RWKV language model.\n\nAssistant:"


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(work: Path, versions: list[str]) -> dict[str, Path]:
    from openllm_hub_rwkv.tiny import build_checkpoint

    out = {}
    for v in versions:
        path = work / f"rwkv{v}-12x512-world.pth"
        if not path.is_file():
            build_checkpoint(path, v, n_layer=12, n_embd=512, head_size=64, lora=32, seed=1)  # type: ignore[arg-type]
        out[v] = path
    return out


def package_model(path: Path, version: str) -> Any:
    """The package's model built as ChatRWKV does (RWKV-7 through the plugin's private copy
    of rwkv.model imported with RWKV_V7_ON=1, the package's switch)."""
    if version == "7":
        from openllm_hub_rwkv.runtime import package_module

        return package_module(v7=True, jit=True, cuda_kernels=False, v7_strategy="cpu fp32").RWKV_x070(
            str(path)[:-4], "cpu fp32")
    from rwkv.model import RWKV

    return RWKV(str(path)[:-4], "cpu fp32", verbose=False)


def decode_package(model: Any, prompt_ids: list[int], n: int) -> tuple[float, float]:
    """ChatRWKV's loop: read the prompt, then n times argmax + forward([token]).
    Returns (seconds of the n decode steps, CPU seconds of the whole call)."""
    import torch

    c0 = time.process_time()
    out, state = model.forward(prompt_ids, None)
    t0 = time.perf_counter()
    for _ in range(n):
        token = int(torch.argmax(out))
        out, state = model.forward([token], state)
    token = int(torch.argmax(out))
    return time.perf_counter() - t0, time.process_time() - c0


def decode_sdk(model: Any, n: int) -> tuple[float, float, int]:
    """The same work through model.generate: n + 1 greedy tokens = n decode steps after the
    prompt. Returns (seconds from first to last token, CPU seconds of the call, steps)."""
    c0 = time.process_time()
    out = model.generate(PROMPT, max_new_tokens=n + 1, temperature=0.0, repeat_penalty=1.0)
    cpu = time.process_time() - c0
    return out.timings.generation_seconds, cpu, len(out.token_ids) - 1


class _TimedPackage:
    """Wraps the SDK's package object and adds up the CPU time spent inside ``forward``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.cpu = 0.0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        c0 = time.process_time()
        out = self.inner.forward(*args, **kwargs)
        self.cpu += time.process_time() - c0
        return out


def sdk_share(sdk: Any, n: int) -> float:
    """Share of a generate() call's CPU time spent in the package's forward (same run, so the
    neighbours' load cancels out): the SDK / package speed ratio without measurement noise."""
    inner = sdk._pkg
    timed = _TimedPackage(inner)
    sdk._pkg = timed
    try:
        c0 = time.process_time()
        sdk.generate(PROMPT, max_new_tokens=n + 1, temperature=0.0, repeat_penalty=1.0)
        total = time.process_time() - c0
    finally:
        sdk._pkg = inner
    return timed.cpu / total


def bench_speed(paths: dict[str, Path], n: int, reps: int, separate: bool) -> list[dict[str, Any]]:
    import openllm_hub

    rows = []
    for version, path in paths.items():
        sdk = openllm_hub.load(path, device="cpu")
        ref = package_model(path, version) if separate else sdk._pkg
        ids = sdk.tokenize(PROMPT)
        decode_package(ref, ids, 4)  # warm up TorchScript on both
        decode_sdk(sdk, 4)
        pw, pc, sw, sc = [], [], [], []
        for _ in range(reps):
            w, c = decode_package(ref, ids, n)
            pw.append(n / w)
            pc.append(c)
            w, c, k = decode_sdk(sdk, n)
            assert k == n, "generation stopped early (end-of-text); use another seed"
            sw.append(k / w)
            sc.append(c)
        share = max(sdk_share(sdk, n) for _ in range(2)) if not separate else None
        rows.append({"version": version, "package_object": "separate" if separate else "same",
                     "forward_share_of_sdk_cpu": None if share is None else round(share, 4),
                     "parameters": sdk.info.parameters,
                     "package_tok_s": round(max(pw), 2), "sdk_tok_s": round(max(sw), 2),
                     "ratio_wall": round(max(sw) / max(pw), 3),
                     "package_cpu_s": round(min(pc), 3), "sdk_cpu_s": round(min(sc), 3),
                     "ratio_cpu": round(min(pc) / min(sc), 3)})
        sdk.close()
        del ref
    return rows


def bench_flat(path: Path, total: int, window: int) -> dict[str, Any]:
    import openllm_hub

    model = openllm_hub.load(path, device="cpu")
    marks: list[tuple[int, float, float]] = []
    count = 0
    t_last = time.perf_counter()
    rss0 = rss_mib()
    for chunk in model.stream(PROMPT, max_new_tokens=total, temperature=0.0, repeat_penalty=1.0):
        count += len(chunk.token_ids)
        if count // window > len(marks):
            now = time.perf_counter()
            marks.append((count, (now - t_last) / window * 1000, rss_mib()))
            t_last = now
    model.close()
    return {"tokens": count, "rss_start_mib": round(rss0, 1),
            "windows": [(n, round(ms, 2), round(rss, 1)) for n, ms, rss in marks]}


def bench_chat(path: Path, turns: int, reps: int, work: Path) -> dict[str, Any]:
    import openllm_hub

    model = openllm_hub.load(path, device="cpu")
    user = ("Here is some more context about my project, please keep it in mind while we talk: "
            "the system reads sensor data every second and stores averages per minute. ") * 2
    history: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant."}]
    for i in range(turns):
        history.append({"role": "user", "content": f"{user} (part {i + 1})"})
        answer = model.chat(history, max_new_tokens=48, temperature=0.0).text
        history.append({"role": "assistant", "content": answer})
    state = work / "chat.state"
    model.save_state(state, force=True)  # the states this conversation left, as a chat app would keep
    history.append({"role": "user", "content": "Summarise what I told you."})
    n_tokens = len(model.tokenize(model.chat_template().render(history)))
    reuse, full, reads = [], [], {}
    for _ in range(reps):
        model.reset_state()
        model.load_state(state)
        out = model.chat(history, max_new_tokens=1, temperature=0.0)
        reuse.append(out.timings.prompt_seconds)
        reads["reuse"] = model.last_read
        model.reset_state()
        out = model.chat(history, max_new_tokens=1, temperature=0.0)
        full.append(out.timings.prompt_seconds)
        reads["full"] = model.last_read
    model.close()
    return {"prompt_tokens": n_tokens, "turns": turns, "reuse_ms": round(statistics.median(reuse) * 1000, 1),
            "full_ms": round(statistics.median(full) * 1000, 1), "reuse_read": reads["reuse"].read,
            "reuse_reused": reads["reuse"].reused, "full_read": reads["full"].read}


def machine() -> dict[str, Any]:
    import rwkv  # noqa: F401
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    from importlib import metadata

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "rwkv": metadata.version("rwkv"),
            "load_average": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/openllm-hub-bench-rwkv"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--flat-tokens", type=int, default=4096)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--versions", default="4,5.2,7")
    ap.add_argument("--parts", default="speed,separate,flat,chat")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    paths = build(args.work, args.versions.split(","))
    result: dict[str, Any] = {"machine": machine()}
    parts = args.parts.split(",")
    if "speed" in parts:
        result["speed"] = bench_speed(paths, args.tokens, args.reps, separate=False)
        print(json.dumps(result["speed"], indent=1), flush=True)
    if "separate" in parts:
        result["speed_separate"] = bench_speed(paths, args.tokens, args.reps, separate=True)
        print(json.dumps(result["speed_separate"], indent=1), flush=True)
    flat_version = "7" if "7" in paths else next(iter(paths))
    if "flat" in parts:
        result["flat"] = {"version": flat_version, **bench_flat(paths[flat_version], args.flat_tokens, 512)}
        print(json.dumps(result["flat"], indent=1), flush=True)
    if "chat" in parts:
        result["chat"] = {"version": flat_version, **bench_chat(paths[flat_version], args.turns, args.reps,
                                                                 args.work)}
    result["machine"]["load_average_end"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
