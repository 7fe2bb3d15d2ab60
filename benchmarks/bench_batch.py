"""Batching on llama.cpp or transformers: aggregate generated tokens/s with 1, 2, 4 and 8 sequences at once.

Each round runs ``Model.generate_batch`` over N different prompts (10 to 20 tokens each,
greedy, ``--tokens`` new tokens each) on one loaded model, and reports the generated tokens
of all sequences divided by the round's wall-clock time (prompt reading included) and by
its process CPU time (with one thread, llama.cpp computes on the calling thread, so CPU time
is robust to neighbours on a shared machine), and the same two rates for the decode steps
alone (after the first step, which reads every prompt and samples each first token). Modes:

* ``batched``: the engine's batched decoder (openllm_hub.engines.llama_cpp_batch), one
  ``llama_decode`` per step for all sequences;
* ``interleaved``: the same model without it (the core's fallback, which swaps the one
  context's KV cache between sequences), i.e. what the server did before.

``--engine transformers`` runs the same random LLaMA as an HF folder on torch in float32
(the batched decoder is openllm_hub_llama.engine_hf.HFBatchDecoder, one forward pass per step
over a left-padded cache; ``interleaved`` is then one ``_token_stream`` generator per
sequence, each with its own cache).

Rounds alternate between the modes and N; the best of ``--reps`` is reported (and the median).
Without ``--model`` the random LLaMA of bench_llama_overhead.py (hidden 768, 12 layers, about
134M parameters, f16 GGUF) is built in ``--work``. Usage::

    nice python benchmarks/bench_batch.py [--engine llama.cpp|transformers] [--model x.gguf|folder]
        [--threads 1] [--tokens 48] [--reps 3]

``--prefix`` measures the prefix cache (openllm_hub.engines.prefix_cache) instead: time to first
token of requests made of one ``--system-tokens``-token system prompt and a different question
each, on one long-lived batch as the server's slots run them (each request alone, one new token).
Per round: a fresh cache, the first request (reads everything, stores its prompt), a second one
(reuses the system prompt's KV cells), then the cache off and a third one (reads everything
again); and the same on the single path (``Model.generate``), where an unrelated prompt is run
before each request so that llama-cpp-python's own reuse of the last prompt's cells does not
hide the cache (or make a first request look cached). Times are wall clock and process CPU time (1 thread: robust to
neighbours); best and median of ``--reps``. ``--prefix --engine transformers`` runs it on the same
random LLaMA as an HF folder on torch (float32; openllm_hub.engines.torch_prefix), ``--prefix
--family chatglm2`` on a random ChatGLM2 of about the same shape (hidden 768, 12 layers, float32,
this SDK's torch network, a small trained tokenizer) built in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

PROMPTS = ["Building a website can be done in 10 simple steps:\n1.", "Once upon a time, in a land far away,",
           "The capital of France is", "Here is a recipe for pancakes. Ingredients:",
           "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"",
           "The three laws of thermodynamics are", "Dear hiring manager, I am writing to apply for",
           "In 1969, the first humans landed on"]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_llama_overhead import build_hf, build_model, machine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("llama.cpp", "transformers"), default="llama.cpp")
    ap.add_argument("--model", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/openllm-hub-bench"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--prefix", action="store_true", help="time to first token with a shared system prompt")
    ap.add_argument("--system-tokens", type=int, default=1000)
    ap.add_argument("--family", choices=("llama", "chatglm2"), default="llama",
                    help="--prefix only: chatglm2 runs a random ChatGLM2 on torch")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.prefix:
        if args.family == "chatglm2":
            path = args.model or build_chatglm2(args.work)
        elif args.engine == "transformers":
            path = args.model or build_hf(args.work)
        else:
            path = args.model or build_model(args.work)
        prefix_main(args, path, machine())
        return

    import openllm_hub
    from openllm_hub.core.config import GenerationConfig
    from openllm_hub.core.model import Model

    if args.engine == "transformers":
        path = args.model or build_hf(args.work)
        model = openllm_hub.load(path, device="cpu", threads=args.threads, dtype="fp32")
    else:
        path = args.model or build_model(args.work)
        model = openllm_hub.load(path, device="cpu", threads=args.threads, n_ctx=512)
    batched_cls = type(model)
    interleaved_cls = type("Interleaved" + batched_cls.__name__, (batched_cls,),
                           {"_batch_decoder": Model._batch_decoder})
    counts = [int(c) for c in args.clients.split(",")]
    params = {"max_new_tokens": args.tokens, "temperature": 0.0}
    results: dict[str, dict[int, list[tuple[float, float, float, float]]]] = {"batched": {}, "interleaved": {}}
    texts: dict[int, list[str]] = {}  # the first round's texts, which every later round should repeat
    differing: dict[str, int] = {}

    def run(mode: str, n: int) -> None:
        """One round: N prompts joined at once, stepped until all finish. The first step reads
        every prompt (they fit one step's budget) and samples each first token; the decode
        rate counts the steps after it."""
        model.__class__ = batched_cls if mode == "batched" else interleaved_cls
        configs = [GenerationConfig.build(model.generation_defaults, **params).with_seed() for _ in range(n)]
        c0, t0 = time.process_time(), time.perf_counter()
        got: dict[int, list[str]] = {}
        tokens = 0
        with model.new_batch(n) as batch:
            keys = {batch.add(model.tokenize(p), cfg): i for i, (p, cfg) in enumerate(zip(PROMPTS[:n], configs))}
            first: tuple[float, float] | None = None
            while batch.running:
                for key, event in batch.step():
                    assert not isinstance(event, BaseException), event
                    got.setdefault(keys[key], []).append(event.text)
                    if event.usage is not None:
                        tokens += event.usage.completion_tokens
                if first is None:
                    first = (time.process_time(), time.perf_counter())
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        assert first is not None
        dec_cpu, dec_wall = time.process_time() - first[0], time.perf_counter() - first[1]
        dec_tokens = tokens - n
        results[mode].setdefault(n, []).append((tokens / wall, tokens / cpu, dec_tokens / dec_wall,
                                                dec_tokens / dec_cpu))
        text = ["".join(got[i]) for i in range(n)]
        want = texts.setdefault(n, text)
        differing[mode] = differing.get(mode, 0) + sum(a != b for a, b in zip(text, want))

    run("batched", 1)  # warm-up (page in the weights)
    for _ in range(args.reps):
        for n in counts:
            for mode in ("batched", "interleaved"):
                run(mode, n)
    model.__class__ = batched_cls
    model.close()

    report: dict[str, Any] = {"engine": args.engine, "model": str(path), "parameters": model.info.parameters,
                              "dtype": model.info.dtype,
                              "threads": args.threads, "tokens_per_sequence": args.tokens, "machine": machine(),
                              "rows": []}
    print(f"{args.engine}, {(model.info.parameters or 0) / 1e6:.0f}M parameters, {model.info.dtype}, "
          f"{args.threads} thread(s), "
          f"{args.tokens} tokens per sequence, best (median) of {args.reps}")
    print(f"{'mode':<12} {'N':>3} {'wall tok/s':>16} {'CPU tok/s':>16} {'x (CPU)':>8}  {'decode wall':>16} "
          f"{'decode CPU':>16} {'x (CPU)':>8}")
    names = ("wall", "cpu", "decode_wall", "decode_cpu")
    for mode in ("batched", "interleaved"):
        base = [max(r[j] for r in results[mode][counts[0]]) for j in range(4)]
        for n in counts:
            rows = results[mode][n]
            best = [max(r[j] for r in rows) for j in range(4)]
            med = [statistics.median(r[j] for r in rows) for j in range(4)]
            print(f"{mode:<12} {n:>3} {best[0]:>7.1f} ({med[0]:>6.1f}) {best[1]:>7.1f} ({med[1]:>6.1f}) "
                  f"{best[1] / base[1]:>7.2f}x  {best[2]:>7.1f} ({med[2]:>6.1f}) {best[3]:>7.1f} ({med[3]:>6.1f}) "
                  f"{best[3] / base[3]:>7.2f}x")
            report["rows"].append({"mode": mode, "clients": n, **{f"{k}_tok_s_best": b for k, b in zip(names, best)},
                                   **{f"{k}_tok_s_median": m for k, m in zip(names, med)}})
    report["texts_differing_from_first_round"] = differing
    print("texts differing from the first round (greedy):", differing)
    print(json.dumps(report["machine"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


SYSTEM_SENTENCES = ["You are a helpful assistant for the city library.", "Answer briefly and politely.",
                    "Opening hours are nine to five on weekdays.", "Books may be borrowed for three weeks.",
                    "Late returns cost ten cents a day.", "The reading room is on the second floor.",
                    "Children's books are next to the entrance.", "Ask before recommending a book."]
QUESTIONS = ["When do you open?", "How long can I keep a book?", "Where is the reading room?",
             "What does a late return cost?", "Do you have comics?", "Can I print here?", "Is there wifi?",
             "Where are the children's books?", "Can I renew online?", "Do you sell coffee?"]


def build_chatglm2(work: Path) -> Path:
    """A random ChatGLM2 (hidden 768, 12 layers, 12 heads, 2 key/value groups, 2,048-token context)."""
    from openllm_hub_chatglm.tiny import build_checkpoint

    folder = work / "prefix-chatglm2"
    if not (folder / "config.json").is_file():
        build_checkpoint(folder, "chatglm2", hidden=768, layers=12, heads=12, kv_groups=2, ffn=2048,
                         seq_length=2048, seed=0)
    return folder


def prefix_main(args: argparse.Namespace, path: Path, machine_info: dict[str, Any]) -> None:
    """``--prefix``: time to first token with and without the prefix cache (see the module doc)."""
    import openllm_hub
    from openllm_hub.core.config import GenerationConfig
    from openllm_hub.engines.prefix_cache import PrefixCache

    if args.family == "chatglm2" or args.engine == "transformers":
        model: Any = openllm_hub.load(path, device="cpu", threads=args.threads, dtype="fp32")
    else:
        model = openllm_hub.load(path, device="cpu", threads=args.threads, n_ctx=args.system_tokens + 256)
    budget = model.prefix_cache.budget_bytes
    words: list[str] = []
    i = 0
    while len(model.tokenize(" ".join(words))) < args.system_tokens:
        words.append(f"{SYSTEM_SENTENCES[i % len(SYSTEM_SENTENCES)]} (rule {i})")
        i += 1
    system = " ".join(words)
    questions = iter(q + f" ({n})" for n in range(10**6) for q in QUESTIONS)
    config = GenerationConfig.build(model.generation_defaults, max_new_tokens=1, temperature=0.0).with_seed()

    def batched(batch: Any) -> tuple[float, float]:
        """One request on the long-lived batch: (wall, CPU) seconds until its first token."""
        ids = model.tokenize(f"{system}\nQuestion: {next(questions)}\nAnswer:")
        c0, t0 = time.process_time(), time.perf_counter()
        batch.add(ids, config)
        while not batch.step():
            pass
        return time.perf_counter() - t0, time.process_time() - c0

    def single() -> tuple[float, float]:
        c0, t0 = time.process_time(), time.perf_counter()
        model.generate(f"{system}\nQuestion: {next(questions)}\nAnswer:", max_new_tokens=1, temperature=0.0)
        return time.perf_counter() - t0, time.process_time() - c0

    n_prompt = len(model.tokenize(f"{system}\nQuestion: {QUESTIONS[0]} (0)\nAnswer:"))
    rows: dict[str, list[tuple[float, float]]] = {}
    with model.new_batch(1) as batch:
        batched(batch)  # warm-up (page in the weights)
        for _ in range(args.reps):
            model.prefix_cache = PrefixCache(budget)
            rows.setdefault("batched: first", []).append(batched(batch))
            rows.setdefault("batched: second, cache hit", []).append(batched(batch))
            model.prefix_cache = PrefixCache(0)
            rows.setdefault("batched: second, cache off", []).append(batched(batch))
            model.prefix_cache = PrefixCache(budget)
            model.generate("An unrelated prompt about the weather.", max_new_tokens=1)
            rows.setdefault("single: first", []).append(single())
            model.generate("An unrelated prompt about the weather.", max_new_tokens=1)
            rows.setdefault("single: second, cache hit", []).append(single())
            model.prefix_cache = PrefixCache(0)
            model.generate("An unrelated prompt about the weather.", max_new_tokens=1)
            rows.setdefault("single: second, cache off", []).append(single())
    stats = model.prefix_cache.stats()
    model.close()
    print(f"{model.info.family} on {model.info.engine}, {(model.info.parameters or 0) / 1e6:.0f}M parameters, "
          f"{model.info.dtype}, {args.threads} thread(s), prompt {n_prompt} tokens ({args.system_tokens}-token "
          f"system prompt), best (median) of {args.reps}; last cache: {stats}")
    print(f"{'request':<30} {'TTFT wall ms':>20} {'TTFT CPU ms':>20} {'first / this (CPU)':>20}")
    report: dict[str, Any] = {"model": str(path), "family": model.info.family, "engine": model.info.engine,
                              "parameters": model.info.parameters, "dtype": model.info.dtype,
                              "threads": args.threads, "prompt_tokens": n_prompt, "machine": machine_info,
                              "rows": []}
    for name, got in rows.items():
        best = [min(r[j] for r in got) * 1e3 for j in range(2)]
        med = [statistics.median(r[j] for r in got) * 1e3 for j in range(2)]
        first = min(r[1] for r in rows[name.split(":")[0] + ": first"]) * 1e3
        print(f"{name:<30} {best[0]:>9.1f} ({med[0]:>8.1f}) {best[1]:>9.1f} ({med[1]:>8.1f}) "
              f"{first / best[1]:>19.1f}x")
        report["rows"].append({"request": name, "wall_ms_best": best[0], "wall_ms_median": med[0],
                               "cpu_ms_best": best[1], "cpu_ms_median": med[1], "speedup_cpu": first / best[1]})
    print(json.dumps(machine_info, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
