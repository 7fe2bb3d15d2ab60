"""Benchmark: the demo model's held-out perplexity and file size per GGUF type.

Converts the shipped ``demo`` HF folder to an f16 GGUF with the SDK's converter
(``openllm-hub convert``), quantizes that to q8_0, q5_1, q4_K_M and q4_0 (``openllm-hub
quantize``, llama.cpp's quantizer), and runs ``openllm-hub perplexity MODEL FILE`` on each
(llama.cpp engine, f32 KV cache so the cache adds no rounding of its own) and on the HF folder
itself with the transformers engine, over the model's held-out split (regenerated from the
corpus code, seed 0: documents the training never saw, one per line). Every command runs in
its own process, exactly as a user types it.

Run::

    nice -n 19 .venv/bin/python benchmarks/bench_demo_quant.py --work /tmp/demo-bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from openllm_hub_demo_train import corpus
from openllm_hub_llama.demo import DEMO_DIR

HUB = [str(Path(sys.executable).parent / "openllm-hub")]
SCHEMES = ("q8_0", "q5_1", "q4_K_M", "q4_0")


def hub(*args: str) -> str:
    env = {**os.environ, "OPENLLM_HUB_NO_PROGRESS": "1"}
    res = subprocess.run([*HUB, *args], capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(f"openllm-hub {' '.join(args)} failed:\n{res.stderr}")
    return res.stdout


def ppl(model: str, text_file: Path, *extra: str) -> dict[str, float]:
    out = hub("perplexity", model, str(text_file), "--json", "--window", "512", "--stride", "256", *extra)
    return dict(json.loads(out))


def run(work: Path) -> list[dict[str, object]]:
    work.mkdir(parents=True, exist_ok=True)
    held = work / "heldout.txt"
    held.write_text("\n".join(corpus.build_corpus(0).heldout) + "\n", encoding="utf-8")
    f16 = work / "demo-f16.gguf"
    if not f16.exists():
        hub("convert", str(DEMO_DIR), str(f16), "--to", "gguf", "--outtype", "f16")
    files = {"f16": f16}
    for s in SCHEMES:
        files[s] = work / f"demo-{s}.gguf"
        if not files[s].exists():
            hub("quantize", str(f16), str(files[s]), s)
    rows: list[dict[str, object]] = []
    hf = ppl(str(DEMO_DIR), held, "-o", "engine=transformers", "--device", "cpu")
    weights = (DEMO_DIR / "model.safetensors").stat().st_size
    rows.append({"type": "HF fp16 (transformers)", "bytes": weights, **hf})
    for name, path in files.items():
        r = ppl(str(path), held, "-o", "kv_cache_type=f32", "-t", "1")
        rows.append({"type": f"GGUF {name} (llama.cpp)", "bytes": path.stat().st_size, **r})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict[str, object]]) -> str:
    base = next(float(str(r["perplexity"])) for r in rows if str(r["type"]).startswith("GGUF f16"))
    lines = ["| weights | file size | held-out perplexity | vs GGUF f16 |", "|---|---:|---:|---:|"]
    for r in rows:
        p = float(str(r["perplexity"]))
        lines.append(f"| {r['type']} | {int(str(r['bytes'])) / 1e6:.2f} MB | {p:.4f} | {100 * (p / base - 1):+.2f} % |")
    tokens = rows[0]["tokens_scored"]
    return "\n".join(lines) + f"\n\n{tokens:,} held-out tokens scored (window 512, stride 256).\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    args = ap.parse_args()
    rows = run(args.work)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
