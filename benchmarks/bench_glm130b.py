"""GLM-130B plugin: per-rank resident weight memory and CPU tokens/s at TP = 1, 2, 4.

Builds a small GLM-130B-shaped SAT checkpoint (default: 4 layers, hidden 1024, 16 heads,
GeGLU inner 2728, ~50M parameters, fp16 on disk; a real sentencepiece tokenizer), then for each
TP degree starts that many ranks (gloo on CPU, as ``openllm-hub glm130b-run --nproc N``) and
measures on rank 0:

* weight bytes the rank holds (its engine's tensors; fp32 compute dtype here), and the
  process RSS after loading (adds the torch runtime, ~300-400 MiB);
* prompt time for a 128-token prompt and greedy decode speed over 64 tokens.

Also INT8 and INT4 (quantized on load) at TP=2 for their memory. With ``--batch``: aggregate
generated tokens/s of 1 and 8 sequences decoded together (``generate_batch``: one forward pass
per step for every sequence, on every rank) against 8 run one after the other (the core's serial
fallback, what GLM-130B did before it batched), measured in the same run on the same ranks.
Expected memory: matrices and the embedding split 1/TP; layer norms and row-parallel biases replicated (a few KB here).
Expected speed on CPU: no gain from TP on one small machine (the ranks share its cores, and
each layer adds two all-reduces plus one all-gather for the logits over gloo); TP pays off when
each rank has its own cores or GPU, where per-token time ~ weights/TP / memory bandwidth plus
2 x layers all-reduce latencies. Usage::

    python benchmarks/bench_glm130b.py [--hidden 1024 --layers 4] [--tp 1 2 4] [--json out.json]
    python benchmarks/bench_glm130b.py --batch [--tp 1 2] [--tokens 32] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMPT = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)


@dataclass(frozen=True)
class BenchJob:
    """Runs on rank 0: memory figures, prompt time and decode speed."""

    prompt_tokens: int = 128
    new_tokens: int = 64

    def __call__(self, model: Any) -> dict[str, Any]:
        import psutil

        ids = model.tokenize(PROMPT)[-self.prompt_tokens:]
        ids = [*ids[:-2], *model.tokenize("", add_special=True)[-2:]]  # keep [gMASK] <sop> at the end
        def run(n: int) -> Any:
            config = model.generation_defaults.build(max_new_tokens=n, temperature=0.0)
            return model._collect(model._stream_ids(ids, config))

        run(2)  # warm-up
        t0 = time.perf_counter()
        model.logits(ids)
        prompt_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = run(self.new_tokens)
        decode_s = time.perf_counter() - t0
        n = len(out.token_ids)
        return {"weight_bytes": model.backend.engine.weight_bytes(),
                "rss_mib": psutil.Process().memory_info().rss / 2**20,
                "prompt_tokens": len(ids), "prompt_s": prompt_s, "new_tokens": n,
                "decode_tokens_per_s": n / decode_s if decode_s else 0.0}


BATCH_PROMPTS = ("the quick brown fox", "a dog ran to the river and", "one two three four five", "hello there",
                 "we went to the sea", "the cat sat on the mat and looked", "it was a long day", "x y z")


@dataclass(frozen=True)
class BatchBenchJob:
    """Runs on rank 0: aggregate generated tokens/s (wall and rank-0 CPU) of 1 and 8 sequences
    in one batch, and of 8 one after the other (the serial fallback); best of ``reps`` rounds."""

    new_tokens: int = 32
    reps: int = 2

    def __call__(self, model: Any) -> list[dict[str, Any]]:
        from openllm_hub.plugin import Model

        batched_cls = type(model)
        serial_cls = type("Serial", (batched_cls,), {"_batch_decoder": Model._batch_decoder})
        params = {"max_new_tokens": self.new_tokens, "temperature": 0.0, "repeat_penalty": 1.0}
        model.generate_batch(list(BATCH_PROMPTS[:2]), max_new_tokens=2, temperature=0.0)  # warm-up
        out = []
        texts: dict[tuple[str, int], list[str]] = {}
        for mode, n in (("batched", 1), ("batched", 8), ("serial", 8)):
            model.__class__ = batched_cls if mode == "batched" else serial_cls
            best: dict[str, float] = {}
            for _ in range(self.reps):
                w0, c0 = time.perf_counter(), time.process_time()
                res = model.generate_batch(list(BATCH_PROMPTS[:n]), **params)
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                tokens = sum(len(r.token_ids) for r in res)
                texts.setdefault((mode, n), []).append("".join(r.text for r in res))
                if not best or tokens / wall > best["tok_s_wall"]:
                    best = {"tok_s_wall": tokens / wall, "tok_s_cpu0": tokens / cpu, "tokens": tokens}
            out.append({"mode": mode, "n": n, "batching": model.batching, **best})
        model.__class__ = batched_cls
        same = texts[("batched", 8)][0] == texts[("serial", 8)][0]
        return [{**row, "same_text_as_serial": same} for row in out]


def run_batch(path: Path, tps: list[int], threads: int | None, new_tokens: int, reps: int) -> list[dict[str, Any]]:
    from openllm_hub_glm130b.launch import RunSpec, spawn_many
    from openllm_hub_glm130b.ranks import EngineOptions

    rows = []
    for tp in tps:
        (res,) = spawn_many([(RunSpec(str(path), EngineOptions(dtype="fp32")), BatchBenchJob(new_tokens, reps))], tp,
                            device="cpu", threads=threads)
        base = next(r for r in res if r["mode"] == "batched" and r["n"] == 1)
        for r in res:
            r = {"tp": tp, **r, "x_wall": r["tok_s_wall"] / base["tok_s_wall"]}
            rows.append(r)
            print(f"TP={tp} {r['mode']:>7} N={r['n']}: {r['tok_s_wall']:6.1f} tok/s wall ({r['x_wall']:.2f}x), "
                  f"{r['tok_s_cpu0']:6.1f} tok/s per rank-0 CPU second, {r['tokens']} tokens, "
                  f"same text as serial: {r['same_text_as_serial']}", flush=True)
    return rows


def main() -> int:
    from openllm_hub_glm130b.launch import RunSpec, spawn_many
    from openllm_hub_glm130b.ranks import EngineOptions
    from openllm_hub_glm130b.tiny import build_tiny

    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--tp", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--threads", type=int, default=None, help="torch threads per rank (default: CPUs / ranks)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--batch", action="store_true", help="aggregate tokens/s of 1 and 8 sequences in one batch")
    ap.add_argument("--tokens", type=int, default=32, help="--batch: new tokens per sequence")
    ap.add_argument("--reps", type=int, default=2, help="--batch: rounds per mode (best kept)")
    args = ap.parse_args()
    inner = args.hidden * 8 // 3 // 8 * 8
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path, full = build_tiny(Path(tmp) / "ckpt", tp=max(args.tp), gain=1.0, hidden=args.hidden,
                                heads=args.heads, inner=inner, layers=args.layers, max_seq=512)
        params = sum(v.numel() for v in full.values())
        print(f"built {params / 1e6:.1f}M-parameter checkpoint in {time.perf_counter() - t0:.1f}s", flush=True)
        if args.batch:
            rows = run_batch(path, args.tp, args.threads, args.tokens, args.reps)
        for tp in [] if args.batch else args.tp:
            work: list[tuple[RunSpec, Any]] = [(RunSpec(str(path), EngineOptions(dtype="fp32")), BenchJob())]
            if tp == 2:
                work += [(RunSpec(str(path), EngineOptions(dtype="fp32", quantize=b)), BenchJob()) for b in (8, 4)]
            t0 = time.perf_counter()
            results = spawn_many(work, tp, device="cpu", threads=args.threads)
            for (spec, _), res in zip(work, results):
                q = spec.options.quantize
                row = {"tp": tp, "weights": "fp32" if q is None else f"int{q}", **res}
                rows.append(row)
                wb = res["weight_bytes"]
                print(f"TP={tp} {row['weights']:>5}: rank-0 weights {wb['device'] / 2**20:7.1f} MiB, RSS "
                      f"{res['rss_mib']:7.1f} MiB, prompt {res['prompt_tokens']} tok in {res['prompt_s']:.3f}s, "
                      f"decode {res['decode_tokens_per_s']:6.1f} tok/s", flush=True)
            print(f"  (TP={tp} run incl. process start: {time.perf_counter() - t0:.1f}s)", flush=True)
    meta = {"threads_per_rank": args.threads,
            "params": params, "hidden": args.hidden, "layers": args.layers, "heads": args.heads, "inner": inner,
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
