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

``--prefix-store`` measures instead what the prefix cache's store costs the single path
(openllm_hub.engines.prefix_cache: by default every prompt longer than one 64-token block has its
KV state copied into the cache after it is read): prompts of ``--prompt-tokens`` tokens (default
200 and 1,000), a fresh one for every request (its first words differ, so neither the cache nor
llama-cpp-python's reuse of the last prompt's cells ever hits, and each request stores), greedy,
``--tokens`` new tokens, streamed. Sides, alternating in rotated order: ``on`` (the SDK with its
cache, which keeps every stored entry, as a server's would), ``off`` (the same loaded model with
``prefix_cache_mib=0``) and ``llama_cpp`` (``Llama.create_completion``, fresh KV cache). Reported:
time to first token (TTFT) and decode tokens/s (after the first token), by wall clock and by
process CPU time, best and median; the on/off and off/llama_cpp ratios of the medians; and the
time spent inside the store itself (``LlamaCppModel._remember_prefix``), as a share of TTFT.
``--prefix-store --engine transformers`` runs the same on the random LLaMA's HF folder on torch
(float32; the store is ``openllm_hub.engines.torch_prefix.store_kv``; no direct side)::

    nice python benchmarks/bench_llama_overhead.py --prefix-store [--engine transformers] [--threads 1]
        [--prompt-tokens 200,1000] [--tokens 32] [--reps 5]
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
    ap.add_argument("--prefix-store", action="store_true",
                    help="TTFT and tokens/s of long fresh prompts with the prefix cache on and off")
    ap.add_argument("--engine", choices=("llama.cpp", "transformers"), default="llama.cpp",
                    help="--prefix-store only: transformers runs the HF folder on torch")
    ap.add_argument("--prompt-tokens", default="200,1000", help="--prefix-store only: prompt lengths")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.prefix_store:
        if args.engine == "transformers":
            prefix_store_main(args, args.model or build_hf(args.work))
        else:
            prefix_store_main(args, args.model or build_model(args.work))
        return
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


WORDS = ("library book river window garden morning quiet answer simple letter number travel paper music "
         "winter summer doctor market street friend teacher animal forest water yellow kitchen camera bridge "
         "planet engine silver coffee island history science village mountain season picture journey").split()


def fresh_prompt(model: Any, request: int, tokens: int) -> str:
    """A prompt of about ``tokens`` tokens that shares no 64-token block with any other request's
    (its first words are the request number and words drawn by it)."""
    import random

    rng = random.Random(request)
    words = [f"Note {request}:"] + [rng.choice(WORDS) for _ in range(tokens)]
    text = " ".join(words)
    ids = model.tokenize(text)
    while len(ids) > tokens:
        words = words[:max(2, len(words) - max(1, (len(ids) - tokens) // 2))]
        text = " ".join(words)
        ids = model.tokenize(text)
    return text


def prefix_store_main(args: argparse.Namespace, path: Path) -> None:
    """``--prefix-store``: the single path's TTFT and decode speed with the prefix cache's store on and
    off (see the module doc)."""
    import openllm_hub
    from openllm_hub.engines.prefix_cache import PrefixCache

    lengths = [int(x) for x in args.prompt_tokens.split(",")]
    n_ctx = max(512, max(lengths) + args.tokens + 64)
    in_store = {"cpu": 0.0, "wall": 0.0, "calls": 0}

    def clocked(fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            c, t = time.process_time(), time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                in_store["cpu"] += time.process_time() - c
                in_store["wall"] += time.perf_counter() - t
                in_store["calls"] += 1
        return wrapper

    direct: Any = None
    if args.engine == "transformers":
        import torch

        import openllm_hub.engines.torch_prefix as torch_prefix

        torch.set_num_threads(args.threads)
        # remembering() calls store_kv through its module's globals
        torch_prefix.store_kv = clocked(torch_prefix.store_kv)
        sdk = openllm_hub.load(path, device="cpu", threads=args.threads, dtype="fp32")
    else:
        from llama_cpp import Llama

        from openllm_hub.engines.llama_cpp import LlamaCppModel, model_params

        LlamaCppModel._remember_prefix = clocked(LlamaCppModel._remember_prefix)  # type: ignore[method-assign]
        sdk = openllm_hub.load(path, device="cpu", threads=args.threads, n_ctx=n_ctx)
        with model_params(use_extra_bufts=sdk.info.extra["repack"]):
            direct = Llama(str(path), n_ctx=n_ctx, n_batch=512, n_threads=args.threads,
                           n_threads_batch=args.threads, offload_kqv=False, op_offload=False, verbose=False)
    on_cache: Any = sdk.prefix_cache  # type: ignore[attr-defined]
    off_cache = PrefixCache(0)
    budget_mib = on_cache.budget_bytes / 2**20

    def run(side: str, prompt: str) -> tuple[float, float, float, float, float, float]:
        """(TTFT wall s, TTFT CPU s, decode tok/s wall, decode tok/s CPU, store wall s, store CPU s)."""
        kw = {"temperature": 0.0, "top_k": 40, "top_p": 0.95, "repeat_penalty": 1.1}
        for key in in_store:
            in_store[key] = 0
        n = 0
        first: tuple[float, float] | None = None
        c0, t0 = time.process_time(), time.perf_counter()
        if side == "llama_cpp":
            direct.reset()
            finish = None
            for chunk in direct.create_completion(prompt, stream=True, max_tokens=args.tokens, min_p=0.0,
                                                  typical_p=1.0, seed=1, **kw):
                first = first or (time.process_time(), time.perf_counter())
                finish = chunk["choices"][0]["finish_reason"] or finish
            if finish != "length":  # stream chunks carry no usage: count only full-length runs
                raise RuntimeError(f"direct stream ended with {finish!r} before {args.tokens} tokens")
            n = args.tokens
        else:
            sdk.prefix_cache = on_cache if side == "on" else off_cache  # type: ignore[attr-defined]
            if args.engine == "llama.cpp":
                sdk.llama.reset()  # type: ignore[attr-defined]
            for chunk in sdk.stream(prompt, max_new_tokens=args.tokens, seed=1, **kw):
                first = first or (time.process_time(), time.perf_counter())
                n += len(chunk.token_ids)
        c2, t2 = time.process_time(), time.perf_counter()
        assert first is not None
        return (first[1] - t0, first[0] - c0, (n - 1) / (t2 - first[1]), (n - 1) / (c2 - first[0]),
                float(in_store["wall"]), float(in_store["cpu"]))

    sides = ["on", "off"] + (["llama_cpp"] if direct is not None else [])
    request = 0
    results: dict[int, dict[str, list[tuple[float, ...]]]] = {}
    prompt_tokens: dict[int, int] = {}
    load0 = os.getloadavg()
    for length in lengths:
        request += 1
        prompt = fresh_prompt(sdk, request, length)
        prompt_tokens[length] = len(sdk.tokenize(prompt))
        for side in sides:  # warm-up
            run(side, prompt)
        for rep in range(args.reps):
            order = sides[rep % len(sides):] + sides[:rep % len(sides)]
            for side in order:
                request += 1
                results.setdefault(length, {}).setdefault(side, []).append(
                    run(side, fresh_prompt(sdk, request, length)))
    load1 = os.getloadavg()
    stats = on_cache.stats()
    print(f"{sdk.info.engine}, {(sdk.info.parameters or 0) / 1e6:.0f}M parameters, {sdk.info.dtype}"
          f"{', ' + str(sdk.info.quantization) if sdk.info.quantization else ''}, {args.threads} thread(s), "
          f"n_ctx {n_ctx}, {args.tokens} new tokens, best (median) of {args.reps}; cache budget "
          f"{budget_mib:.0f} MiB, at the end: {stats}; load average {load0} -> {load1}")
    print(f"{'prompt':>6} {'side':<10} {'TTFT wall ms':>19} {'TTFT CPU ms':>19} {'decode wall tok/s':>19} "
          f"{'decode CPU tok/s':>19} {'store CPU ms':>14} {'store/TTFT':>10}")
    report: dict[str, Any] = {"engine": sdk.info.engine, "model": str(path), "parameters": sdk.info.parameters,
                              "dtype": sdk.info.dtype, "threads": args.threads, "tokens": args.tokens,
                              "reps": args.reps, "n_ctx": n_ctx, "cache_budget_mib": budget_mib,
                              "cache_stats": stats, "load_avg": [load0, load1], "machine": machine_cpu(),
                              "rows": []}
    for length in lengths:
        med: dict[str, list[float]] = {}
        for side in sides:
            got = results[length][side]
            med[side] = [statistics.median(r[j] for r in got) for j in range(6)]
            best = [min(r[0] for r in got), min(r[1] for r in got), max(r[2] for r in got), max(r[3] for r in got)]
            share = statistics.median(r[5] / r[1] for r in got)
            print(f"{prompt_tokens[length]:>6} {side:<10} {best[0] * 1e3:>8.1f} ({med[side][0] * 1e3:>8.1f}) "
                  f"{best[1] * 1e3:>8.1f} ({med[side][1] * 1e3:>8.1f}) {best[2]:>8.2f} ({med[side][2]:>8.2f}) "
                  f"{best[3]:>8.2f} ({med[side][3]:>8.2f}) {med[side][5] * 1e3:>14.2f} {share:>10.2%}")
            report["rows"].append({"prompt_tokens": prompt_tokens[length], "side": side, "runs": got,
                                   "ttft_wall_ms_best": best[0] * 1e3, "ttft_cpu_ms_best": best[1] * 1e3,
                                   "decode_wall_tok_s_best": best[2], "decode_cpu_tok_s_best": best[3],
                                   "ttft_wall_ms_median": med[side][0] * 1e3, "ttft_cpu_ms_median": med[side][1] * 1e3,
                                   "decode_wall_tok_s_median": med[side][2], "decode_cpu_tok_s_median": med[side][3],
                                   "store_cpu_ms_median": med[side][5] * 1e3, "store_share_of_ttft_cpu": share})
        on, off = med["on"], med["off"]
        line = (f"{prompt_tokens[length]:>6} on/off (medians): TTFT CPU {on[1] / off[1]:.3f}, "
                f"wall {on[0] / off[0]:.3f}; decode tok/s CPU {on[3] / off[3]:.3f}, wall {on[2] / off[2]:.3f}")
        if "llama_cpp" in med:
            d = med["llama_cpp"]
            line += (f" | on/llama_cpp: TTFT CPU {on[1] / d[1]:.3f}, decode tok/s CPU {on[3] / d[3]:.3f}"
                     f" | off/llama_cpp: TTFT CPU {off[1] / d[1]:.3f}, decode tok/s CPU {off[3] / d[3]:.3f}")
        print(line, flush=True)
    print(json.dumps(report["machine"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    sdk.close()
    if direct is not None:
        direct.close()


def machine_cpu() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "python": platform.python_version()}


if __name__ == "__main__":
    main()
