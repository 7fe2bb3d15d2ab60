"""Benchmark: ``openllm-hub merge-lora`` vs PEFT's ``merge_and_unload`` on the same inputs.

Inputs (written once into a work folder): a random LLaMA of ~477M parameters from
``openllm_hub_llama.tiny.make_tiny_hf`` (bf16, 4 safetensors shards + index, real tokenizer;
the issue's reference size, 478M) and a rank-16 LoRA adapter on every linear layer of every
block, made and saved by PEFT with random A and B (``make_peft_adapter`` of
plugins/llama/tests/llama_lora_tiny.py).

Each side runs in its own fresh Python process (imports included, so nothing else is
counted); a second, measuring process reads that child's peak RSS with
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` and its wall time:

* ours: ``openllm_hub.merge_lora(base, [adapter], out)`` (HF output, sharded safetensors);
* PEFT: ``LlamaForCausalLM.from_pretrained(base, dtype=bfloat16)``,
  ``PeftModel.from_pretrained(model, adapter).merge_and_unload()``, ``save_pretrained(out)``
  — what a Python user of PEFT writes.

Both outputs are then compared tensor by tensor (they must agree to bf16 rounding: PEFT adds
the delta in bf16, we add it in fp32 and round once). Target from the issue: our peak RSS
<= 0.5x PEFT's.

Run (CPU and disk heavy; be nice to other work)::

    nice .venv/bin/python benchmarks/bench_merge_lora.py --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# ~477M parameters: 2 x 32000 x 1024 embeddings/head + 32 layers x 12.85M
MODEL = {"hidden_size": 1024, "intermediate_size": 2816, "num_layers": 32, "num_heads": 16,
         "dtype": "bfloat16", "shards": 4, "init_std": 0.02}
ADAPTER = {"r": 16, "alpha": 32.0, "targets": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"), "std": 0.002, "dtype": "bfloat16"}
SECTION = "## LoRA merge: merge-lora vs PEFT merge_and_unload"

OURS = """
import sys, openllm_hub
openllm_hub.merge_lora(sys.argv[1], [sys.argv[2]], sys.argv[3], output_type="hf", progress=False)
"""
BASELINE = """
import torch, safetensors, openllm_hub, openllm_hub_llama.lora_merge
"""
PEFT = """
import sys, torch
from transformers import LlamaForCausalLM
from peft import PeftModel
model = LlamaForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
merged = PeftModel.from_pretrained(model, sys.argv[2]).merge_and_unload()
merged.save_pretrained(sys.argv[3])
"""


def measure(code: str, *args: str) -> dict[str, float]:
    """Run ``code`` in a fresh interpreter from a fresh measuring process: wall s, peak RSS MB."""
    probe = ("import resource, subprocess, sys, time, json\n"
             "t = time.perf_counter()\n"
             "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
             "wall = time.perf_counter() - t\n"
             "if p.returncode: sys.exit(p.stderr[-3000:])\n"
             "print(json.dumps({'wall_s': wall,"
             " 'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n")
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, "-c", code, *args], capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(f"benchmark child failed: {out.stderr}")
    result: dict[str, float] = json.loads(out.stdout)
    return result


def build_inputs(work: Path) -> tuple[Path, Path, int]:
    from openllm_hub_llama.tiny import make_tiny_hf

    # the adapter builder is a test helper of the llama plugin, not part of the installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "llama" / "tests"))
    from llama_lora_tiny import make_peft_adapter

    base, adapter = work / "base", work / "adapter"
    if not (base / "config.json").is_file():
        make_tiny_hf(base, seed=0, **MODEL)  # type: ignore[arg-type]
    if not (adapter / "adapter_config.json").is_file():
        make_peft_adapter(base, adapter, r=int(ADAPTER["r"]), alpha=float(ADAPTER["alpha"]),  # type: ignore[arg-type]
                          targets=ADAPTER["targets"], seed=1, std=float(ADAPTER["std"]),  # type: ignore[arg-type]
                          dtype=str(ADAPTER["dtype"]))
    from openllm_hub_llama.checkpoint import HFCheckpoint

    ck = HFCheckpoint(base)
    params = 0
    for t in ck.tensors:
        n = 1
        for d in t.shape:
            n *= d
        params += n
    return base, adapter, params


def compare(ours: Path, peft: Path) -> dict[str, Any]:
    """Largest difference between the two merged checkpoints, relative to each tensor's scale."""
    from openllm_hub_llama.checkpoint import HFCheckpoint

    a, b = HFCheckpoint(ours), HFCheckpoint(peft)
    worst, names = 0.0, 0
    for t in a.tensors:
        x, y = a.read(t.hf).float(), b.read(t.hf).float()
        scale = float(x.abs().max()) or 1.0
        worst = max(worst, float((x - y).abs().max()) / scale)
        names += 1
    return {"tensors": names, "max_rel_diff": worst}


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024**2:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    import peft
    import torch
    import transformers

    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return (f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"peft {peft.__version__}; load average before the runs {load[0]:.1f}")


def render(params: int, ours: dict[str, float], peft: dict[str, float], diff: dict[str, Any], info: str,
           sizes: dict[str, float], baseline: dict[str, float]) -> str:
    ratio = ours["peak_rss_mb"] / peft["peak_rss_mb"]
    if diff["max_rel_diff"] == 0:
        agree = (f"all {diff['tensors']} tensors bit-identical (PEFT on CPU also computes the bf16 delta in "
                 "fp32 and rounds once).")
    else:
        agree = (f"{diff['tensors']} tensors, largest difference {diff['max_rel_diff']:.2g} of the tensor's largest "
                 "magnitude (bf16 rounding of the delta).")
    return f"""{SECTION}

`nice .venv/bin/python benchmarks/bench_merge_lora.py` (one run of each side): a random LLaMA of
{params / 1e6:.0f}M parameters (hidden 1024, 32 layers, bf16, 4 safetensors shards, {sizes['base']:.0f} MB)
and a rank-16 LoRA adapter on all seven linear layers of every block ({sizes['adapter']:.0f} MB, made by PEFT).
Each side runs in a fresh process (imports included); peak RSS is the child's `ru_maxrss`.
PEFT side: `from_pretrained(bf16)` + `PeftModel.from_pretrained(...).merge_and_unload()` +
`save_pretrained`. Ours: `openllm_hub.merge_lora(base, [adapter], out)` (HF output).

Machine: {info}.

| | wall time (s) | peak RSS (MB) |
| --- | --- | --- |
| openllm-hub merge-lora | {ours['wall_s']:.1f} | {ours['peak_rss_mb']:.0f} |
| PEFT merge_and_unload | {peft['wall_s']:.1f} | {peft['peak_rss_mb']:.0f} |
| ratio (ours / PEFT) | {ours['wall_s'] / peft['wall_s']:.2f} | **{ratio:.2f}** (target <= 0.5) |

Outputs: {agree}
Ours streams each base tensor in row chunks into the output shard: its peak is the interpreter with
torch imported ({baseline['peak_rss_mb']:.0f} MB for `import torch, openllm_hub` alone) plus the adapter and one
tensor; PEFT holds the whole model. Wall times depend on the shared machine's load.
"""


def update_results(path: Path, text: str) -> None:
    """Replace (or append) only this benchmark's section of RESULTS.md."""
    old = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + (old[end + 1:] if end >= 0 else "")
    path.write_text(new.rstrip("\n") + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", help="folder for the inputs (kept and reused; default: a temporary folder)")
    ap.add_argument("--results", help="update this RESULTS.md section")
    args = ap.parse_args()
    tmp = None if args.work else tempfile.mkdtemp(prefix="bench-merge-lora-")
    work = Path(args.work or tmp or ".")
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        base, adapter, params = build_inputs(work)
        print(f"inputs ready ({params / 1e6:.0f}M parameters) in {time.perf_counter() - t:.0f} s", flush=True)
        sizes = {"base": sum(f.stat().st_size for f in base.glob("*.safetensors")) / 1e6,
                 "adapter": (adapter / "adapter_model.safetensors").stat().st_size / 1e6}
        info = machine()
        for out in ("out-ours", "out-peft"):
            shutil.rmtree(work / out, ignore_errors=True)
        ours = measure(OURS, str(base), str(adapter), str(work / "out-ours"))
        print(f"ours: {ours}", flush=True)
        peft = measure(PEFT, str(base), str(adapter), str(work / "out-peft"))
        print(f"peft: {peft}", flush=True)
        diff = compare(work / "out-ours", work / "out-peft")
        baseline = measure(BASELINE)
        (work / "measured.json").write_text(json.dumps({"params": params, "ours": ours, "peft": peft, "diff": diff,
                                                        "info": info, "sizes": sizes, "baseline": baseline}))
        text = render(params, ours, peft, diff, info, sizes, baseline)
        print(text)
        if args.results:
            update_results(Path(args.results), text)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
