"""Decode speed of the llama.cpp engine for f16, q8_0 and q4_0 against this machine's
memory-bandwidth bound.

Single-stream decoding reads every weight once per token, so tokens/s cannot exceed
``bandwidth / bytes per token``. Bandwidth is measured here as numpy's copy of a 1 GiB array
(bytes read + bytes written per second, best of five, one thread: STREAM's "copy"), bytes
per token as the GGUF's tensor bytes without the token embedding (a lookup reads one row).

The model is a random LLaMA of about 477M parameters (hidden 1024, 32 layers, FFN 2816,
vocabulary 32000, untied), built with ``openllm_hub_llama.tiny`` in bf16, converted to an
f16 GGUF by the SDK's converter and quantized by the SDK's quantizer. Usage::

    nice python benchmarks/bench_decode.py [--threads 1] [--tokens 48] [--reps 3] [--work DIR]
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

PROMPT = "Building a website can be done in 10 simple steps:\n1."
TYPES = ("f16", "q8_0", "q4_0")


def build(work: Path) -> dict[str, Path]:
    from openllm_hub_llama.tiny import make_tiny_hf

    import openllm_hub

    hf = work / "decode-477m-hf"
    if not (hf / "config.json").is_file():
        make_tiny_hf(hf, hidden_size=1024, intermediate_size=2816, num_layers=32, num_heads=16, dtype="bfloat16",
                     init_std=0.02, shards=4)
    files = {t: work / f"decode-477m-{t}.gguf" for t in TYPES}
    if not files["f16"].is_file():
        t0 = time.perf_counter()
        openllm_hub.convert(hf, files["f16"], to="gguf", outtype="f16", progress=False)
        print(f"converted to f16 in {time.perf_counter() - t0:.1f} s", flush=True)
    for t in TYPES[1:]:
        if not files[t].is_file():
            t0 = time.perf_counter()
            openllm_hub.quantize(files["f16"], files[t], t, threads=os.cpu_count())
            print(f"quantized to {t} in {time.perf_counter() - t0:.1f} s", flush=True)
    return files


def copy_bandwidth(size: int = 1 << 30, reps: int = 5) -> float:
    """Bytes moved per second (read + write) by numpy copying ``size`` bytes."""
    import numpy as np

    src = np.ones(size // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * size / best


def bytes_per_token(path: Path) -> int:
    import gguf

    reader = gguf.GGUFReader(str(path))
    return sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/openllm-hub-bench"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    files = build(args.work)

    import llama_cpp

    import openllm_hub

    bw = copy_bandwidth()
    print(f"memory bandwidth (numpy copy, 1 thread): {bw / 1e9:.1f} GB/s", flush=True)
    rows: dict[str, Any] = {}
    for t, path in files.items():
        per_token = bytes_per_token(path)
        with openllm_hub.load(path, device="cpu", threads=args.threads, n_ctx=512) as m:
            m.generate(PROMPT, max_new_tokens=4, temperature=0.0)  # warm-up: pages in the weights
            speeds = []
            for rep in range(args.reps):
                m.llama.reset()  # type: ignore[attr-defined]
                c = m.generate(PROMPT, max_new_tokens=args.tokens, temperature=0.0, repeat_penalty=1.0, seed=rep)
                speeds.append(c.timings.generation_tokens_per_second)
            params = m.info.parameters
        bound = bw / per_token
        rows[t] = {"file_mb": path.stat().st_size / 1e6, "bytes_per_token_mb": per_token / 1e6,
                   "tok_s": statistics.median(speeds), "runs": speeds, "bound_tok_s": bound,
                   "fraction_of_bound": statistics.median(speeds) / bound}
        print(f"{t:<5} {rows[t]['file_mb']:7.0f} MB  {per_token / 1e6:7.0f} MB/token  "
              f"{statistics.median(speeds):6.2f} tok/s  bound {bound:6.2f} tok/s  "
              f"({rows[t]['fraction_of_bound']:.0%} of bound)", flush=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    info = {"parameters": params, "threads": args.threads, "tokens": args.tokens, "reps": args.reps,
            "bandwidth_gb_s": bw / 1e9, "cpu": cpu, "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
            "llama_cpp_python": llama_cpp.__version__}
    print(json.dumps(info, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"info": info, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
