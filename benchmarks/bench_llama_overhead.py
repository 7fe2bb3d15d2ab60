"""SDK overhead on llama.cpp: tokens/s through ``openllm_hub`` against ``llama_cpp.Llama``
called directly, on the same GGUF file, threads, context and sampling parameters.

Four modes: greedy and sampling (temperature 0.8, top-k 40, top-p 0.95, repeat penalty
1.1), each streamed and not. The direct side uses ``Llama.create_completion`` (with
``min_p=0`` and ``typical_p=1``, so its sampler chain is the SDK's). Both sides get a fresh
KV cache before every call (no prefix reuse) and runs alternate A/B/B/A.

Reported per mode:

* **overhead per token**: the process CPU time of a call minus the CPU time spent inside
  llama.cpp's two per-token calls (``Llama.eval`` and the sampler's ``sample``, which both
  sides make identically), divided by the tokens. This is what each side adds around
  llama.cpp, and it is robust on a shared machine, where neighbours stretch llama.cpp's own
  compute by tens of percent from run to run. With one thread llama.cpp computes on the
  calling thread, so CPU time is the whole cost. The implied speed ratio on this model is
  ``(compute + overhead_direct) / (compute + overhead_sdk)`` (target >= 0.98).
* the raw A/B speeds: best and median tokens/s by CPU time and by wall clock for each side.

Without ``--model`` a random LLaMA (hidden 768, 12 layers, about 134M parameters) is built
with ``openllm_hub_llama.tiny`` and converted to an f16 GGUF in ``--work``. Usage::

    nice python benchmarks/bench_llama_overhead.py [--model x.gguf] [--threads 2] [--tokens 64] [--reps 5]
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
GREEDY = {"temperature": 0.0, "top_k": 40, "top_p": 0.95, "repeat_penalty": 1.1}
SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "repeat_penalty": 1.1}


def build_model(work: Path) -> Path:
    import openllm_hub

    gguf = work / "overhead-134m-f16.gguf"
    if gguf.is_file():
        return gguf
    openllm_hub.convert(build_hf(work), gguf, to="gguf", outtype="f16", progress=False)
    return gguf


def build_hf(work: Path) -> Path:
    """The random 134M LLaMA as an HF folder (f16 weights), which build_model converts."""
    from openllm_hub_llama.tiny import make_tiny_hf

    hf = work / "overhead-134m-hf"
    if not (hf / "config.json").is_file():
        make_tiny_hf(hf, hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12, dtype="float16",
                     init_std=0.02, max_position_embeddings=2048)
    return hf


def machine() -> dict[str, Any]:
    import llama_cpp

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "python": platform.python_version(),
            "llama_cpp_python": llama_cpp.__version__, "system_info": llama_cpp.llama_print_system_info().decode()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/openllm-hub-bench"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.model or build_model(args.work)

    from llama_cpp import Llama

    import openllm_hub
    from openllm_hub.engines.llama_cpp import capabilities, model_params

    sdk = openllm_hub.load(path, device="cpu", threads=args.threads, n_ctx=512)
    # the direct side gets exactly the engine's settings, including its repack choice
    with model_params(use_extra_bufts=sdk.info.extra["repack"]):
        direct = Llama(str(path), n_ctx=512, n_batch=512, n_threads=args.threads, n_threads_batch=args.threads,
                       offload_kqv=False, op_offload=False, verbose=False)
    llm = sdk.llama  # type: ignore[attr-defined]

    def run_sdk(params: dict[str, Any], stream: bool, seed: int) -> int:
        llm.reset()
        kw = {"max_new_tokens": args.tokens, "seed": seed, **params}
        if stream:
            n = 0
            for chunk in sdk.stream(PROMPT, **kw):
                n += len(chunk.token_ids)
            return n
        return sdk.generate(PROMPT, **kw).usage.completion_tokens

    def run_direct(params: dict[str, Any], stream: bool, seed: int) -> int:
        direct.reset()
        kw = {"max_tokens": args.tokens, "seed": seed, "min_p": 0.0, "typical_p": 1.0, "temperature":
              params["temperature"], "top_k": params["top_k"], "top_p": params["top_p"],
              "repeat_penalty": params["repeat_penalty"]}
        if stream:
            finish = None
            for chunk in direct.create_completion(PROMPT, stream=True, **kw):
                finish = chunk["choices"][0]["finish_reason"] or finish  # type: ignore[index]
            if finish != "length":  # stream chunks carry no usage: count only full-length runs
                raise RuntimeError(f"direct stream ended with {finish!r} before {args.tokens} tokens; use another seed")
            return int(args.tokens)
        out: Any = direct.create_completion(PROMPT, **kw)
        return int(out["usage"]["completion_tokens"])

    # CPU time inside llama.cpp's per-token calls, on both sides
    import llama_cpp._internals as internals
    import llama_cpp.llama as llama_mod

    inside = {"cpu": 0.0}

    def clocked(fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            c = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                inside["cpu"] += time.process_time() - c
        return wrapper

    llama_mod.Llama.eval = clocked(llama_mod.Llama.eval)  # type: ignore[method-assign]
    internals.LlamaSampler.sample = clocked(internals.LlamaSampler.sample)  # type: ignore[method-assign]

    def timed(fn: Any, *a: Any) -> tuple[float, float, float, float]:
        """(CPU tok/s, wall tok/s, overhead CPU s/token, llama.cpp CPU s/token)."""
        inside["cpu"] = 0.0
        c0, t0 = time.process_time(), time.perf_counter()
        n = fn(*a)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        return n / cpu, n / wall, (cpu - inside["cpu"]) / n, inside["cpu"] / n

    results: dict[str, Any] = {}
    for name, params in (("greedy", GREEDY), ("sampling", SAMPLING)):
        for stream in (False, True):
            mode = f"{name}{' stream' if stream else ''}"
            timed(run_sdk, params, stream, 1)  # warm-up both
            timed(run_direct, params, stream, 1)
            a: list[tuple[float, float, float, float]] = []
            b: list[tuple[float, float, float, float]] = []
            for rep in range(args.reps):
                order = (("sdk", "direct") if rep % 2 == 0 else ("direct", "sdk"))
                for side in order:
                    if side == "sdk":
                        a.append(timed(run_sdk, params, stream, 100 + rep))
                    else:
                        b.append(timed(run_direct, params, stream, 100 + rep))
            ov_a, ov_b = statistics.median(x[2] for x in a), statistics.median(x[2] for x in b)
            compute = statistics.median(x[3] for x in a + b)
            implied = (compute + ov_b) / (compute + ov_a)
            r = {"overhead_us_per_token_sdk": ov_a * 1e6, "overhead_us_per_token_direct": ov_b * 1e6,
                 "llama_cpp_ms_per_token": compute * 1e3, "implied_ratio": implied,
                 "best_cpu_ratio": max(x[0] for x in a) / max(x[0] for x in b),
                 "best_wall_ratio": max(x[1] for x in a) / max(x[1] for x in b),
                 "median_cpu_ratio": statistics.median(x[0] for x in a) / statistics.median(x[0] for x in b),
                 "median_wall_ratio": statistics.median(x[1] for x in a) / statistics.median(x[1] for x in b),
                 "sdk_best_wall_tok_s": max(x[1] for x in a), "direct_best_wall_tok_s": max(x[1] for x in b),
                 "sdk_runs": a, "direct_runs": b}
            results[mode] = r
            print(f"{mode:<16} overhead/token: sdk {ov_a * 1e6:7.1f} us, llama_cpp {ov_b * 1e6:7.1f} us "
                  f"(llama.cpp compute {compute * 1e3:.2f} ms/token) -> implied ratio {implied:.4f} | "
                  f"A/B ratios best cpu {r['best_cpu_ratio']:.3f} wall {r['best_wall_ratio']:.3f}, "
                  f"median cpu {r['median_cpu_ratio']:.3f} wall {r['median_wall_ratio']:.3f} | best wall tok/s "
                  f"sdk {r['sdk_best_wall_tok_s']:.2f} llama_cpp {r['direct_best_wall_tok_s']:.2f}", flush=True)
    info = {"model": str(path), "parameters": sdk.info.parameters, "quantization": sdk.info.quantization,
            "threads": args.threads, "tokens": args.tokens, "reps": args.reps, "repack": sdk.info.extra["repack"],
            "machine": machine(), "engine": {k: v for k, v in capabilities().items() if k != "system_info"}}
    print(json.dumps(info, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps({"info": info, "results": results}, indent=2, default=str))
    sdk.close()
    direct.close()


if __name__ == "__main__":
    main()
