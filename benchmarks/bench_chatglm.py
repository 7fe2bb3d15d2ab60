"""ChatGLM engine benchmark: generation speed per version and quantization on CPU, against
transformers' GlmForCausalLM on the same ChatGLM2 weights, and resident weight memory.

Builds small random checkpoints in the real layout (``openllm_hub_chatglm.tiny``), then for
each configuration generates ``--tokens`` greedy tokens after a ``--prompt-tokens`` prompt
with the KV cache on, ``--rounds`` times, and reports the best round's generation tokens/s
(wall clock) and tokens per CPU-second of this process (steadier on a shared machine).
Memory: parameter + buffer bytes of the loaded network, and for the released ChatGLM-6B /
ChatGLM2-6B shapes the same count on torch's meta device (no allocation).

    nice .venv/bin/python benchmarks/bench_chatglm.py [--threads 1] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _time_ours(model: Any, prompt_ids: list[int], tokens: int, rounds: int) -> tuple[float, float]:
    from openllm_hub.core.config import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=tokens, temperature=0.0, repeat_penalty=1.0, seed=0)
    best_wall = best_cpu = 0.0
    for _ in range(rounds):
        stream = model._token_stream(list(prompt_ids), cfg)
        first = next(stream)  # prompt processed; time the cached steps after it
        del first
        w0, c0 = time.perf_counter(), time.process_time()
        for n, _tok in enumerate(stream, start=2):
            if n >= tokens:
                break
        stream.close()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        best_wall = max(best_wall, (tokens - 1) / wall)
        best_cpu = max(best_cpu, (tokens - 1) / max(cpu, 1e-9))
    return best_wall, best_cpu


def _time_transformers(model: Any, prompt_ids: list[int], tokens: int, rounds: int) -> tuple[float, float]:
    import torch

    ids = torch.tensor([prompt_ids])
    best_wall = best_cpu = 0.0
    with torch.no_grad():
        for _ in range(rounds):
            # time prompt + 1 token, then prompt + tokens; the difference is tokens-1 cached steps
            w0, c0 = time.perf_counter(), time.process_time()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False, eos_token_id=None, pad_token_id=0)
            w1, c1 = time.perf_counter(), time.process_time()
            model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, eos_token_id=None,
                           pad_token_id=0)
            w2, c2 = time.perf_counter(), time.process_time()
            wall, cpu = (w2 - w1) - (w1 - w0), (c2 - c1) - (c1 - c0)
            best_wall = max(best_wall, (tokens - 1) / max(wall, 1e-9))
            best_cpu = max(best_cpu, (tokens - 1) / max(cpu, 1e-9))
    return best_wall, best_cpu


def _time_llama_cpp(path: Path, prompt_ids: list[int], tokens: int, rounds: int, threads: int) -> tuple[float, float]:
    """llama.cpp on a GGUF: prompt, then ``tokens`` greedy single-token evals (f32 KV cache,
    weight repacking as the SDK's shared llama.cpp engine chooses it: off on AMX CPUs)."""
    import llama_cpp
    import numpy as np

    from openllm_hub.engines.llama_cpp import default_repack, model_params

    with model_params(use_extra_bufts=default_repack()):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=256, verbose=False, n_threads=threads,
                              n_threads_batch=threads, type_k=0, type_v=0)
    best_wall = best_cpu = 0.0
    for _ in range(rounds):
        llm.reset()
        llm.eval(list(prompt_ids))
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(tokens - 1):
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        best_wall = max(best_wall, (tokens - 1) / wall)
        best_cpu = max(best_cpu, (tokens - 1) / max(cpu, 1e-9))
    llm.close()
    return best_wall, best_cpu


def real_size_memory() -> list[tuple[str, str, float, float]]:
    """(model, scheme, GB, ratio to fp16) for the released shapes, counted on the meta device."""
    import torch
    from openllm_hub_chatglm.network import QuantPlan, build_network
    from openllm_hub_chatglm.spec import read_spec

    from openllm_hub.engines.torch_quant import resident_bytes

    configs = {
        "ChatGLM-6B": {"model_type": "chatglm", "hidden_size": 4096, "inner_hidden_size": 16384,
                       "num_attention_heads": 32, "num_layers": 28, "vocab_size": 130528,
                       "position_encoding_2d": True, "max_sequence_length": 2048},
        "ChatGLM2/3-6B": {"model_type": "chatglm", "_name_or_path": "THUDM/chatglm2-6b", "hidden_size": 4096,
                          "ffn_hidden_size": 13696, "kv_channels": 128, "multi_query_attention": True,
                          "multi_query_group_num": 2, "num_attention_heads": 32, "num_layers": 28,
                          "padded_vocab_size": 65024, "add_qkv_bias": True, "seq_length": 32768},
    }
    out = []
    meta = torch.device("meta")
    for name, cfg in configs.items():
        spec = read_spec(Path("."), cfg)
        base = resident_bytes(build_network(spec, torch.float16, QuantPlan(), meta))
        out.append((name, "fp16", base / 1e9, 1.0))
        for bits in (8, 4):
            for emb in (False, True):
                n = resident_bytes(build_network(spec, torch.float16, QuantPlan(bits, emb), meta))
                label = f"int{bits}" + (" (+ embeddings/output)" if emb else " (official: layer linears)")
                out.append((name, label, n / 1e9, n / base))
    return out


def _llama_cpp_rows(folder: Path, tmp: Path, prompt: list[int], args: argparse.Namespace
                    ) -> list[tuple[str, str, float, float, float]]:
    """Our GGUF conversion (f16, q8_0) and llama.cpp's q4_0 of it, run by llama.cpp."""
    import openllm_hub

    rows = []
    files = {}
    for outtype in ("f16", "q8_0"):
        files[outtype] = openllm_hub.convert(folder, tmp / f"v2-{outtype}.gguf", to="gguf", outtype=outtype,
                                             progress=False).path
    files["q4_0"] = openllm_hub.quantize(files["f16"], tmp / "v2-q4_0.gguf", "q4_0", threads=1, progress=False)
    for name, path in files.items():
        wall, cpu = _time_llama_cpp(path, prompt, args.tokens, args.rounds, args.threads)
        rows.append(("chatglm2", f"llama.cpp GGUF {name}", wall, cpu, path.stat().st_size / 2**20))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    from openllm_hub_chatglm.tiny import build_checkpoint

    import openllm_hub

    # the key mapping onto transformers' GLM is a test oracle of the chatglm plugin, not part of the installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "chatglm" / "tests"))
    from chatglm_reference import load_transformers_glm

    torch.set_num_threads(args.threads)
    rows: list[tuple[str, str, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("chatglm", "chatglm2", "chatglm3"):
            folder = build_checkpoint(Path(tmp) / variant, variant, hidden=args.hidden, layers=args.layers, heads=8,
                                      kv_groups=2, seq_length=2048, seed=0)
            configs: list[dict[str, Any]] = [
                {"dtype": "fp32"}, {"dtype": "bf16"}, {"quantize": "int8"}, {"quantize": "int4"},
                {"quantize": "int8", "dtype": "bf16"}, {"quantize": "int4", "dtype": "bf16"}]
            for opts in configs:
                model = openllm_hub.load(folder, device="cpu", threads=args.threads, **opts)
                prompt = (model.tokenize("Once upon a time " * 40, add_special=False))[: args.prompt_tokens - 2]
                prompt = model.tokenize(model.detokenize(prompt))
                wall, cpu = _time_ours(model, prompt, args.tokens, args.rounds)
                mb = model.weight_bytes() / 2**20  # type: ignore[attr-defined]
                label = " ".join(str(v) for v in (opts.get("quantize"), opts.get("dtype", "fp32")) if v)
                rows.append((variant, f"ours {label}", wall, cpu, mb))
                if variant == "chatglm2" and opts == {"dtype": "fp32"}:
                    ref = load_transformers_glm(folder, model.spec)  # type: ignore[attr-defined]
                    twall, tcpu = _time_transformers(ref, prompt, args.tokens, args.rounds)
                    rows.append((variant, "transformers GlmForCausalLM fp32", twall, tcpu,
                                 sum(p.numel() * p.element_size() for p in ref.parameters()) / 2**20))
                    del ref
                    rows.extend(_llama_cpp_rows(folder, Path(tmp), prompt, args))
                model.close()

    print(f"Machine: {_cpu_name()}, {os.cpu_count()} logical cores, load average "
          f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}, Python {platform.python_version()}, "
          f"torch {torch.__version__}, threads {args.threads}")
    print(f"Model: random, hidden {args.hidden}, {args.layers} layers, 8 heads (2 kv groups for v2/v3), "
          f"prompt {args.prompt_tokens} tokens, {args.tokens} generated greedy, best of {args.rounds}")
    print()
    print("| version | engine / dtype | tokens/s (wall) | tokens per CPU-s | weights MiB |")
    print("| --- | --- | --- | --- | --- |")
    for variant, what, wall, cpu, mb in rows:
        print(f"| {variant} | {what} | {wall:.1f} | {cpu:.1f} | {mb:.2f} |")
    print()
    print("| released shapes | scheme | weights GB | vs fp16 |")
    print("| --- | --- | --- | --- |")
    for name, scheme, gb, ratio in real_size_memory():
        print(f"| {name} | {scheme} | {gb:.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
